"""CMU-MOSI in MMSA's feature-pickle layout: the restricted unpickler (a malicious pickle is refused without
running), the loader on generated pickles (padding, zero scores, the given valid split, token-id text, .npz
export), bad-layout errors, the synth_mosi generator and a tiny training run with the sequence encoders."""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmlib import experiments
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data.cache import TensorCache
from mmlib.data.layout import LayoutError
from mmlib.data.mosi import FEATURE_FILES, build_cache, find_feature_file, safe_load_pickle
from mmlib.data.synth_mosi import STAMP, SynthMOSIConfig, generate
from mmlib.registry import get

TINY = {"clips": 60, "audio_steps": 8, "vision_steps": 8, "text_steps": 6, "text_dim": 12}


def _split(n: int, t: int = 4, seed: int = 0, scores=None) -> dict:
    rng = np.random.default_rng(seed)
    return {"audio": rng.standard_normal((n, t, 5)).astype(np.float32),
            "vision": rng.standard_normal((n, t, 20)).astype(np.float32),
            "text": rng.standard_normal((n, t, 8)).astype(np.float32),
            "regression_labels": np.asarray(scores if scores is not None else rng.uniform(-3, 3, n), np.float32),
            "id": [f"v{seed}$_${i}" for i in range(n)], "raw_text": ["x"] * n}


def _write(root: Path, data, name: str = "unaligned_50.pkl") -> Path:
    path = root / "Processed" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def _layout(root: Path, **overrides) -> Path:
    data = {"train": _split(6, seed=0, scores=[-1.2, 0.0, 2.0, 0.4, -0.2, 3.0]), "valid": _split(3, seed=1),
            "test": _split(4, seed=2, scores=[0.0, -2.0, 1.0, -0.6])}
    for key, value in overrides.items():
        data[key] = value
    _write(root, data)
    return root


