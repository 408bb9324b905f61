"""Bad input gets one named line, corrupt state is detected, a killed run resumes identically.

Every class of bad input through the command line (``mmlib.__main__.main``, in process: an exception that escaped
would fail the test, so "no traceback" is part of each case): exit status 2 and one stderr line
``error: <path or key>: ...`` naming what the case expects. Then a corrupt-file test per artifact (tensor cache,
sidecar, checkpoint, record, config file), a kill-and-resume test, temporaries of killed writers, a full disk and a
read-only data root and results root. ``tests/reliability_cases.py`` runs the same classes (and more) as a user
would, in subprocesses on the ci profile.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny_config
from mmlib import experiments
from mmlib.__main__ import error_message, main
from mmlib.data.cache import CacheError, atomic_write_bytes, load_checked, save_checked

ROOT = Path(__file__).resolve().parents[1]
RECIPE, SIZE = "stft_129x94", 32


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def write_config(path: Path, root: Path, **dotted) -> Path:
    path.write_text(yaml.safe_dump(tiny_config(root, **dotted).to_dict()))
    return path


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


# ---------------------------------------------------------------------------------------- bad input, per class
@pytest.mark.parametrize("assignment, names", [
    ("optim.lr=.nan", r"optim\.lr: must be a number, got nan"),
    ("optim.lr=nan", r"optim\.lr: must be a number"),
    ("optim.lr=-1", r"optim\.lr: must be a finite number > 0"),
    ("optim.lr=.inf", r"optim\.lr: must be a finite number > 0"),
    ("optim.momentum=-0.5", r"optim\.momentum: must be a finite number >= 0"),
    ("optim.step_size=0", r"optim\.step_size: must be an integer >= 1"),
    ("optim.gamma=0", r"optim\.gamma: must be a finite number > 0"),
    ("train.epochs=0", r"train\.epochs: must be an integer >= 1, got 0"),
    ("train.epochs=abc", r"train\.epochs: expected an integer, got 'abc'"),
    ("train.batch_size=0", r"train\.batch_size: must be an integer >= 1"),
    ("train.eval_batch_size=-4", r"train\.eval_batch_size: must be an integer >= 1"),
    ("train.progress=sometimes", r"train\.progress: must be auto, on or off"),
    ("train.select_on=tset", r"train\.select_on: must be val or test"),
    ("data.image_size=0", r"data\.image_size: must be an integer >= 1"),
    ("data.frames=0", r"data\.frames: must be an integer >= 1"),
    ("data.val_fraction=1.5", r"data\.val_fraction: must be a number in \[0, 1\)"),
    ("data.val_fraction=0", r"data\.val_fraction: the val split of crema_d is empty; raise it"),
    ("model.encoders.audio.width=abc", r"model\.encoders\.audio\.width: expected an integer, got 'abc'"),
    ("model.encoders.audio.widht=8", r"model\.encoders\.audio\.widht: unknown argument of resnet18"),
    ("model.fusion.name=concatt", r"unknown fusion 'concatt'"),
    ("train.epoch=3", r"train\.epoch: unknown key; known: "),
    ("balancer.params.alpha=.nan", r"balancer\.params\.alpha: must be a number, got nan"),
    ("train.epochs", r"--set train\.epochs: expected key=value"),
])
def test_bad_setting_is_one_named_line(prepared_layout, tmp_path, results, capsys, assignment, names):
    config = write_config(tmp_path / "exp.yaml", prepared_layout)
    extra = ["--set", "balancer.name=ogm_ge"] if assignment.startswith("balancer") else []
    assert main(["train", "--config", str(config), *extra, "--set", assignment]) == 2
    assert re.search(names, one_error_line(capsys))
    assert not results.exists() or not list(results.rglob("record.json"))


@pytest.mark.parametrize("content, names", [
    (b"data: [root\ntrain: {epochs: 1\n", r"exp\.yaml:\d+: not valid YAML"),
    (b"- data\n- train\n", r"exp\.yaml: holds a YAML list, not a mapping"),
    (None, r"exp\.yaml: is a directory"),
    (bytes(range(256)) * 4, r"exp\.yaml(:\d+)?: not valid YAML"),
    (b"data: {dataset: crema_d}\ntrian: {epochs: 1}\n", r"trian: unknown key"),
])
def test_bad_config_file_is_one_named_line(tmp_path, results, capsys, content, names):
    path = tmp_path / "exp.yaml"
    path.mkdir() if content is None else path.write_bytes(content)
    assert main(["train", "--config", str(path)]) == 2
    assert re.search(names, one_error_line(capsys))
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: file not found" in one_error_line(capsys)


def _first_row(root: Path) -> tuple[str, str]:
    return tuple((root / "train.csv").read_text().splitlines()[0].split(","))


def _append(path: Path, row: str) -> None:
    with path.open("a") as fh:
        fh.write(row + "\n")


def _nan_wav(root: Path, clip: str) -> None:
    import soundfile
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    x[123] = np.nan
    soundfile.write(root / "AudioWAV" / f"{clip}.wav", x, 16000, subtype="FLOAT")


def _cut_wav(root: Path, clip: str) -> None:
    path = root / "AudioWAV" / f"{clip}.wav"
    data = path.read_bytes()
    path.write_bytes(data[: 44 + (len(data) - 44) // 2])  # the header still declares every sample


def _cut_video(root: Path, clip: str) -> None:
    from mmlib.data.synth_av import _write_flv
    path = root / "VideoFlash" / f"{clip}.flv"
    _write_flv(path, (np.random.default_rng(0).random((16, 32, 32, 3)) * 255).astype(np.uint8), 4)  # 4 s
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # 1 of its 4 frames at 1 fps left


LAYOUT_CASES = {  # damage to a CREMA-D layout -> what the error line must say
    "in both splits": (lambda r, c, lab: _append(r / "test.csv", f"{c},{lab}"),
                       r"train\.csv:1: clip '\w+' \(train, label \w+\) is listed in more than one split, also at "
                       r"test\.csv:\d+ \(test, label \w+\) \(train/test leakage\)"),
    "listed twice": (lambda r, c, lab: _append(r / "train.csv", f"{c},{lab}"),
                     r"train\.csv:\d+: clip '\w+' is listed again \(first at train\.csv:1\)"),
    "two labels": (lambda r, c, lab: _append(r / "train.csv", f"{c},{'SAD' if lab == 'HAP' else 'HAP'}"),
                   r"train\.csv:1: clip '\w+' \(label \w+\) is listed with another label, also at train\.csv:\d+"),
    "NaN sample": (lambda r, c, lab: _nan_wav(r, c), r"AudioWAV/\w+\.wav: audio holds non-finite samples"),
    "truncated wav": (lambda r, c, lab: _cut_wav(r, c),
                      r"AudioWAV/\w+\.wav: truncated wav: its header declares \d+ bytes of samples, the file holds"),
    "truncated video": (lambda r, c, lab: _cut_video(r, c),
                        r"VideoFlash/\w+\.flv: truncated video: its frames end at 0\.\d+ s, its header declares 4\.00"),
    "zero-byte wav": (lambda r, c, lab: (r / "AudioWAV" / f"{c}.wav").write_bytes(b""),
                      r"AudioWAV/\w+\.wav: empty audio file \(0 bytes\)"),
}


@pytest.mark.parametrize("damage", LAYOUT_CASES)
def test_bad_layout_or_media_is_one_named_line_and_skippable(crema_copy, results, capsys, damage):
    edit, names = LAYOUT_CASES[damage]
    clip, label = _first_row(crema_copy)
    edit(crema_copy, clip, label)
    prepare = ["prepare", "--dataset", "crema_d", "--root", str(crema_copy), "--recipe", RECIPE,
               "--image-size", str(SIZE)]
    assert main(prepare) == 2
    line = one_error_line(capsys)
    assert re.search(names, line) and line.endswith("; pass --skip-bad to skip bad clips")
    assert main(prepare + ["--skip-bad"]) == 0  # reported and left out
    out, err = capsys.readouterr()
    from mmlib.data.cache import TensorCache
    clips = TensorCache.load(out.strip()).meta["clips"]
    assert err.startswith("skipped: ") and (clip in clips) == (damage == "listed twice") and len(clips) >= 34


def test_prepare_values_are_checked_like_a_configs(crema_copy, results, capsys):
    assert main(["prepare", "--dataset", "crema_d", "--root", str(crema_copy), "--image-size", "0"]) == 2
    assert "data.image_size: must be an integer >= 1, got 0" in one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLIB_RESULTS": str(tmp_path)}
    for debug in ([], ["--debug"]):
        p = subprocess.run([sys.executable, "-m", "mmlib", *debug, "train", "--profile", "ci", "--set",
                            "train.epochs=0"], capture_output=True, text=True, env=env, cwd=ROOT)
        assert p.returncode != 0
        assert ("Traceback (most recent call last)" in p.stderr) == bool(debug)
    assert p.stderr.strip().splitlines()[-1] == "ValueError: train.epochs: must be an integer >= 1, got 0"


# ------------------------------------------------------------------------------------- corrupt files, per artifact
def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flipped":  # 2000 bytes of the second half flipped
        rng = np.random.default_rng(0)
        buf = bytearray(data)
        for i in rng.choice(np.arange(len(buf) // 2, len(buf)), size=min(2000, len(buf) // 2), replace=False):
            buf[i] ^= 0x5A
        path.write_bytes(bytes(buf))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero-byte":
        path.write_bytes(b"")
    else:  # random bytes
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())


HOW = ("flipped", "truncated", "zero-byte", "random")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_layout) -> tuple[Path, Path]:
    """One finished 1-epoch run on a copy of the prepared layout: (data root, run folder)."""
    base = tmp_path_factory.mktemp("trained")
    root = base / "CREMA-D"
    shutil.copytree(prepared_layout, root)
    record = experiments.run(tiny_config(root, **{"train.epochs": 1}), root=base / "results")
    return root, Path(record.path).parent


def _train_args(tmp_path: Path, root: Path) -> list[str]:
    return ["train", "--config", str(write_config(tmp_path / "exp.yaml", root, **{"train.epochs": 1}))]


@pytest.mark.parametrize("how", HOW)
def test_corrupt_cache_is_named_with_the_prepare_command(trained, tmp_path, results, capsys, how):
    root = tmp_path / "CREMA-D"
    shutil.copytree(trained[0], root)
    damage(root / "cache" / f"{RECIPE}_img{SIZE}.pt", how)
    assert main(_train_args(tmp_path, root)) == 2
    line = one_error_line(capsys)
    assert f"{root}/cache/{RECIPE}_img{SIZE}.pt: " in line
    assert line.endswith(f"prepare it again: python -m mmlib prepare --dataset crema_d --root {root} "
                         f"--recipe {RECIPE} --image-size {SIZE}")


@pytest.mark.parametrize("content", ["{not json", "[]", ""])
def test_corrupt_sidecar_is_named(trained, tmp_path, results, capsys, content):
    root = tmp_path / "CREMA-D"
    shutil.copytree(trained[0], root)
    (root / "cache" / f"{RECIPE}_img{SIZE}.json").write_text(content)
    assert main(_train_args(tmp_path, root)) == 2
    line = one_error_line(capsys)
    assert f"{RECIPE}_img{SIZE}.json: the tensor cache sidecar is unreadable" in line
    assert line.endswith(f"run `python -m mmlib prepare --dataset crema_d --root {root} --recipe {RECIPE} "
                         f"--image-size {SIZE}`")


@pytest.mark.parametrize("how", HOW)
def test_corrupt_checkpoint_is_named_and_never_loaded(trained, tmp_path, capsys, monkeypatch, how):
    root, run_dir = trained
    store = tmp_path / "results"
    shutil.copytree(run_dir, store / run_dir.name)
    (store / run_dir.name / "record.json").unlink()
    damage(store / run_dir.name / "checkpoint.pt", how)
    monkeypatch.setenv("MMLIB_RESULTS", str(store))
    assert main(_train_args(tmp_path, root)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {store / run_dir.name / 'checkpoint.pt'}: ")
    assert line.endswith("restart the run from epoch 1 with `python -m mmlib train ... --force`")
    assert main(_train_args(tmp_path, root) + ["--force"]) == 0  # what the message says works


def test_checkpoint_checksum_catches_changed_content(tmp_path):
    import torch

    path = tmp_path / "checkpoint.pt"
    blob = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "history": [{"acc": 0.5}]}
    save_checked(blob, path)
    loaded = load_checked(path, "retrain")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], blob["model"]["w"])
    tampered = torch.load(path, weights_only=True)
    tampered["model"]["w"][2] = 7.0  # a valid archive whose content is not what was written
    torch.save(tampered, path)
    with pytest.raises(CacheError, match=rf"{path}: content does not match its checksum \(corrupt\); retrain"):
        load_checked(path, "retrain")
    torch.save(blob, path)
    with pytest.raises(CacheError, match="carries no checksum"):
        load_checked(path, "retrain")


@pytest.mark.parametrize("how", HOW + ("no identity",))
def test_corrupt_record_is_named(trained, tmp_path, capsys, monkeypatch, how):
    root, run_dir = trained
    store = tmp_path / "results"
    shutil.copytree(run_dir, store / run_dir.name)
    record = store / run_dir.name / "record.json"
    if how == "no identity":
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "identity"}))
    else:
        damage(record, how)
    monkeypatch.setenv("MMLIB_RESULTS", str(store))
    assert main(_train_args(tmp_path, root)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {record}: ")
    assert line.endswith(f"remove {record.parent} or retrain with `python -m mmlib train ... --force`")


def test_a_record_edited_into_another_runs_folder_is_refused(trained, tmp_path):
    """The hash field alone would let an edited copy through; the record's own identity does not."""
    root, run_dir = trained
    store = tmp_path / "results"
    cfg = tiny_config(root, **{"train.epochs": 1, "train.seed": 7})
    target = store / experiments.run_hash(cfg) / "record.json"
    target.parent.mkdir(parents=True)
    record = json.loads((run_dir / "record.json").read_text())
    target.write_text(json.dumps({**record, "hash": target.parent.name}))
    with pytest.raises(CacheError, match=r"record\.json: the record's own identity \(config\) is not that of run"):
        experiments.run(cfg, root=store)


