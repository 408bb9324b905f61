"""The Kinetics-Sounds layout parser, cache building, every bad-input case, and the synth_ks generator."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmlib import experiments
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data.cache import TensorCache
from mmlib.data.layout import LayoutError
from mmlib.data.kinetics_sounds import (FRAME_DIR, LABELS, build_cache, frame_files, read_classes, read_split_file,
                                        scan_layout)
from mmlib.data.synth_ks import STAMP, SynthKSConfig, code_grid, generate
from mmlib.registry import get

TINY = {"clips": 24, "classes": 4, "test_fraction": 0.25, "seconds": 3.3, "sample_rate": 8000, "frame_size": 16}
RECIPE = "stft_129x94"


@pytest.fixture(scope="module")
def ks_layout(tmp_path_factory) -> Path:
    """24 clips in the public Kinetics-Sounds layout, not marked as generated."""
    root = tmp_path_factory.mktemp("ks") / "KS"
    generate(root, SynthKSConfig(**TINY))
    (root / STAMP).unlink()
    return root


@pytest.fixture
def ks_copy(ks_layout, tmp_path) -> Path:
    dst = tmp_path / "KS"
    shutil.copytree(ks_layout, dst, ignore=shutil.ignore_patterns("cache", "val_*.csv"))
    return dst


def _first_clip(root: Path) -> str:
    return read_split_file(root / "my_train.txt", 4)[0][0]


def _append(path: Path, row: str) -> None:
    path.write_text(path.read_text() + row)


def test_scan_reads_public_layout(ks_layout):
    classes, clips = scan_layout(ks_layout)
    assert classes == list(LABELS[:4])
    assert len(clips) == 24 and sum(c.split == "test" for c in clips) == 6
    assert len({c.name for c in clips}) == 24
    for c in clips:
        assert c.wav == ks_layout / "audio" / f"{c.name}.wav"
        assert [p.name for p in c.frames][:3] == ["frame_00001.jpg", "frame_00002.jpg", "frame_00003.jpg"]
    name, seconds, label = read_split_file(ks_layout / "my_train.txt", 4)[0]
    assert name.count("_") >= 2 and 2.5 < seconds < 4.0 and 0 <= label < 4


def test_cache_shapes_and_dtypes(ks_layout):
    path = build_cache(ks_layout, RECIPE, 16)
    assert path == ks_layout / "cache" / f"{RECIPE}_img16.pt"
    cache = TensorCache.load(path)
    t = cache.tensors
    assert t["audio"].shape == (24, 1, 129, 94) and t["audio"].dtype == torch.float16
    assert t["visual"].dtype == torch.uint8 and t["visual"].shape[0] == 24 and t["visual"].shape[2:] == (3, 16, 16)
    assert t["visual_count"].dtype == torch.int16 and int(t["visual_count"].min()) >= 3
    assert int(t["visual_count"].max()) == t["visual"].shape[1]
    assert t["label"].dtype == torch.int64 and set(t["label"].tolist()) == {0, 1, 2, 3}
    assert t["split"].dtype == torch.int8 and int((t["split"] == 2).sum()) == 6
    assert cache.meta["classes"] == list(LABELS[:4]) and len(set(cache.meta["clips"])) == 24
    assert cache.meta["modalities"] == ["audio", "visual"] and cache.meta["image_size"] == 16
    assert torch.isfinite(t["audio"].float()).all() and t["visual"].float().std() > 5


def test_frames_read_in_sorted_name_order(ks_copy):
    clip = _first_clip(ks_copy)
    frame_dir = ks_copy / FRAME_DIR / clip
    for p in frame_dir.iterdir():
        p.unlink()
    colours = {"frame_00001.jpg": (255, 0, 0), "frame_00002.jpg": (0, 255, 0), "frame_00003.jpg": (0, 0, 255)}
    for name in sorted(colours, reverse=True):  # created last-first, so creation order is not name order
        Image.new("RGB", (20, 20), colours[name]).save(frame_dir / name, quality=95)
    assert [p.name for p in frame_files(frame_dir)] == sorted(colours)
    cache = TensorCache.load(build_cache(ks_copy, RECIPE, 8))
    i = cache.meta["clips"].index(clip)
    assert int(cache.tensors["visual_count"][i]) == 3
    means = cache.tensors["visual"][i, :3].float().mean(dim=(2, 3))  # (3 frames, 3 channels)
    assert means.argmax(dim=1).tolist() == [0, 1, 2]


def test_numbered_names_sort_as_numbers(tmp_path):
    for name in ("frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in frame_files(tmp_path)] == ["frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]


def test_missing_directory(tmp_path):
    with pytest.raises(LayoutError, match="dataset directory not found"):
        scan_layout(tmp_path / "nope")


@pytest.mark.parametrize("sub", ["audio", "visual/Image-01-FPS"])
def test_missing_media_directory(ks_copy, sub):
    shutil.rmtree(ks_copy / sub)
    with pytest.raises(LayoutError, match=f"{sub}: directory not found"):
        scan_layout(ks_copy)


def test_missing_class_list(ks_copy):
    (ks_copy / "classes.txt").unlink()
    with pytest.raises(LayoutError, match=r"classes\.txt: class list not found"):
        scan_layout(ks_copy)


def test_class_list_problems(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("a\nb\na\n")
    with pytest.raises(LayoutError, match="'a' is listed twice"):
        read_classes(path)
    path.write_text("a\n\nb\n")
    with pytest.raises(LayoutError, match=r"classes\.txt:2: empty class name"):
        read_classes(path)


@pytest.mark.parametrize("label", ["4", "-1", "x"])
def test_unknown_label_names_file_and_line(ks_copy, label):
    _append(ks_copy / "my_train.txt", f"abcdefghijk_0_10,10,{label}\n")
    with pytest.raises(LayoutError, match=rf"my_train\.txt:\d+: unknown label '{label}'.*labels are 0\.\.3"):
        scan_layout(ks_copy)


@pytest.mark.parametrize("row, message", [("abc_0_10,10\n", "expected '<clip_id>,<duration_s>,<label_index>'"),
                                          ("abc_0_10,ten,1\n", "duration must be a positive number")])
def test_malformed_row(ks_copy, row, message):
    _append(ks_copy / "my_test.txt", row)
    with pytest.raises(LayoutError, match=rf"my_test\.txt:\d+: {message}"):
        scan_layout(ks_copy)


def test_clip_listed_twice(ks_copy):
    _append(ks_copy / "my_test.txt", f"{_first_clip(ks_copy)},10,0\n")
    with pytest.raises(LayoutError, match=r"my_train\.txt:\d+: clip .* is listed in more than one split, also at "
                                          r"my_test\.txt:\d+ \(test, label 0\) \(train/test leakage\)"):
        scan_layout(ks_copy)


def test_clip_without_media(ks_copy):
    _append(ks_copy / "my_test.txt", "zzzzzzzzzzz_0_10,10,1\n")
    with pytest.raises(LayoutError, match=r"'zzzzzzzzzzz_0_10' in my_test\.txt has no media: .*audio/zzzzzzzzzzz_0_10"
                                          r"\.wav, .*Image-01-FPS/zzzzzzzzzzz_0_10/frame_\*\.jpg"):
        scan_layout(ks_copy)


def test_clip_with_empty_frame_directory(ks_copy):
    clip = _first_clip(ks_copy)
    for p in (ks_copy / FRAME_DIR / clip).iterdir():
        p.unlink()
    with pytest.raises(LayoutError, match=rf"'{clip}' in my_train\.txt has no media: .*{clip}/frame_\*\.jpg"):
        scan_layout(ks_copy)


def test_clip_without_media_skipped_and_reported(ks_copy, capsys):
    _append(ks_copy / "my_test.txt", "zzzzzzzzzzz_0_10,10,1\n")
    _, clips = scan_layout(ks_copy, skip_bad=True)
    assert len(clips) == 24
    assert "skipped: clip 'zzzzzzzzzzz_0_10'" in capsys.readouterr().err


def test_corrupt_wav_names_file(ks_copy):
    clip = _first_clip(ks_copy)
    (ks_copy / "audio" / f"{clip}.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(LayoutError, match=rf"{clip}\.wav: not a readable audio file"):
        build_cache(ks_copy, RECIPE, 16)


def test_corrupt_frame_names_file(ks_copy):
    clip = _first_clip(ks_copy)
    frame = ks_copy / FRAME_DIR / clip / "frame_00002.jpg"
    frame.write_bytes(frame.read_bytes()[:40])  # truncated JPEG
    with pytest.raises(LayoutError, match=rf"{clip}/frame_00002\.jpg: not a decodable image"):
        build_cache(ks_copy, RECIPE, 16)


def test_bad_media_skipped_with_skip_bad(ks_copy, capsys):
    clip = _first_clip(ks_copy)
    (ks_copy / FRAME_DIR / clip / "frame_00001.jpg").write_bytes(b"not a jpeg")
    cache = TensorCache.load(build_cache(ks_copy, RECIPE, 16, skip_bad=True))
    assert len(cache) == 23 and clip not in cache.meta["clips"]
    assert f"{clip}/frame_00001.jpg" in capsys.readouterr().err
    assert int(cache.tensors["visual_count"].min()) >= 3 and cache.tensors["visual"].shape[0] == 23


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic(tmp_path):
    small = {**TINY, "clips": 10, "classes": 3, "test_fraction": 0.3}
    a, b, c = (generate(tmp_path / n, SynthKSConfig(**small, seed=s)) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert SynthKSConfig(**small, seed=1).fingerprint() == SynthKSConfig(**small, seed=1).fingerprint()
    assert SynthKSConfig(**small, seed=1).fingerprint() != SynthKSConfig(**small, seed=2).fingerprint()
    assert _digest(a) == _digest(b) and _digest(a) != _digest(c)
    assert (a / STAMP).read_text().strip() == SynthKSConfig(**small, seed=1).fingerprint()


def test_class_codes_are_distinct():
    for classes in (2, 6, 31):
        n_a, n_b = code_grid(classes)
        assert n_a * n_b >= classes and n_b >= 2
        assert len({(k % n_a, k // n_a) for k in range(classes)}) == classes


def test_generator_checks_its_parameters(tmp_path):
    ds = get("datasets", "synth_ks")()
    with pytest.raises(ValueError, match="classes must be in"):
        ds.ensure_prepared(tmp_path, RECIPE, 16, generator={**TINY, "classes": 32})
    with pytest.raises(KeyError, match="datasets.synth_ks.nope"):
        ds.ensure_prepared(tmp_path, RECIPE, 16, generator={**TINY, "nope": 1})


def test_stamp_mismatch_raises(tmp_path):
    ds = get("datasets", "synth_ks")()
    small = {**TINY, "clips": 10, "classes": 3, "test_fraction": 0.3}
    path = ds.ensure_prepared(tmp_path, RECIPE, 16, generator=small)
    assert path.is_file() and (tmp_path / STAMP).is_file()
    assert ds.ensure_prepared(tmp_path, RECIPE, 16, generator=small) == path  # reused
    with pytest.raises(FileExistsError, match="synth_ks generated with other parameters"):
        ds.ensure_prepared(tmp_path, RECIPE, 16, generator={**small, "seed": 5})


def test_real_dataset_asks_for_prepare(tmp_path):
    ds = get("datasets", "kinetics_sounds")()
    assert not ds.embedded and ds.modalities == {"audio": 1, "visual": 3} and len(ds.labels) == 31
    with pytest.raises(FileNotFoundError, match="python -m mmlib prepare --dataset kinetics_sounds"):
        ds.ensure_prepared(tmp_path, RECIPE, 32)


def test_end_to_end_run(tmp_path):
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_ks", "root": str(tmp_path / "data"), "audio_recipe": "stft_129x47", "frames": 3,
                 "image_size": 16, "val_fraction": 0.2, "generator": TINY},
        "model": {"encoders": {"audio": {"name": "resnet18", "width": 4}, "visual": {"name": "resnet18", "width": 4}}},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "progress": "off", "device": "cpu",
                  "threads": 1, "protocols": ["zero_feature"]},
    })
    rec = experiments.run(cfg, root=tmp_path / "results")
    assert rec.data["dataset"] == "synth_ks" and rec.data["embedded"]
    assert rec.data["classes"] == list(LABELS[:4]) and rec.data["test"] == 6
    assert set(rec.final["test"]["unimodal"]["zero_feature"]) == {"audio", "visual"}
    assert np.isfinite(rec.final["test"]["acc"])
