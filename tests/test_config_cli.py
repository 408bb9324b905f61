"""Configuration loading (profiles, strict keys and types), metrics, registry, and the command line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmlib import registry
from mmlib.__main__ import main
from mmlib.config import ExperimentConfig, experiment_config, from_dict, load_params, parse_set
from mmlib.metrics import average_precision, classification_metrics, macro_f1

ROOT = Path(__file__).resolve().parents[1]


def test_profiles_overlay_the_file():
    ci, demo = load_params("ci", ROOT / "params.yaml"), load_params("demo", ROOT / "params.yaml")
    assert ci["base"]["train"]["epochs"] < demo["base"]["train"]["epochs"]
    assert ci["base"]["data"]["root"] != demo["base"]["data"]["root"]
    assert ci["base"]["data"]["generator"]["clips"] < demo["base"]["data"]["generator"]["clips"]
    assert ci["base"]["data"]["generator"]["audio_present"] == demo["base"]["data"]["generator"]["audio_present"]
    cfg = experiment_config(ci, "00_quickstart")
    assert Path(cfg.data.root).is_absolute() and cfg.data.root.startswith(str(ROOT))


def test_full_profile_has_paper_settings():
    full = experiment_config(load_params("full", ROOT / "params.yaml"))
    assert (full.optim.name, full.optim.lr, full.optim.momentum, full.optim.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
    assert full.data.audio_recipe == "stft_257x188" and full.data.image_size == 224


def test_params_read_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S profile=ci` rewrites params.yaml as YAML 1.2 (quotes of "on" dropped); mmlib reads the
    rewritten file as the original: YAML 1.2 booleans (true / false only), on / off / yes / no are strings."""
    from dvc.utils.serialize import modify_yaml

    from mmlib.config import load_yaml

    original = Path(__file__).resolve().parents[1] / "params.yaml"
    copy = tmp_path / "params.yaml"
    copy.write_text(original.read_text())
    with modify_yaml(copy) as data:  # what dvc exp run -S does to the file
        data["profile"] = "ci"
    assert '"on"' in original.read_text() and '"on"' not in copy.read_text()
    rewritten = load_params(path=copy)
    assert rewritten == {**load_params("ci", path=original), "root": str(tmp_path)}
    assert rewritten["dgl_06_fig1"]["experiment"]["train"]["gradient_norms"] == "on"
    experiment_config(rewritten, "dgl_06_fig1")  # the section that failed on the rewritten file
    assert load_yaml("a: on\nb: off\nc: yes\nd: no\ne: true\nf: False\ng: 3e-4\nh: 1.0e-3") == {
        "a": "on", "b": "off", "c": "yes", "d": "no", "e": True, "f": False, "g": 3e-4, "h": 1e-3}
    assert load_yaml("[1, -2, 0.5, .5, -1.5e3, 1_000, .inf, -.inf, 10, x1e3]") == [
        1, -2, 0.5, 0.5, -1500.0, 1000, float("inf"), float("-inf"), 10, "x1e3"]


def test_unknown_profile_and_section():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        load_params("fast", ROOT / "params.yaml")
    with pytest.raises(KeyError, match="no section 'nope'"):
        experiment_config(load_params("ci", ROOT / "params.yaml"), "nope")


def test_unknown_keys_and_wrong_types_fail_with_dotted_key():
    with pytest.raises(KeyError, match=r"train\.epoch\b"):
        from_dict(ExperimentConfig, {"train": {"epoch": 3}})
    with pytest.raises(TypeError, match=r"train\.epochs: expected an integer"):
        from_dict(ExperimentConfig, {"train": {"epochs": "3"}})
    with pytest.raises(TypeError, match=r"data\.augment: expected a boolean"):
        from_dict(ExperimentConfig, {"data": {"augment": 1}})
    assert from_dict(ExperimentConfig, {"optim": {"lr": 1}}).optim.lr == 1.0  # ints are valid floats


def test_balancer_params_are_validated_by_the_balancer():
    with pytest.raises(KeyError, match="alhpa"):
        registry.get("balancers", "ogm_ge")(alhpa=0.3)