# ------------------------------------------------------------------------------------------------ crash, resume
def test_kill_9_mid_run_resumes_to_an_identical_record(prepared_layout, tmp_path):
    """A training subprocess killed after its first checkpoint resumes to the record of an uninterrupted run,
    leaf for leaf (but the wall-clock time, the machine's state and the path)."""
    config = write_config(tmp_path / "exp.yaml", prepared_layout, **{"train.epochs": 3, "train.threads": 1})
    args = [sys.executable, "-m", "mmlib", "train", "--config", str(config)]

    def env(store: str) -> dict:
        return {**os.environ, "PYTHONPATH": str(ROOT), "MMLIB_RESULTS": str(tmp_path / store)}

    straight = subprocess.run(args, capture_output=True, text=True, env=env("straight"), cwd=ROOT)
    assert straight.returncode == 0, straight.stderr
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env("killed"), cwd=ROOT)
    deadline = time.time() + 120
    while not list((tmp_path / "killed").glob("*/checkpoint.pt")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not list((tmp_path / "killed").glob("*/record.json"))
    resumed = subprocess.run(args, capture_output=True, text=True, env=env("killed"), cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads(Path(r.stdout.splitlines()[0]).read_text()) for r in (straight, resumed))
    for leaf in ("train_seconds", "machine", "path"):
        a.pop(leaf), b.pop(leaf)
    assert a == b


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer alive
    stale = [tmp_path / f".record.json.{dead.pid}.tmp", tmp_path / f".checkpoint.pt.{dead.pid}.tmp"]
    alive = tmp_path / f".record.json.{os.getppid()}.tmp"  # another process that may still be writing
    for p in stale + [alive]:
        p.write_text("partial")
    atomic_write_bytes(tmp_path / "record.json", lambda tmp: tmp.write_text("{}"))
    assert not any(p.exists() for p in stale) and alive.exists()
    assert (tmp_path / "record.json").read_text() == "{}"


# ------------------------------------------------------------------------------------------- disk, permissions
@pytest.mark.parametrize("failure", ["os", "torch"])
def test_a_full_disk_names_the_file(tmp_path, failure):
    target = tmp_path / "checkpoint.pt"

    def write(tmp: Path) -> None:
        if failure == "os":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        try:  # torch's writer reports a failed write as a RuntimeError, the OSError as its context
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 769856 vs 769744")

    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, write)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert error_message(info.value) == (f"{target}: No space left on device; free space on that disk, or write "
                                         f"elsewhere (MMLIB_RESULTS for runs, data.root for data)")
    assert list(tmp_path.iterdir()) == []


