"""NVGesture: the list-file parser, cache building, every bad-input case, and the embedded stand-in."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mmlib import experiments
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data.cache import TensorCache
from mmlib.data.layout import LayoutError
from mmlib.data.nvgesture import (FLOW_BOUND, LIST_FILES, build_cache, even_positions, parse_list_line,
                                  read_list_file, scan_layout)
from mmlib.data.synth_nvgesture import STAMP, SynthNVGesture, SynthNVGestureConfig, generate, write_avi

TINY = {"clips": 16, "classes": 4, "frames": 4, "frame_size": 16, "test_fraction": 0.25}
LINE = ("path:./Video_data/class_03/subject99_r9 depth:sk_depth:5:85 color:sk_color:5:85 "
        "duo_left:duo_left:12:92 label:3")


@pytest.fixture(scope="module")
def nv_layout(tmp_path_factory):
    """16 clips in the official NVGesture layout, not marked as generated."""
    root = tmp_path_factory.mktemp("nv") / "nvgesture"
    generate(root, SynthNVGestureConfig(**TINY))
    (root / STAMP).unlink()
    return root


@pytest.fixture
def nv_copy(nv_layout, tmp_path):
    dst = tmp_path / "nvgesture"
    shutil.copytree(nv_layout, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def test_parse_list_line():
    path, ranges, label = parse_list_line(LINE, "x.lst:1")
    assert path == "Video_data/class_03/subject99_r9" and label == 3
    assert ranges == {"depth": (5, 85), "color": (5, 85), "duo_left": (12, 92)}


@pytest.mark.parametrize("bad, message", [
    (LINE.replace("label:3", "label:26"), "label must be an integer in 1..25"),
    (LINE.replace("label:3", "label:0"), "label must be an integer in 1..25"),
    (LINE.replace("label:3", "label:three"), "label must be an integer"),
    (LINE.replace(" label:3", ""), "missing field 'label'"),
    (LINE.replace("color:sk_color:5:85", "color:sk_color:85:5"), "empty or negative frame range"),
    (LINE.replace("depth:sk_depth:5:85", "depth:sk_depth:a:b"), "field 'depth' must be"),
])
def test_parse_list_line_rejects_bad_lines(bad, message):
    with pytest.raises(LayoutError, match=rf"x\.lst:7: .*{message}"):
        parse_list_line(bad, "x.lst:7")


def test_scan_reads_official_layout(nv_layout):
    clips = scan_layout(nv_layout)
    assert len(clips) == 16 and sum(c.split == "test" for c in clips) == 4
    train = read_list_file(nv_layout / LIST_FILES["train"], "train")
    assert [c.line for c in train] == list(range(12))  # flow_data/train/<line>.npy
    assert all(c.directory.name.startswith("subject") and c.name.split("/")[1] == f"class_{c.label + 1:02d}"
               for c in clips)


def test_cache_shapes_dtypes_and_meta(nv_layout):
    cache = TensorCache.load(build_cache(nv_layout, 16, frames=3))
    t = cache.tensors
    assert t["rgb"].shape == (16, 3, 3, 16, 16) and t["depth"].shape == (16, 3, 1, 16, 16)
    assert t["flow"].shape == (16, 3, 2, 16, 16)
    assert all(t[m].dtype == torch.uint8 for m in ("rgb", "depth", "flow"))
    assert all(t[f"{m}_count"].dtype == torch.int16 and int(t[f"{m}_count"].min()) == 3
               for m in ("rgb", "depth", "flow"))
    assert t["label"].dtype == torch.int64 and t["split"].dtype == torch.int8
    assert cache.meta["classes"] == [f"class_{i:02d}" for i in range(1, 5)]
    assert len(set(cache.meta["clips"])) == 16 and cache.meta["flow_scale"] == FLOW_BOUND
    assert cache.meta["normalize"]["flow"] == [[0.5, 0.5], [0.5, 0.5]]


def test_even_positions():
    assert even_positions(8, 4).tolist() == [1, 3, 5, 7]
    assert even_positions(3, 8).tolist() == [0, 1, 2]


def test_frames_in_order_from_the_listed_range(nv_copy):
    """A clip whose frame k has grey level 20 k: the cache holds frames start + [1, 3, 5, 7] of range 2:10."""
    clip = scan_layout(nv_copy)[0]
    levels = np.arange(12) * 20
    frames = np.broadcast_to(levels[:, None, None, None], (12, 16, 16, 3)).astype(np.uint8)
    for name in ("sk_color.avi", "sk_depth.avi"):
        write_avi(clip.directory / name, frames)
    flow = np.zeros((8, 2, 16, 16), np.float32)
    flow[:, 0] = np.arange(8)[:, None, None] * 0.1  # dx grows with time, in pixels per frame
    np.save(clip.flow(nv_copy), flow)
    lst = nv_copy / LIST_FILES[clip.split]
    lines = lst.read_text().splitlines()
    lines[clip.line] = (f"path:./{clip.name} depth:sk_depth:2:10 color:sk_color:2:10 duo_left:duo_left:2:10 "
                        f"label:{clip.label + 1}")
    lst.write_text("\n".join(lines) + "\n")
    cache = TensorCache.load(build_cache(nv_copy, 16, frames=4))
    row = cache.meta["clips"].index(clip.name)
    expected = levels[[3, 5, 7, 9]]
    assert np.abs(cache.tensors["depth"][row, :, 0].float().mean((1, 2)).numpy() - expected).max() < 4
    assert np.abs(cache.tensors["rgb"][row].float().mean((1, 2, 3)).numpy() - expected).max() < 4
    dx = cache.tensors["flow"][row, :, 0].float().mean((1, 2)).numpy()
    expected_dx = np.round(np.clip(np.array([1, 3, 5, 7]) * 0.1 / 16 / FLOW_BOUND, -1, 1) * 127.5 + 127.5)
    assert np.abs(dx - expected_dx).max() <= 1


def test_missing_directory(tmp_path):
    with pytest.raises(LayoutError, match="dataset directory not found"):
        scan_layout(tmp_path / "nope")


def test_missing_list_file(nv_copy):
    (nv_copy / LIST_FILES["test"]).unlink()
    with pytest.raises(LayoutError, match="nvgesture_test_correct_cvpr2016_v2.lst: list file not found"):
        scan_layout(nv_copy)


def test_bad_label_names_file_and_line(nv_copy):
    path = nv_copy / LIST_FILES["train"]
    path.write_text(path.read_text() + LINE.replace("label:3", "label:30") + "\n")
    with pytest.raises(LayoutError, match=r"train_correct_cvpr2016_v2\.lst:13: label must be"):
        scan_layout(nv_copy)


def test_listed_clip_without_media(nv_copy):
    path = nv_copy / LIST_FILES["test"]
    path.write_text(path.read_text() + LINE + "\n")
    with pytest.raises(LayoutError, match=r"class_03/subject99_r9' in .*has no media: .*sk_color\.avi"):
        scan_layout(nv_copy)


def test_listed_clip_without_media_skipped_and_reported(nv_copy, capsys):
    path = nv_copy / LIST_FILES["test"]
    path.write_text(path.read_text() + LINE + "\n")
    assert len(scan_layout(nv_copy, skip_bad=True)) == 16
    assert "skipped: clip 'Video_data/class_03/subject99_r9'" in capsys.readouterr().err


def test_missing_flow_file(nv_copy):
    (nv_copy / "flow_data" / "test" / "2.npy").unlink()
    with pytest.raises(LayoutError, match=r"has no media: .*flow_data/test/2\.npy"):
        scan_layout(nv_copy)


def test_corrupt_video_names_file_and_can_be_skipped(nv_copy, capsys):
    clip = scan_layout(nv_copy)[5]
    (clip.directory / "sk_depth.avi").write_bytes(b"not a video at all" * 50)
    with pytest.raises(LayoutError, match=rf"{clip.name}/sk_depth\.avi: not a decodable video"):
        build_cache(nv_copy, 16, frames=2)
    cache = TensorCache.load(build_cache(nv_copy, 16, frames=2, skip_bad=True))
    assert len(cache) == 15 and clip.name not in cache.meta["clips"]
    assert "sk_depth.avi: not a decodable video" in capsys.readouterr().err


def test_range_past_the_end_of_the_video(nv_copy):
    path = nv_copy / LIST_FILES["train"]
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("color:sk_color:", "color:sk_color:0:99 x:")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LayoutError, match=r"sk_color\.avi: the list asks for frames 0:99"):
        build_cache(nv_copy, 16, frames=2)


def test_bad_flow_array(nv_copy):
    np.save(nv_copy / "flow_data" / "train" / "1.npy", np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(LayoutError, match=r"train/1\.npy: optical flow must be \(T, 2, H, W\)"):
        build_cache(nv_copy, 16, frames=2)


def test_generator_is_deterministic(tmp_path):
    cfg = SynthNVGestureConfig(**{**TINY, "clips": 8, "classes": 2})
    a, b = generate(tmp_path / "a", cfg), generate(tmp_path / "b", cfg)
    for name in LIST_FILES.values():
        assert (a / name).read_text() == (b / name).read_text()
    clip = scan_layout(a)[0]
    assert (a / clip.name / "sk_color.avi").read_bytes() == (b / clip.name / "sk_color.avi").read_bytes()
    assert np.array_equal(np.load(clip.flow(a)), np.load(clip.flow(b)))
    c = generate(tmp_path / "c", SynthNVGestureConfig(**{**TINY, "clips": 8, "classes": 2, "seed": 1}))
    assert not np.array_equal(np.load(clip.flow(a)), np.load(scan_layout(c)[0].flow(c)))


def test_stamp_mismatch_and_unknown_generator_keys(tmp_path):
    ds = SynthNVGesture()
    small = {**TINY, "clips": 8, "classes": 2}
    path = ds.ensure_prepared(tmp_path, None, 16, generator=small)
    assert path.is_file() and (tmp_path / STAMP).read_text().strip() == SynthNVGestureConfig(**small).fingerprint()
    assert ds.ensure_prepared(tmp_path, None, 16, generator=small) == path
    with pytest.raises(FileExistsError, match="other parameters"):
        ds.ensure_prepared(tmp_path, None, 16, generator={**small, "seed": 5})
    with pytest.raises(Exception, match="nope"):
        ds.ensure_prepared(tmp_path, None, 16, generator={**small, "nope": 1})


def test_real_dataset_asks_for_prepare(tmp_path):
    from mmlib.registry import get
    with pytest.raises(FileNotFoundError, match="python -m mmlib prepare --dataset nvgesture"):
        get("datasets", "nvgesture")().ensure_prepared(tmp_path, None, 32)


def test_end_to_end_run(tmp_path):
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_nvgesture", "root": str(tmp_path / "data"), "modalities": ["rgb", "depth", "flow"],
                 "frames": 2, "image_size": 16, "val_fraction": 0.2, "generator": {**TINY, "clips": 24}},
        "model": {"encoders": {m: {"name": "resnet18", "width": 4} for m in ("rgb", "depth", "flow")},
                  "fusion": {"name": "sum"}},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "progress": "off", "device": "cpu",
                  "threads": 1},
    })
    rec = experiments.run(cfg, root=tmp_path / "results")
    assert rec.data["dataset"] == "synth_nvgesture" and rec.data["embedded"]
    assert rec.data["classes"] == [f"class_{i:02d}" for i in range(1, 5)]
    assert set(rec.final["test"]["unimodal"]["zero_feature"]) == {"rgb", "depth", "flow"}
