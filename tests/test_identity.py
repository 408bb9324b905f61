"""Run identity: a record is served only for the same config, the same data content and the same code."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmlib import experiments, identity
from mmlib.data.cache import CacheError, TensorCache, sidecar
from mmlib.data.crema_d import build_cache
from mmlib.data.synth_av import SynthAVConfig, generate
from mmlib.train import NonFiniteLossError, Trainer

from conftest import TINY_GENERATOR

RECIPE, SIZE = "stft_129x94", 32


def _layout(root: Path, seed: int = 0) -> Path:
    generate(root, SynthAVConfig(**{**TINY_GENERATOR, "seed": seed}))
    (root / "synth_av.txt").unlink()
    return root


def test_preparing_the_same_media_twice_gives_identical_bytes(crema_copy):
    path = build_cache(crema_copy, RECIPE, SIZE)
    first, first_side = path.read_bytes(), sidecar(path).read_bytes()
    path.unlink()
    assert build_cache(crema_copy, RECIPE, SIZE) == path
    assert path.read_bytes() == first and sidecar(path).read_bytes() == first_side
    assert json.loads(first_side)["fingerprint"] == TensorCache.load(path).meta["fingerprint"]


def test_changed_data_under_the_same_root_retrains(crema_copy, make_config, tmp_path, monkeypatch):
    build_cache(crema_copy, RECIPE, SIZE)
    cfg = make_config(crema_copy, **{"train.epochs": 1})
    first = experiments.run(cfg, root=tmp_path)
    for sub in ("AudioWAV", "VideoFlash"):  # other media, same names, same path
        shutil.rmtree(crema_copy / sub)
    _layout(crema_copy, seed=7)
    build_cache(crema_copy, RECIPE, SIZE)
    trained = []
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: trained.append(1) or real_fit(self))
    second = experiments.run(cfg, root=tmp_path)
    assert trained == [1], "a run on changed data must train again"
    assert second.hash != first.hash and second.identity["data"] != first.identity["data"]
    assert second.identity["code"] == first.identity["code"] == identity.code_version()


def test_two_clones_at_different_paths_share_a_run_hash(tmp_path, make_config):
    roots = [_layout(tmp_path / name / "data" / "CREMA-D") for name in ("clone_a", "elsewhere/clone_b")]
    for root in roots:
        build_cache(root, RECIPE, SIZE)
    a, b = (make_config(root) for root in roots)
    assert a.data.root != b.data.root
    assert experiments.run_hash(a) == experiments.run_hash(b)
    assert experiments.run_hash(a) == experiments.run_hash(a.replace(**{"train.progress": "on"}))
    assert experiments.run_hash(a) != experiments.run_hash(a.replace(**{"train.seed": 1}))


def _package_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "mmlib"
    shutil.copytree(identity.PACKAGE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_a_change_to_the_training_code_changes_the_code_version(tmp_path):
    pkg = _package_copy(tmp_path)
    before = identity.code_version(pkg)
    assert before == identity.code_version(identity.PACKAGE_DIR)
    train = pkg / "train.py"
    source = train.read_text()
    train.write_text(source.replace("torch.manual_seed(t.seed)", "torch.manual_seed(t.seed + 1)"))
    assert identity.code_version.__wrapped__(pkg) != before
    train.write_text("# a comment does not change what the code computes\n" + source)
    assert identity.code_version.__wrapped__(pkg) == before


def test_presentation_modules_and_preparation_code(tmp_path):
    pkg = _package_copy(tmp_path)
    runs, data = identity.code_version(pkg), identity.data_code_version(pkg)
    (pkg / "report.py").write_text((pkg / "report.py").read_text() + "\nEXTRA = 1\n")
    assert identity.code_version.__wrapped__(pkg) == runs  # restyling a figure keeps every run
    (pkg / "data" / "audio.py").write_text((pkg / "data" / "audio.py").read_text() + "\nEXTRA = 1\n")
    assert identity.data_code_version.__wrapped__(pkg) != data
    assert identity.code_version.__wrapped__(pkg) != runs
    loader_only = _package_copy(tmp_path / "second")
    (loader_only / "data" / "loader.py").write_text((loader_only / "data" / "loader.py").read_text() + "\nX = 1\n")
    assert identity.data_code_version.__wrapped__(loader_only) == data  # batching is not preparation


def test_a_corrupt_cache_is_refused_with_its_path(crema_copy):
    path = build_cache(crema_copy, RECIPE, SIZE)
    cache = TensorCache.load(path)
    cache.tensors["label"][0] = (cache.tensors["label"][0] + 1) % cache.num_classes
    import torch
    torch.save({"tensors": cache.tensors, "meta": cache.meta}, path)  # content no longer matches its fingerprint
    with pytest.raises(CacheError, match=rf"{path.name}: content does not match its fingerprint"):
        TensorCache.load(path)
    path.write_bytes(b"not a cache")
    with pytest.raises(CacheError, match=rf"{path.name}: unreadable tensor cache"):
        TensorCache.load(path)


def test_a_cache_prepared_by_other_code_is_not_used(crema_copy, make_config, tmp_path):
    path = build_cache(crema_copy, RECIPE, SIZE)
    side = json.loads(sidecar(path).read_text())
    sidecar(path).write_text(json.dumps({**side, "prepared_by": "0123456789abcdef"}))
    with pytest.raises(FileNotFoundError, match="was prepared by other mmlib code; run `python -m mmlib prepare"):
        experiments.run(make_config(crema_copy), root=tmp_path)


def test_a_record_under_another_hash_is_not_served(make_config, prepared_layout, tmp_path):
    cfg = make_config(prepared_layout, **{"train.epochs": 1})
    other = experiments.run(cfg.replace(**{"train.seed": 3}), root=tmp_path)
    target = tmp_path / experiments.run_hash(cfg) / "record.json"
    target.parent.mkdir(parents=True)
    shutil.copy(other.path, target)
    with pytest.raises(ValueError, match=f"holds the record of run {other.hash}"):
        experiments.run(cfg, root=tmp_path)


def test_a_non_finite_loss_stops_the_run_and_records_nothing(make_config, prepared_layout, tmp_path, monkeypatch):
    from mmlib.balancers.base import Balancer

    loss, calls = Balancer.loss, []

    def nan_at_step_2(self, model, out, batch):  # a NaN learning rate is refused by the config; a diverging run
        calls.append(1)                           # is what the loss check is for
        return loss(self, model, out, batch) * (float("nan") if len(calls) == 2 else 1.0)

    monkeypatch.setattr(Balancer, "loss", nan_at_step_2)
    cfg = make_config(prepared_layout, **{"train.epochs": 2})
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 1, step 2\b"):
        experiments.run(cfg, root=tmp_path)
    assert not (tmp_path / experiments.run_hash(cfg) / "record.json").exists()


def test_records_carry_identity_and_machine(make_config, prepared_layout, tmp_path):
    rec = experiments.run(make_config(prepared_layout, **{"train.epochs": 1}), root=tmp_path)
    assert rec.identity == {"data": experiments.run_identity(make_config(prepared_layout))["data"],
                            "code": identity.code_version()}
    assert rec.machine["cpu"] and rec.machine["torch"] and rec.machine["torch_threads"] >= 1