def test_parse_set():
    assert parse_set(["train.epochs=3", "data.root=/x", "data.augment=false"]) == {
        "train.epochs": 3, "data.root": "/x", "data.augment": False}
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["train.epochs"])


def test_parse_set_reads_values_as_a_user_means_them():
    """Against the field's type: a string field keeps the text, a boolean field takes on/off words; elsewhere
    YAML 1.2's numbers and booleans (PyYAML reads 3e-4 as a string and off as False)."""
    assert parse_set(["optim.lr=3e-4", "train.progress=off", "train.compile=true", "data.augment=no",
                      "data.generator.clips=40", "balancer.params.alpha=5e-1", "balancer.params.mode=off",
                      "data.modalities=[audio]", "data.root='/a b'", "train.progress='on'"]) == {
        "optim.lr": 3e-4, "train.progress": "on", "train.compile": True, "data.augment": False,
        "data.generator.clips": 40, "balancer.params.alpha": 0.5, "balancer.params.mode": "off",
        "data.modalities": ["audio"], "data.root": "/a b"}
    nan = parse_set(["optim.lr=.nan"])["optim.lr"]
    assert nan != nan  # parsed as a float, and refused by the value checks:
    with pytest.raises(ValueError, match=r"optim\.lr: must be a number, got nan"):
        ExperimentConfig().replace(**{"optim.lr": nan})
    with pytest.raises(TypeError, match=r"train\.epochs: expected an integer, got 'abc'"):
        ExperimentConfig().replace(**parse_set(["train.epochs=abc"]))


def test_value_checks_name_the_key():
    assert ExperimentConfig().optim.lr > 0  # the defaults pass
    for key, value, message in [("optim.lr", 0.0, "must be a finite number > 0"),
                                ("optim.lr", float("inf"), "must be a finite number > 0"),
                                ("optim.step_size", 0, "must be an integer >= 1"),
                                ("train.epochs", 0, "must be an integer >= 1"),
                                ("data.image_size", 0, "must be an integer >= 1"),
                                ("data.text_length", 0, "must be an integer >= 1"),
                                ("data.split_seed", -1, "must be an integer >= 0"),
                                ("optim.name", "rmsprop", "must be sgd, adam or adagrad"),
                                ("balancer.params", {"alpha": float("nan")}, "must be a number, got nan")]:
        with pytest.raises(ValueError, match=rf"^{key.replace('.', '[.]')}(\.alpha)?: {message}"):
            ExperimentConfig().replace(**{key: value})


def test_constructor_arguments_are_checked_against_the_signature():
    from mmlib.config import check_arguments
    from mmlib.models.resnet import resnet18

    check_arguments(resnet18, {"width": 4}, "model.encoders.audio")
    with pytest.raises(TypeError, match=r"model\.encoders\.audio\.width: expected an integer, got 'abc'"):
        check_arguments(resnet18, {"width": "abc"}, "model.encoders.audio")
    with pytest.raises(KeyError, match=r"model\.encoders\.audio\.widht: unknown argument of resnet18; known: "
                                       r"in_channels, width"):
        check_arguments(resnet18, {"widht": 4}, "model.encoders.audio")

    def blocks(in_channels: int = 3, sizes: tuple[int, ...] = (2, 2)) -> None: ...
    check_arguments(blocks, {"sizes": [1, 2]}, "model.encoders.video")  # YAML lists stand for tuples


def test_registry_rejects_duplicates_and_unknown():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("balancers", "naive")(object)
    with pytest.raises(KeyError, match="unknown balancer 'magic'; registered: .*naive"):
        registry.get("balancers", "magic")