def _without_dac_override() -> list[str]:
    """A prefix that runs a command without the capability that lets root write into read-only directories."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, where chmod does not stop a write, and setpriv (util-linux) is missing")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)


def test_a_read_only_data_root_trains_and_is_never_written(trained, tmp_path):
    root = tmp_path / "CREMA-D"
    shutil.copytree(trained[0], root)
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
    _read_only(root)
    config = write_config(tmp_path / "exp.yaml", root, **{"train.epochs": 1, "data.split_seed": 4})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLIB_RESULTS": str(tmp_path / "results")}
    try:
        p = subprocess.run(_without_dac_override() + [sys.executable, "-m", "mmlib", "train", "--config",
                                                      str(config)], capture_output=True, text=True, env=env,
                           cwd=ROOT)
        assert p.returncode == 0, p.stderr
        assert {q: (q.stat().st_size, q.stat().st_mtime_ns) for q in root.rglob("*")} == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)])


@pytest.mark.parametrize("where", ["results", "data"])
def test_a_non_writable_root_is_one_named_line(trained, tmp_path, where):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    if where == "results":
        config, store, expected = write_config(tmp_path / "exp.yaml", trained[0]), locked / "results", locked
    else:  # an embedded dataset to be generated under a directory that cannot be written
        config = tmp_path / "exp.yaml"
        config.write_text(yaml.safe_dump({"data": {"dataset": "synth_av", "root": str(locked / "synth_av")}}))
        store, expected = tmp_path / "results", locked / "synth_av"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLIB_RESULTS": str(store)}
    p = subprocess.run(_without_dac_override() + [sys.executable, "-m", "mmlib", "train", "--config", str(config)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    os.chmod(locked, 0o755)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = p.stderr.strip()
    assert line.startswith(f"error: {expected}") and ": Permission denied; make it writable, or write elsewhere" in line
