"""ModelNet40 multi-view renders: the 12-view layout, every bad-input case, the renderer, the stand-in."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mmlib import experiments
from mmlib.__main__ import main
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data.cache import TensorCache
from mmlib.data.layout import LayoutError
from mmlib.data.modelnet40 import ModelNet40Options, build_cache, parse_view_file, scan_layout, view_modality
from mmlib.data.synth_modelnet40 import (CLASSES, STAMP, SynthModelNet40, SynthModelNet40Config, generate,
                                         render_object)
from mmlib.registry import get

TINY = {"objects": 40, "classes": 4, "render_size": 16}
OPTIONS = ModelNet40Options()


@pytest.fixture(scope="module")
def mn_layout(tmp_path_factory):
    """40 objects of 4 classes in the 12-view layout (10 per class, 2 of them test), not marked generated."""
    root = tmp_path_factory.mktemp("mn") / "modelnet40"
    generate(root, SynthModelNet40Config(**TINY))
    (root / STAMP).unlink()
    return root


@pytest.fixture
def mn_copy(mn_layout, tmp_path):
    dst = tmp_path / "modelnet40"
    shutil.copytree(mn_layout, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def test_view_file_names():
    assert parse_view_file("chair_0042_v011.png") == ("chair_0042", 11)
    assert parse_view_file("airplane_0001.obj.shaded_v001.png") == ("airplane_0001", 0)  # release: 1-based
    assert parse_view_file("airplane_0001.obj.shaded_v012.png") == ("airplane_0001", 11)
    assert parse_view_file("chair_0042.png") is None
    assert [view_modality(v) for v in (0, 3, 6)] == ["front", "view3", "rear"]


def test_scan_counts_classes_and_splits(mn_layout):
    classes, items = scan_layout(mn_layout, [0, 6])
    assert classes == list(CLASSES[:4]) == ["airplane", "bathtub", "bed", "bench"]
    for label, cls in enumerate(classes):
        mine = [i for i in items if i.label == label]
        assert len(mine) == 10 and sum(i.split == "test" for i in mine) == 2
        assert all(i.name.startswith(f"{cls}/{i.split}/{cls}_") for i in mine)
    train = sorted(i.name.split("/")[-1] for i in items if i.label == 0 and i.split == "train")
    assert train == [f"airplane_{k:04d}" for k in range(1, 9)]  # numbered per class, train first
    assert all(len(list((mn_layout / "bed" / "test").glob(f"{i.name.split('/')[-1]}_v*.png"))) == 12
               for i in items if i.label == 2 and i.split == "test")


def test_cache_shapes_dtypes_and_meta(mn_layout):
    cache = TensorCache.load(build_cache(mn_layout, 16, ModelNet40Options(views=[6, 0, 3])))
    t = cache.tensors
    assert {k for k in t if not k.endswith("_count")} == {"front", "view3", "rear", "label", "split"}
    assert all(t[m].shape == (40, 1, 1, 16, 16) and t[m].dtype == torch.uint8
               for m in ("front", "view3", "rear"))
    assert all(t[f"{m}_count"].tolist() == [1] * 40 for m in ("front", "view3", "rear"))
    assert cache.meta["views"] == [0, 3, 6] and cache.meta["modalities"] == ["front", "view3", "rear"]
    assert cache.meta["classes"] == list(CLASSES[:4]) and len(cache.indices("test")) == 8
    assert not torch.equal(t["front"], t["rear"])


def test_views_are_resized_and_grey(mn_copy):
    from PIL import Image

    clip = scan_layout(mn_copy, [0])[1][0]
    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (255, 0, 0)  # left half red: grey 76 (ITU-R 601 luma)
    Image.fromarray(rgb).save(clip.files[0])
    cache = TensorCache.load(build_cache(mn_copy, 8, OPTIONS))
    row = cache.meta["clips"].index(clip.name)
    image = cache.tensors["front"][row, 0, 0]
    assert image.shape == (8, 8) and image[:, :3].eq(76).all() and image[:, 5:].eq(0).all()


def test_release_naming_gives_the_same_cache(mn_copy):
    reference = TensorCache.load(build_cache(mn_copy, 16, OPTIONS)).tensors
    for path in sorted(mn_copy.rglob("*_v0*.png")):
        obj, view = parse_view_file(path.name)
        path.rename(path.with_name(f"{obj}.obj.shaded_v{view + 1:03d}.png"))
    shutil.rmtree(mn_copy / "cache")
    renamed = TensorCache.load(build_cache(mn_copy, 16, OPTIONS)).tensors
    assert all(torch.equal(reference[k], renamed[k]) for k in reference)


def test_missing_view_names_the_object(mn_copy, capsys):
    (mn_copy / "bed" / "train" / "bed_0003_v006.png").unlink()
    with pytest.raises(LayoutError, match=r"bed/train: object 'bed_0003' lacks view\(s\) 6 \(e\.g\. "
                                          r"bed_0003_v006\.png\); pass --skip-bad"):
        build_cache(mn_copy, 16, OPTIONS)
    assert len(scan_layout(mn_copy, [0, 3])[1]) == 40  # a view that is not requested may be missing
    cache = TensorCache.load(build_cache(mn_copy, 16, OPTIONS, skip_bad=True))
    assert len(cache) == 39 and "bed/train/bed_0003" not in cache.meta["clips"]
    assert "skipped: " in capsys.readouterr().err


def test_stray_and_duplicate_files(mn_copy):
    (mn_copy / "bench" / "test" / "notes.txt").write_text("ignored")
    folder = mn_copy / "bench" / "test"
    shutil.copy(folder / "bench_0009_v000.png", folder / "thumbnail.png")
    with pytest.raises(LayoutError, match=r"thumbnail\.png: not a view image"):
        scan_layout(mn_copy, [0, 6])
    (mn_copy / "bench" / "test" / "thumbnail.png").unlink()
    shutil.copy(mn_copy / "bench" / "test" / "bench_0009_v000.png",
                mn_copy / "bench" / "test" / "bench_0009.obj.shaded_v001.png")
    with pytest.raises(LayoutError, match=r"view 0 of object 'bench_0009' also in"):
        scan_layout(mn_copy, [0, 6])


def test_corrupt_png_names_it_and_can_be_skipped(mn_copy, capsys):
    (mn_copy / "airplane" / "test" / "airplane_0010_v006.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(LayoutError, match=r"airplane/test/airplane_0010: unreadable view image"):
        build_cache(mn_copy, 16, OPTIONS)
    assert len(TensorCache.load(build_cache(mn_copy, 16, OPTIONS, skip_bad=True))) == 39
    assert "unreadable view image" in capsys.readouterr().err


def test_layout_errors(mn_copy, tmp_path):
    with pytest.raises(LayoutError, match="dataset directory not found"):
        scan_layout(tmp_path / "nope", [0])
    (tmp_path / "empty" / "cache").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no class folders"):
        scan_layout(tmp_path / "empty", [0])
    for cls in CLASSES[:4]:
        shutil.rmtree(mn_copy / cls / "test")
    with pytest.raises(LayoutError, match="no test objects"):
        scan_layout(mn_copy, [0])


@pytest.mark.parametrize("views", [[12], [0, 0], [], [True]])
def test_bad_views_are_refused(views, tmp_path):
    with pytest.raises(ValueError, match="views must be distinct view numbers in 0..11"):
        get("datasets", "modelnet40")().cache_path(tmp_path, generator={"views": views})


def test_real_dataset_asks_for_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmlib prepare --dataset modelnet40"):
        get("datasets", "modelnet40")().ensure_prepared(tmp_path, None, 32)


# ------------------------------------------------------------------------------------------------------------
# The renderer


def renders(first_classes: int, per_class: int, **cfg) -> tuple[np.ndarray, np.ndarray]:
    """(N, 12, 16, 16) views in [0, 1] of ``per_class`` objects of each first class, and their labels."""
    config = SynthModelNet40Config(render_size=16, noise=0.0, **cfg)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(first_classes), per_class)
    return np.stack([render_object(config, int(k), rng) for k in labels]).astype(np.float64) / 255, labels


def test_every_view_shows_the_object_and_views_differ():
    views, _ = renders(1, 1)  # an airplane
    assert ((views[0] < 0.9).sum((1, 2)) > 10).all()  # each view has object pixels
    assert views[0].max() == 1.0  # the white background
    chair, _ = renders(9, 1)
    front, rear = chair[-1, 0], chair[-1, 6]
    assert np.abs(front - rear).mean() > 0.02 and np.abs(front - chair[-1, 1]).mean() > 0.02


def test_each_class_renders_differently_from_front_and_rear():
    """A nearest-centroid classifier on 16 px renders beats chance (1/8) four times over, on views 0 and 6."""
    views, labels = renders(8, 12)
    train = np.tile([True] * 8 + [False] * 4, 8)
    for view in (0, 6):
        x = views[:, view].reshape(len(labels), -1)
        centroids = np.stack([x[train & (labels == c)].mean(0) for c in range(8)])
        predicted = np.linalg.norm(x[~train][:, None] - centroids[None], axis=2).argmin(1)
        assert (predicted == labels[~train]).mean() > 0.5


def test_nuisance_knobs_change_the_renders():
    """Without nuisance two objects of a class differ only by their surface samples; the knobs vary them."""
    base, _ = renders(2, 2, yaw_jitter=0.0, part_jitter=0.0, stretch=0.0, scale=0.0, light_jitter=0.0)
    same = max(np.abs(base[0] - base[1]).mean(), np.abs(base[2] - base[3]).mean())
    assert same < 0.03 and np.abs(base[0] - base[2]).mean() > 0.08
    jittered, _ = renders(2, 2)
    assert min(np.abs(jittered[0] - jittered[1]).mean(), np.abs(jittered[2] - jittered[3]).mean()) > 2 * same
    cluttered, _ = renders(2, 2, clutter=3.0)
    assert np.abs(cluttered - jittered).mean() > 0.03


# ------------------------------------------------------------------------------------------------------------
# The stand-in


def test_stand_in_is_deterministic(tmp_path):
    ds = SynthModelNet40()
    small = {**TINY, "objects": 8, "classes": 2}
    a, b = (ds.ensure_prepared(tmp_path / name, None, 16, generator=small) for name in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    png = "bathtub/test/bathtub_0004_v007.png"
    assert (tmp_path / "a" / png).read_bytes() == (tmp_path / "b" / png).read_bytes()
    c = ds.ensure_prepared(tmp_path / "c", None, 16, generator={**small, "seed": 1})
    assert (tmp_path / "a" / png).read_bytes() != (tmp_path / "c" / png).read_bytes()
    assert a.name == c.name and a.read_bytes() != c.read_bytes()


def test_stand_in_views_are_a_new_cache_from_the_same_renders(tmp_path):
    ds = SynthModelNet40()
    small = {**TINY, "objects": 8, "classes": 2}
    first = ds.ensure_prepared(tmp_path, None, 16, generator=small)
    stamp = (tmp_path / STAMP).read_text()
    three = ds.ensure_prepared(tmp_path, None, 16, generator={**small, "views": [0, 4, 8]})
    assert three.name == "modelnet40_views0-4-8_img16.pt" and first.is_file()
    assert (tmp_path / STAMP).read_text() == stamp
    assert TensorCache.load(three).meta["modalities"] == ["front", "view4", "view8"]
    with pytest.raises(FileExistsError, match="other parameters"):
        ds.ensure_prepared(tmp_path, None, 16, generator={**small, "noise": 0.1})
    with pytest.raises(KeyError, match="nope"):
        ds.ensure_prepared(tmp_path, None, 16, generator={**small, "nope": 1})
    with pytest.raises(ValueError, match="classes must be in"):
        ds.ensure_prepared(tmp_path / "x", None, 16, generator={**small, "classes": 41})


def test_cli_prepare_real_and_embedded(mn_copy, tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(
        "base: {data: {dataset: synth_modelnet40, image_size: 16,\n"
        "              generator: {objects: 8, classes: 2, render_size: 16, views: [0, 6]}}}\n"
        "profiles: {ci: {}, demo: {}, full: {}}\n")
    monkeypatch.chdir(project)
    assert main(["prepare", "--dataset", "modelnet40", "--root", str(mn_copy), "--image-size", "8"]) == 0
    assert (mn_copy / "cache" / "modelnet40_views0-6_img8.pt").is_file()
    assert main(["prepare", "--dataset", "synth_modelnet40", "--root", str(tmp_path / "synth")]) == 0
    path = capsys.readouterr().out.split()[-1]
    assert path.endswith("modelnet40_views0-6_img16.pt") and len(TensorCache.load(path)) == 8


def test_end_to_end_run(tmp_path):
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_modelnet40", "root": str(tmp_path / "data"),
                 "modalities": ["front", "rear"],
                 "image_size": 16, "val_fraction": 0.2, "generator": {**TINY, "objects": 24}},
        "model": {"encoders": {m: {"name": "resnet18", "width": 4} for m in ("front", "rear")},
                  "fusion": {"name": "sum"}},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "progress": "off", "device": "cpu",
                  "threads": 1},
    })
    rec = experiments.run(cfg, root=tmp_path / "results")
    assert rec.data["dataset"] == "synth_modelnet40" and rec.data["classes"] == list(CLASSES[:4])
    assert set(rec.final["test"]["unimodal"]["zero_feature"]) == {"front", "rear"}