def test_metrics_against_hand_computed():
    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    labels = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(logits, labels)
    assert m["acc"] == pytest.approx(0.75)
    # class 0: P=1/2 R=1 F1=2/3; class 1: P=1 R=1/2 F1=2/3; class 2: F1=1
    assert macro_f1(logits, labels) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # class 1 (softmax column 1): sample 2 first (a positive: P 1, R 1/2), then samples 1 and 3 tied (one
    # threshold: P 2/3, R 1) -> AP = 1/2 * 1 + 1/2 * 2/3, as scikit-learn counts ties
    assert average_precision(torch.softmax(logits, 1)[:, 1], labels == 1) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([False, True, True])) == pytest.approx(
        (1 / 2 + 2 / 3) / 2)


def test_cli_lists_components(capsys):
    assert main(["list", "balancers"]) == 0
    out = capsys.readouterr().out.split()
    assert {"naive", "unimodal", "ogm_ge"} <= set(out)
    assert main(["list", "audio_recipes"]) == 0
    assert {"stft_257x188", "spec_257x299"} <= set(capsys.readouterr().out.split())


def test_cli_prepare_then_train_on_crema_layout(crema_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path / "results"))
    env_cmd = [sys.executable, "-m", "mmlib"]
    prep = subprocess.run(env_cmd + ["prepare", "--dataset", "crema_d", "--root", str(crema_copy),
                                     "--recipe", "stft_129x94", "--image-size", "32"],
                          capture_output=True, text=True, cwd=ROOT)
    assert prep.returncode == 0, prep.stderr
    cache_path = Path(prep.stdout.strip())
    assert cache_path.is_file() and cache_path.with_suffix(".json").is_file()
    data_files = sorted(p.relative_to(crema_copy) for p in crema_copy.rglob("*"))
    config = tmp_path / "exp.yaml"
    config.write_text(
        "data: {dataset: crema_d, audio_recipe: stft_129x94, image_size: 32}\n"
        "model: {encoders: {audio: {name: resnet18, width: 4}, visual: {name: resnet18, width: 4}}}\n"
        "train: {epochs: 1, batch_size: 8, progress: 'off'}\n")
    train = subprocess.run(env_cmd + ["train", "--config", str(config), "--set", f"data.root={crema_copy}",
                                      "--set", "balancer.name=ogm_ge"], capture_output=True, text=True, cwd=ROOT)
    assert train.returncode == 0, train.stderr
    lines = train.stdout.splitlines()
    assert lines[0].endswith("record.json") and Path(lines[0]).is_file()
    metrics = json.loads("\n".join(lines[1:]))
    assert 0 <= metrics["test"]["acc"] <= 1 and metrics["data"]["dataset"] == "crema_d"
    assert sorted(p.relative_to(crema_copy) for p in crema_copy.rglob("*")) == data_files


def test_cli_errors_are_clear(crema_copy, capsys):
    (crema_copy / "train.csv").write_text("clip,LABEL\n")
    assert main(["prepare", "--dataset", "crema_d", "--root", str(crema_copy)]) == 2
    assert "unknown label 'LABEL'" in capsys.readouterr().err


def test_show_prints_a_cells_config_and_run_identity(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path))
    assert main(["show", "--profile", "ci", "--section", "amss_02_table2", "--cell", "AMSS", "KS/acc", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "name: amss" in out and "seed: 1" in out and "dataset: synth_ks" in out
    for key in ("config_hash:", "data_fingerprint:", "code_version:", "run_hash:", "record: not trained yet"):
        assert key in out, key
    assert main(["show", "--profile", "ci", "--cell", "AMSS", "KS/acc"]) == 2
    assert "--cell needs --section" in capsys.readouterr().err


def test_progress_goes_to_its_file_and_never_to_stdout(tmp_path, monkeypatch, capsys):
    from mmlib.progress import progress_bar

    target = tmp_path / "progress"
    monkeypatch.setenv("MMLIB_PROGRESS", str(target))
    with progress_bar(3, "runs") as bar:
        for _ in range(3):
            bar.update(1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert "runs" in target.read_text() and "3/3" in target.read_text()
    monkeypatch.delenv("MMLIB_PROGRESS")
    with progress_bar(2, "quiet") as bar:  # stderr is not a terminal here (as in a notebook kernel): nothing
        bar.update(2)
    assert capsys.readouterr() == ("", "")
