"""NYUv2 in its public layout: the HDF5 (MATLAB v7.3) labelled set with its transposed axes, the 1-based
splits, the 894 -> 40 class mapping with void, an already mapped labels40 array, bad-layout errors, the
synth_nyuv2 generator, and a tiny segmentation training run."""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from mmlib import experiments
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data.cache import TensorCache
from mmlib.data.layout import LayoutError
from mmlib.data.nyuv2 import NYU40, build_cache, output_size
from mmlib.data.synth_nyuv2 import SynthNYUv2Config, generate, raw_ids, render
from mmlib.metrics import IGNORE_INDEX
from mmlib.registry import get

N, H, W = 4, 32, 64  # stored size = image_size 32: no resizing, so values can be compared pixel by pixel
TINY = {"images": 12, "height": 48, "width": 64, "test_fraction": 0.25}


def scenes(seed: int = 0):
    """(N, H, W, 3) rgb, (N, H, W) depth in metres, (N, H, W) raw labels with every pixel distinct by position."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 12.0, (N, H, W)).astype(np.float32)  # beyond 10 m clips
    raw = rng.integers(0, 6, (N, H, W)).astype(np.uint16)
    raw[:, 0, :] = 0  # unlabelled
    raw[:, 1, :3] = 894  # the last raw id
    return rgb, depth, raw


def write_mat(root: Path, rgb, depth, labels, key: str = "labels") -> None:
    """As MATLAB v7.3 stores H x W x 3 x N: HDF5 axes reversed, (N, 3, W, H)."""
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)
        f["depths"] = depth.transpose(0, 2, 1)
        f[key] = labels.transpose(0, 2, 1)


def mapping() -> np.ndarray:
    table = np.zeros((1, 894))
    table[0, [0, 1, 2, 3, 4]] = [3, 0, 7, 22, 40]  # raw 1 -> cabinet, raw 2 -> void, 3 -> table, 4 -> ceiling ...
    table[0, 893] = 1  # raw 894 -> wall
    return table


def layout(root: Path, splits=None, **kwargs) -> Path:
    rgb, depth, raw = scenes()
    write_mat(root, rgb, depth, raw)
    splits = splits or {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": np.array([[2]])}
    scipy.io.savemat(root / "splits.mat", splits)
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": mapping(), **kwargs})
    return root


def test_reads_the_transposed_arrays_and_maps_the_classes(tmp_path):
    root = layout(tmp_path / "nyu")
    cache = TensorCache.load(build_cache(root, 32))
    rgb, depth, raw = scenes()
    t = cache.tensors
    assert t["rgb"].shape == (N, 1, 3, H, W) and t["rgb"].dtype == torch.uint8
    assert t["depth"].shape == (N, 1, 1, H, W) and t["label"].shape == (N, H, W) and t["label"].dtype == torch.int8
    order = [0, 1, 2, 3]  # images stay in file order whatever their split
    assert torch.equal(t["rgb"][:, 0], torch.from_numpy(rgb[order]).permute(0, 3, 1, 2))
    expected_depth = np.rint(np.clip(depth[order] / 10.0, 0, 1) * 255)
    assert np.array_equal(t["depth"][:, 0, 0].numpy(), expected_depth)
    lut = np.concatenate([[0], mapping()[0]]).astype(int)  # raw -> 40-class id, 0 = void
    expected = lut[raw[order].astype(int)] - 1
    expected[expected < 0] = IGNORE_INDEX
    assert np.array_equal(t["label"].numpy(), expected)
    assert (t["label"][:, 0] == IGNORE_INDEX).all() and (t["label"][:, 1, :3] == 0).all()  # void row; raw 894: wall
    assert t["split"].tolist() == [0, 2, 0, 0]  # image 2 is the test image (1-based indices)
    assert cache.meta["classes"] == list(NYU40) and cache.meta["task"] == "segmentation"
    assert cache.meta["ignore_index"] == IGNORE_INDEX and cache.meta["clips"][1] == "nyuv2_0002"
    assert cache.meta["size"] == [H, W] and "normalize" in cache.meta
    carved = cache.carve_validation(0.34, seed=0)  # dense labels: an unstratified seeded share of train
    assert int((carved.tensors["split"] == 1).sum()) == 1 and int((carved.tensors["split"] == 2).sum()) == 1


def test_already_mapped_labels40_need_no_mapping_file(tmp_path):
    rgb, depth, raw = scenes()
    labels40 = (raw % 41).astype(np.uint8)
    write_mat(tmp_path, rgb, depth, labels40, key="labels40")
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.arange(1, 4)[:, None], "testNdxs": np.array([[4]])})
    cache = TensorCache.load(build_cache(tmp_path, 32))
    expected = labels40.astype(int) - 1
    expected[expected < 0] = IGNORE_INDEX
    assert np.array_equal(cache.tensors["label"].numpy(), expected) and cache.meta["label_source"] == "labels40"


def test_v73_splits_and_class_names(tmp_path):
    root = layout(tmp_path, className=np.array([[f"c{i}" for i in range(40)]], dtype=object))
    (root / "splits.mat").unlink()
    with h5py.File(root / "splits.mat", "w") as f:  # a v7.3 splits file: h5py shows the column as a row
        f["trainNdxs"] = np.array([[1.0, 2.0, 3.0]])
        f["testNdxs"] = np.array([[4.0]])
    cache = TensorCache.load(build_cache(root, 32))
    assert cache.tensors["split"].tolist() == [0, 0, 0, 2] and cache.meta["classes"][3] == "c3"


def test_resizes_to_a_multiple_of_32(tmp_path):
    assert output_size(480, 640, 480) == (480, 640) and output_size(480, 640, 96) == (96, 128)
    assert output_size(480, 640, 64) == (64, 96)
    with pytest.raises(ValueError, match="multiple of 32"):
        output_size(480, 640, 100)
    cache = TensorCache.load(build_cache(layout(tmp_path), 64))
    assert cache.tensors["rgb"].shape[-2:] == (64, 128) and cache.tensors["label"].shape[-2:] == (64, 128)
    assert set(np.unique(cache.tensors["label"].numpy())) <= {IGNORE_INDEX, 0, 2, 6, 21, 39}  # nearest: no blends


@pytest.mark.parametrize("problem, message", [
    ("no_mat", r"nyu_depth_v2_labeled\.mat: file not found"),
    ("not_hdf5", r"nyu_depth_v2_labeled\.mat: not an HDF5 \(MATLAB v7\.3\) file"),
    ("no_depths", r"nyu_depth_v2_labeled\.mat: missing dataset\(s\) depths"),
    ("no_splits", r"splits\.mat: file not found"),
    ("zero_based", r"splits\.mat: trainNdxs holds 0, outside 1\.\.4 \(the numbers are 1-based\)"),
    ("twice", r"splits\.mat: image 2 is listed twice"),
    ("no_mapping", r"classMapping40\.mat: file not found"),
    ("short_mapping", r"labels of image 1 holds id 894, outside the mapping's 0\.\.3"),
    ("bad_key", r"classMapping40\.mat: missing key\(s\) mapClass"),
])
def test_bad_layouts_name_the_file(tmp_path, problem, message):
    root = layout(tmp_path)
    if problem == "no_mat":
        (root / "nyu_depth_v2_labeled.mat").unlink()
    elif problem == "not_hdf5":
        (root / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    elif problem == "no_depths":
        with h5py.File(root / "nyu_depth_v2_labeled.mat", "a") as f:
            del f["depths"]
    elif problem == "no_splits":
        (root / "splits.mat").unlink()
    elif problem == "zero_based":
        scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[0], [1]]), "testNdxs": np.array([[2]])})
    elif problem == "twice":
        scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[2]])})
    elif problem == "no_mapping":
        (root / "classMapping40.mat").unlink()
    elif problem == "short_mapping":
        scipy.io.savemat(root / "classMapping40.mat", {"mapClass": np.array([[3, 0, 7]])})
    elif problem == "bad_key":
        scipy.io.savemat(root / "classMapping40.mat", {"map": mapping()})
    with pytest.raises(LayoutError, match=message):
        build_cache(root, 32)


def test_unprepared_cache_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmlib prepare --dataset nyuv2"):
        get("datasets", "nyuv2")().ensure_prepared(layout(tmp_path), image_size=32)


# -------------------------------------------------------------------------------------------------- synth_nyuv2
def test_synth_nyuv2_writes_a_matlab_v73_layout_and_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    paths = [get("datasets", "synth_nyuv2")().ensure_prepared(r, image_size=32, generator=TINY) for r in (a, b)]
    assert hashlib.sha256(paths[0].read_bytes()).digest() == hashlib.sha256(paths[1].read_bytes()).digest()
    assert (a / "nyu_depth_v2_labeled.mat").read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(a / "nyu_depth_v2_labeled.mat", "r") as f:
        assert f["images"].shape == (12, 3, 64, 48) and f["labels"].shape == (12, 64, 48)
        assert f["images"].attrs["MATLAB_class"] == b"uint8" and int(np.max(f["labels"][()])) > 40  # raw ids
    splits = scipy.io.loadmat(a / "splits.mat")
    assert sorted(np.concatenate([splits["trainNdxs"][:, 0], splits["testNdxs"][:, 0]]).tolist()) == list(range(1, 13))
    cache = TensorCache.load(paths[0])
    assert cache.tensors["rgb"].shape == (12, 1, 3, 32, 32) and cache.meta["dataset"] == "synth_nyuv2"
    other = get("datasets", "synth_nyuv2")().ensure_prepared(tmp_path / "c", image_size=32,
                                                            generator={**TINY, "seed": 1})
    assert hashlib.sha256(other.read_bytes()).digest() != hashlib.sha256(paths[0].read_bytes()).digest()


def test_synth_scenes_follow_their_geometry():
    cfg = SynthNYUv2Config(height=60, width=80, void_border=0, depth_noise=0.0, floor_objects=0, wall_objects=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        rgb, depth, raw = render(cfg, rng)
        label40 = (raw - 1) % 40 + 1
        assert set(np.unique(label40)) <= {1, 2, 22}  # wall, floor, ceiling only
        floor = label40 == 2
        assert floor[-1, 30:50].all() and not floor[0].any()  # the floor is at the bottom (walls at the corners)
        column = depth[:, 40][floor[:, 40]]
        assert (np.diff(column) <= 1e-5).all()  # floor depth decreases towards the camera (down the image)
    cfg = SynthNYUv2Config(height=60, width=80, void_border=1)
    _, _, raw = render(cfg, np.random.default_rng(1))
    assert (raw == 0).any() and set(np.unique(raw[raw > 0] % 40)) <= set(range(40))
    assert raw_ids(7)[:3] == [7, 47, 87]


def test_tiny_segmentation_training_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path / "results"))
    torch.set_num_threads(1)
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_nyuv2", "root": str(tmp_path / "nyu"), "modalities": ["rgb", "depth"],
                 "image_size": 32, "val_fraction": 0.2, "generator": TINY},
        "model": {"encoders": {"rgb": {"name": "resnet18_pyramid", "width": 4},
                               "depth": {"name": "resnet18_pyramid", "width": 4}},
                  "fusion": {"name": "esanet"}},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 8, "progress": "off", "device": "cpu"},
    })
    record = experiments.run(cfg)
    assert all(np.isfinite(record.steps["loss"])) and record.data["classes"] == list(NYU40)
    for split in ("val", "test"):
        final = record.final[split]
        assert final["task"] == "segmentation" and 0 <= final["miou"] <= 1 and 0 <= final["pixel_acc"] <= 1
        assert len(final["iou"]) == 40 and set(final["unimodal"]["zero_feature"]) == {"rgb", "depth"}
        assert 0 <= final["unimodal"]["zero_feature"]["depth"]["miou"] <= 1
    assert "miou" in record.history[0]["val"]