# ----------------------------------------------------------------------------------------- restricted unpickler
class Payload:
    """Unpickling this runs ``os.system``: a restricted unpickler must refuse it before calling anything."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = tmp_path / "Processed" / "unaligned_50.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"train": {"audio": Payload(target)}}, protocol=protocol))
    with pytest.raises(LayoutError, match=r"unaligned_50\.pkl: refused to unpickle: global (posix|os)\.system"):
        build_cache(tmp_path, "drop", "mosi")
    assert not target.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("builtins", "getattr"), ("numpy", "load"),
                                          ("collections", "OrderedDict"), ("subprocess", "Popen")])
def test_unpickler_allows_no_other_global(tmp_path, module, name):
    blob = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"."  # protocol 2: GLOBAL opcode, then STOP
    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(LayoutError, match=f"global {module}.{name} is not allowed"):
        safe_load_pickle(path)


class RawObjectArray:
    """Unpickles to an object array whose elements come from raw bytes (arbitrary pointers), through allowed
    globals only: numpy itself must refuse it."""

    def __reduce__(self):
        state = (1, (1,), np.dtype(object), False, b"\x41" * 8)
        return np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (0,), b"b"), state


def test_unpickler_builds_no_object_array_from_raw_bytes(tmp_path):
    path = tmp_path / "pointers.pkl"
    path.write_bytes(pickle.dumps({"train": RawObjectArray()}, protocol=2))
    with pytest.raises(LayoutError, match=r"pointers\.pkl: not a readable feature pickle \(TypeError: object pickle"):
        safe_load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_reads_numpy_arrays_and_containers(tmp_path, protocol):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array(["x", "y"], dtype=object),
            "u": np.array(["ab", "c"]), "l": [1, 2.5, "s", (3, None)], "b": b"\x00\xff", "s": {1, 2},
            "scalar": np.float32(1.5)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    back = safe_load_pickle(path)
    assert np.array_equal(back["a"], data["a"]) and back["a"].dtype == np.float32
    assert list(back["ids"]) == ["x", "y"] and list(back["u"]) == ["ab", "c"]
    assert back["l"] == data["l"] and back["b"] == data["b"] and back["s"] == {1, 2} and back["scalar"] == 1.5


# --------------------------------------------------------------------------------------------------- the loader
def test_loader_reads_splits_labels_and_keeps_the_given_valid_split(tmp_path):
    cache = TensorCache.load(build_cache(_layout(tmp_path), "drop", "mosi"))
    t = cache.tensors
    # scores of exactly 0 are dropped (one in train, one in test); sign gives the label
    assert (t["split"] == 0).sum() == 5 and (t["split"] == 1).sum() == 3 and (t["split"] == 2).sum() == 3
    train = t["split"] == 0
    assert t["label"][train].tolist() == [0, 1, 1, 0, 1] and t["score"][train].tolist() == pytest.approx(
        [-1.2, 2.0, 0.4, -0.2, 3.0])
    assert t["audio"].shape == (11, 4, 5) and t["vision"].shape == (11, 4, 20) and t["text"].shape == (11, 4, 8)
    assert t["audio"].dtype == torch.float16 and cache.meta["modalities"] == ["audio", "vision", "text"]
    assert cache.meta["feature_file"] == "Processed/unaligned_50.pkl" and cache.meta["classes"] == ["negative",
                                                                                                     "positive"]
    assert cache.meta["zero_scores_dropped"] == {"train": 1, "val": 0, "test": 1}
    carved = cache.carve_validation(0.5, seed=0)  # the dataset's own valid split stays; nothing is carved
    assert torch.equal(carved.tensors["split"], t["split"])
    assert carved.meta["val_split"].startswith("given by the dataset")


def test_has0_counts_zero_as_positive(tmp_path):
    cache = TensorCache.load(build_cache(_layout(tmp_path), "positive", "mosi_has0"))
    train = cache.tensors["split"] == 0
    assert cache.tensors["label"][train].tolist() == [0, 1, 1, 1, 0, 1]
    assert get("datasets", "mosi_has0")().cache_path(tmp_path).name == "unaligned_50_has0.pt"


def test_padding_from_lengths_and_text_mask_audio_neginf(tmp_path):
    train = _split(6, t=5, seed=0)
    train["audio"][0, 1, 2] = -np.inf
    train["audio_lengths"] = [2, 5, 5, 5, 5, 5]
    train["vision_lengths"] = [5, 3, 5, 5, 5, 5]
    mask = np.ones((6, 5))
    mask[2, 4:] = 0
    train["text_bert"] = np.stack([np.full((6, 5), 7.0), mask, np.zeros((6, 5))], axis=1)
    cache = TensorCache.load(build_cache(_layout(tmp_path, train=train), "drop", "mosi"))
    clips = cache.meta["clips"]
    a, v, x = (cache.tensors[m][clips.index(c)].float() for m, c in
               (("audio", "v0$_$0"), ("vision", "v0$_$1"), ("text", "v0$_$2")))
    assert float(a[1, 2]) == 0.0 and (a[2:] == 0).all() and (a[:2] != 0).sum() == 9
    assert (v[3:] == 0).all() and (v[:3] != 0).all()
    assert (x[4:] == 0).all() and (x[:4] != 0).all()


def test_text_bert_only_gives_token_ids(tmp_path):
    def ids_only(split):
        ids = np.arange(1, 1 + len(split["id"]) * 4, dtype=np.float32).reshape(-1, 4)
        mask = np.ones_like(ids)
        mask[:, 3] = 0
        split = {k: v for k, v in split.items() if k != "text"}
        return {**split, "text_bert": np.stack([ids, mask, np.zeros_like(ids)], axis=1)}

    data = {"train": ids_only(_split(6, seed=0)), "valid": ids_only(_split(3, seed=1)),
            "test": ids_only(_split(4, seed=2))}
    _write(tmp_path, data)
    cache = TensorCache.load(build_cache(tmp_path, "drop", "mosi"))
    text = cache.tensors["text"]
    assert text.dtype == torch.int64 and text.shape[1] == 4 and (text[:, 3] == 0).all() and (text[:, :3] > 0).all()
    assert cache.meta["text_kind"] == "bert_ids" and cache.meta["vocab_size"] == 30522


def test_npz_export_gives_the_same_cache(tmp_path):
    pkl_root, npz_root = _layout(tmp_path / "pkl"), tmp_path / "npz"
    data = pickle.loads((pkl_root / "Processed" / "unaligned_50.pkl").read_bytes())
    (npz_root / "Processed").mkdir(parents=True)
    np.savez(npz_root / "Processed" / "unaligned_50.npz",
             **{f"{s}/{k}": np.asarray(v) for s, d in data.items() for k, v in d.items()})
    a = TensorCache.load(build_cache(pkl_root, "drop", "mosi"))
    b = TensorCache.load(build_cache(npz_root, "drop", "mosi"))
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert b.meta["feature_file"] == "Processed/unaligned_50.npz"


def test_feature_file_order(tmp_path):
    with pytest.raises(LayoutError, match=r"no MMSA feature file \(looked for Processed/unaligned_50\.pkl"):
        find_feature_file(tmp_path)
    _write(tmp_path, {}, "aligned_50.pkl")
    assert find_feature_file(tmp_path).name == "aligned_50.pkl"
    _write(tmp_path, {}, "unaligned_50.pkl")
    assert find_feature_file(tmp_path).name == "unaligned_50.pkl" and FEATURE_FILES[0] == "unaligned_50"


@pytest.mark.parametrize("data, message", [
    ([1, 2], r"expected a dict with keys train, valid, test, got list"),
    ({"train": {}, "test": {}}, r"missing split\(s\) valid"),
])
def test_bad_top_level(tmp_path, data, message):
    _write(tmp_path, data)
    with pytest.raises(LayoutError, match=rf"unaligned_50\.pkl: {message}"):
        build_cache(tmp_path, "drop", "mosi")


def test_bad_split_contents(tmp_path):
    broken = _split(6)
    del broken["vision"]
    _layout(tmp_path, train=broken)
    with pytest.raises(LayoutError, match=r"unaligned_50\.pkl\['train'\]: missing key 'vision'"):
        build_cache(tmp_path, "drop", "mosi")
    short = _split(6)
    short["id"] = short["id"][:5]
    _layout(tmp_path, test=short)
    with pytest.raises(LayoutError, match=r"\['test'\]: the arrays disagree on the number of clips"):
        build_cache(tmp_path, "drop", "mosi")
    flat = _split(6)
    flat["audio"] = np.zeros((6, 5))
    _layout(tmp_path, valid=flat)
    with pytest.raises(LayoutError, match=r"\['valid'\]\['audio'\]: expected a numeric array of 3 dimensions"):
        build_cache(tmp_path, "drop", "mosi")


def test_non_finite_features_stop_or_are_skipped(tmp_path, capsys):
    bad = _split(6)
    bad["vision"][3, 0, 0] = np.nan
    _layout(tmp_path, train=bad)
    with pytest.raises(LayoutError, match=r"clip 'v0\$_\$3' has non-finite values in 'vision'.*--skip-bad"):
        build_cache(tmp_path, "drop", "mosi")
    cache = TensorCache.load(build_cache(tmp_path, "drop", "mosi", skip_bad=True))
    assert "v0$_$3" not in cache.meta["clips"] and "skipped:" in capsys.readouterr().err


def test_unprepared_cache_names_the_prepare_command(tmp_path):
    _layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m mmlib prepare --dataset mosi"):
        get("datasets", "mosi")().ensure_prepared(tmp_path)


# --------------------------------------------------------------------------------------------------- synth_mosi
def test_synth_mosi_writes_the_mmsa_layout_and_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    paths = [get("datasets", "synth_mosi")().ensure_prepared(r, generator=TINY) for r in (a, b)]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert digests[0] == digests[1]
    data = safe_load_pickle(a / "Processed" / "unaligned_50.pkl")
    train = data["train"]
    assert set(train) >= {"audio", "vision", "text", "text_bert", "regression_labels", "id", "audio_lengths"}
    assert train["text"].shape[1:] == (6, 12) and train["text_bert"].shape[1] == 3
    assert sum(len(d["id"]) for d in data.values()) == 60 and len(data["valid"]["id"]) == 6
    cache = TensorCache.load(paths[0])
    assert cache.meta["dataset"] == "synth_mosi" and (cache.tensors["split"] == 1).sum() == len(data["valid"]["id"])
    other = get("datasets", "synth_mosi")().ensure_prepared(tmp_path / "c", generator={**TINY, "seed": 1})
    assert hashlib.sha256(other.read_bytes()).hexdigest() != digests[0]
    with pytest.raises(FileExistsError, match="generated with other parameters"):
        get("datasets", "synth_mosi")().ensure_prepared(a, generator={**TINY, "seed": 1})


def test_synth_mosi_cues_carry_the_polarity():
    """A 'mean' cue moves the time-mean along one direction by polarity; an 'order' cue leaves the time-mean
    polarity-free but flips which direction comes first."""
    from mmlib.data.synth_mosi import sequence

    cfg = SynthMOSIConfig(clips=400, text_dim=16, text_snr=2.0, text_cue_steps=1.0, vision_cue_steps=1.0,
                          vision_snr=2.0, vision_dim=16, text_steps=10, vision_steps=10)
    polarity = np.where(np.arange(400) % 2 == 0, 1.0, -1.0)
    lengths = np.full(400, 10)
    carries = np.ones(400, dtype=bool)
    text = sequence(cfg, "text", polarity, carries, lengths, np.random.default_rng(0)).mean(axis=1)
    vision = sequence(cfg, "vision", polarity, carries, lengths, np.random.default_rng(0))
    diff = text[polarity > 0].mean(0) - text[polarity < 0].mean(0)
    assert np.linalg.norm(diff) > 4.0  # 2 x snr x sqrt(dim) along the cue direction
    mean_diff = vision.mean(1)[polarity > 0].mean(0) - vision.mean(1)[polarity < 0].mean(0)
    order_diff = (vision[:, :5].mean(1) - vision[:, 5:].mean(1))
    assert np.linalg.norm(mean_diff) < 0.5
    assert np.linalg.norm(order_diff[polarity > 0].mean(0) - order_diff[polarity < 0].mean(0)) > 4.0


def test_synth_mosi_config_is_checked():
    with pytest.raises(ValueError, match="synth_mosi.text_cue must be one of mean, order"):
        SynthMOSIConfig(text_cue="word").check()
    with pytest.raises(KeyError, match="datasets.synth_mosi.colour"):
        get("datasets", "synth_mosi")().ensure_prepared("/nonexistent", generator={"colour": 1})


def test_tiny_training_run_with_three_modalities(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path / "results"))
    torch.set_num_threads(1)
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_mosi", "root": str(tmp_path / "mosi"), "modalities": ["audio", "vision", "text"],
                 "generator": TINY},
        "model": {"encoders": {"audio": {"name": "seq_lstm", "width": 8},
                               "vision": {"name": "seq_transformer", "width": 8, "depth": 1, "heads": 2},
                               "text": {"name": "seq_lstm", "width": 8, "in_channels": 12}},
                  "fusion": {"name": "concat"}},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "progress": "off", "device": "cpu"},
    })
    record = experiments.run(cfg)
    assert record.data["val"] == 6 and record.data["classes"] == ["negative", "positive"]
    assert all(np.isfinite(record.steps["loss"]))
    for split in ("val", "test"):
        assert 0 <= record.final[split]["acc"] <= 1
        assert set(record.final[split]["unimodal"]["zero_feature"]) == {"audio", "vision", "text"}


def test_cli_prepare_of_another_embedded_dataset_uses_its_own_defaults(tmp_path, monkeypatch, capsys):
    """``prepare --dataset synth_mosi`` does not hand it the configured dataset's (synth_av's) generator fields."""
    from mmlib.__main__ import main
    from mmlib.data.synth_mosi import SynthMOSI

    seen = {}

    def record(self, root, recipe, image_size, skip_bad=False, generator=None, **_):
        seen["generator"] = generator
        return Path(root) / "cache.pt"

    monkeypatch.setattr(SynthMOSI, "ensure_prepared", record)
    assert main(["prepare", "--dataset", "synth_mosi", "--root", str(tmp_path)]) == 0
    assert seen["generator"] == {} and capsys.readouterr().out.strip() == str(tmp_path / "cache.pt")
