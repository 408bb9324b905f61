"""Colored-and-gray MNIST: the IDX reader, Kim et al.'s colouring, the cache, and the embedded stand-in."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from mmlib import experiments
from mmlib.__main__ import main
from mmlib.config import ExperimentConfig, from_dict
from mmlib.data.cache import SPLIT_CODES, TensorCache
from mmlib.data.colored_mnist import (IDX_FILES, MEAN_COLORS, ColoringConfig, build_cache, read_idx,
                                      read_split, write_idx)
from mmlib.data.layout import LayoutError
from mmlib.data.synth_colored_mnist import STAMP, SynthColoredMNIST, SynthColoredMNISTConfig, generate
from mmlib.registry import get

TINY = {"train_images": 60, "test_images": 30}


@pytest.fixture(scope="module")
def mnist_layout(tmp_path_factory):
    """MNIST's four IDX files (600 train, 300 test digits), not marked as generated."""
    root = tmp_path_factory.mktemp("mnist") / "MNIST"
    generate(root, SynthColoredMNISTConfig(train_images=600, test_images=300))
    (root / STAMP).unlink()
    return root


@pytest.fixture
def mnist_copy(mnist_layout, tmp_path):
    dst = tmp_path / "MNIST"
    shutil.copytree(mnist_layout, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def estimated_colors(cache: TensorCache) -> np.ndarray:
    """Each image's colour read from its pixels: least squares of color = gray * c, per channel."""
    color = cache.tensors["color"][:, 0].double().numpy()
    gray = cache.tensors["gray"][:, 0].double().numpy()
    return (color * gray).sum((2, 3)) / (gray * gray).sum((2, 3))


def nearest_mean_accuracy(cache: TensorCache, split: str) -> float:
    idx = cache.indices(split).numpy()
    colors = estimated_colors(cache)[idx]
    nearest = np.linalg.norm(colors[:, None] - MEAN_COLORS[None], axis=2).argmin(1)
    return float((nearest == cache.tensors["label"].numpy()[idx]).mean())


# ------------------------------------------------------------------------------------------------------------
# IDX files


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    assert np.array_equal(read_idx(tmp_path / name, 3), images)
    labels = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / "labels", labels)
    assert np.array_equal(read_idx(tmp_path / "labels", 1), labels)
    head = (tmp_path / name).read_bytes()
    head = gzip.decompress(head) if name.endswith(".gz") else head
    assert head[:16] == bytes.fromhex("00000803" "00000005" "0000001c" "0000001c")  # MNIST's header


def test_gzipped_files_are_read_like_plain_ones(mnist_copy):
    plain = read_split(mnist_copy, "test")
    for name in IDX_FILES["test"]:
        (mnist_copy / f"{name}.gz").write_bytes(gzip.compress((mnist_copy / name).read_bytes()))
        (mnist_copy / name).unlink()
    gz = read_split(mnist_copy, "test")
    assert all(np.array_equal(a, b) for a, b in zip(plain, gz))


def test_wrong_magic_names_the_file(mnist_copy):
    images, labels = IDX_FILES["train"]
    shutil.copy(mnist_copy / labels, mnist_copy / images)  # a label file where the images belong
    with pytest.raises(LayoutError, match=rf"{images}: magic number 0x00000801, expected 0x00000803"):
        read_split(mnist_copy, "train")


def test_truncated_file(mnist_copy):
    path = mnist_copy / IDX_FILES["test"][0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(
            LayoutError, match=r"t10k-images-idx3-ubyte: truncated: .*\(300, 28, 28\) needs 235216"):
        read_split(mnist_copy, "test")


def test_truncated_header_and_empty_file(mnist_copy):
    path = mnist_copy / IDX_FILES["test"][1]
    path.write_bytes(bytes.fromhex("00000801"))
    with pytest.raises(LayoutError, match="t10k-labels-idx1-ubyte: truncated header"):
        read_split(mnist_copy, "test")
    path.write_bytes(b"")
    with pytest.raises(LayoutError, match="shorter than its magic number"):
        read_split(mnist_copy, "test")


def test_count_mismatch(mnist_copy):
    write_idx(mnist_copy / IDX_FILES["train"][1], np.zeros(599, dtype=np.uint8))
    with pytest.raises(LayoutError, match="train-images-idx3-ubyte: 600 images, but train-labels-idx1-ubyte "
                                          "holds 599 labels"):
        read_split(mnist_copy, "train")


def test_missing_file_and_directory(mnist_copy, tmp_path):
    (mnist_copy / IDX_FILES["test"][1]).unlink()
    with pytest.raises(LayoutError, match=r"t10k-labels-idx1-ubyte: IDX file not found \(nor "
                                          r"t10k-labels-idx1-ubyte\.gz\)"):
        build_cache(mnist_copy, ColoringConfig())
    with pytest.raises(LayoutError, match="dataset directory not found"):
        read_split(tmp_path / "nope", "train")


def test_bad_label_and_corrupt_gzip(mnist_copy):
    write_idx(mnist_copy / IDX_FILES["train"][1], np.full(600, 10, dtype=np.uint8))
    with pytest.raises(LayoutError, match=r"train-labels-idx1-ubyte: label 10 out of 0\.\.9"):
        read_split(mnist_copy, "train")
    name = IDX_FILES["test"][0]
    (mnist_copy / name).unlink()
    (mnist_copy / f"{name}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(LayoutError, match=rf"{name}\.gz: unreadable"):
        read_split(mnist_copy, "test")


def test_different_image_sizes_in_the_splits(mnist_copy):
    write_idx(mnist_copy / IDX_FILES["test"][0], np.zeros((300, 20, 20), dtype=np.uint8))
    with pytest.raises(LayoutError, match=r"train images are \(28, 28\) but test images \(20, 20\)"):
        build_cache(mnist_copy, ColoringConfig())


# ------------------------------------------------------------------------------------------------------------
# The colouring


def test_cache_shapes_dtypes_and_gray_is_the_digit(mnist_layout):
    cache = TensorCache.load(build_cache(mnist_layout, ColoringConfig()))
    t = cache.tensors
    assert t["color"].shape == (900, 1, 3, 28, 28) and t["gray"].shape == (900, 1, 1, 28, 28)
    assert t["color"].dtype == t["gray"].dtype == torch.uint8
    assert t["color_count"].tolist() == [1] * 900 and t["gray_count"].tolist() == [1] * 900
    assert t["label"].dtype == torch.int64 and t["split"].dtype == torch.int8
    assert (t["split"] == SPLIT_CODES["train"]).sum() == 600
    assert (t["split"] == SPLIT_CODES["test"]).sum() == 300
    (train_x, train_y), (test_x, test_y) = read_split(mnist_layout, "train"), read_split(mnist_layout, "test")
    assert np.array_equal(t["gray"][:, 0, 0].numpy(), np.concatenate([train_x, test_x]))
    assert np.array_equal(t["label"].numpy(), np.concatenate([train_y, test_y]))
    assert cache.meta["classes"] == [str(k) for k in range(10)] and cache.meta["image_size"] == 28
    assert set(cache.meta["normalize"]) == {"color", "gray"}
    # the monochromatic image is the digit painted in one colour: zero where the digit is
    assert not t["color"][t["gray"].expand_as(t["color"]) == 0].any()


def test_train_colour_predicts_the_digit_and_test_colour_does_not(mnist_layout):
    cache = TensorCache.load(build_cache(mnist_layout, ColoringConfig(color_variance=0.005)))
    assert nearest_mean_accuracy(cache, "train") > 0.9
    assert nearest_mean_accuracy(cache, "test") < 0.25  # chance: 0.1
    correlated = TensorCache.load(build_cache(mnist_layout, ColoringConfig(color_variance=0.005,
                                                                           test_correlation=1.0)))
    assert nearest_mean_accuracy(correlated, "test") > 0.9


def test_colour_noise_has_the_configured_variance(mnist_layout):
    """Channels of mean colour 0.5 (mostly unclipped by the noise) spread with std sqrt(color_variance)."""
    variance = 0.01
    cache = TensorCache.load(build_cache(mnist_layout, ColoringConfig(color_variance=variance)))
    mean = MEAN_COLORS[cache.tensors["color_class"].numpy()]
    residual = (estimated_colors(cache) - mean)[mean == 0.5]
    assert len(residual) > 100
    assert residual.std() == pytest.approx(np.sqrt(variance), rel=0.15) and abs(residual.mean()) < 0.02


def test_correlation_is_the_share_of_own_colours(mnist_layout):
    cache = TensorCache.load(build_cache(mnist_layout, ColoringConfig(train_correlation=0.5)))
    train = cache.indices("train")
    own = (cache.tensors["color_class"][train] == cache.tensors["label"][train]).float().mean()
    assert float(own) == pytest.approx(0.5 + 0.5 / 10, abs=0.06)  # own colour, or one of ten by chance


def test_val_from_test_is_a_stratified_weakly_correlated_share(mnist_layout):
    cache = TensorCache.load(build_cache(mnist_layout, ColoringConfig(val_from_test=0.5)))
    test_labels = read_split(mnist_layout, "test")[1]
    per_class = [round(0.5 * int((test_labels == c).sum())) for c in range(10)]
    val_labels = cache.tensors["label"][cache.indices("val")]
    assert torch.bincount(val_labels, minlength=10).tolist() == per_class
    assert len(cache.indices("test")) == 300 - sum(per_class) and len(cache.indices("train")) == 600
    kept = cache.carve_validation(0.0, seed=0)  # data.val_fraction 0 keeps it
    assert torch.equal(kept.indices("val"), cache.indices("val"))
    assert nearest_mean_accuracy(cache, "val") < 0.3


def test_colouring_names_the_cache_and_bad_values_are_refused(mnist_layout):
    ds = get("datasets", "colored_mnist")()
    a, b = ds.cache_path(mnist_layout), ds.cache_path(mnist_layout, generator={"color_variance": 0.05})
    assert a != b and "var0.05" in b.name
    with pytest.raises(ValueError, match="train_correlation must be in"):
        ds.cache_path(mnist_layout, generator={"train_correlation": 1.5})
    with pytest.raises(KeyError, match="train_images"):  # a stand-in's field is not the real dataset's
        ds.cache_path(mnist_layout, generator={"train_images": 10})


def test_real_dataset_asks_for_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmlib prepare --dataset colored_mnist"):
        get("datasets", "colored_mnist")().ensure_prepared(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# The stand-in


def test_stand_in_is_deterministic(tmp_path):
    ds = SynthColoredMNIST()
    a, b = (ds.ensure_prepared(tmp_path / name, generator=TINY) for name in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    for name in (*IDX_FILES["train"], *IDX_FILES["test"]):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = ds.ensure_prepared(tmp_path / "c", generator={**TINY, "seed": 1})
    assert not torch.equal(TensorCache.load(a).tensors["gray"], TensorCache.load(c).tensors["gray"])


def test_stand_in_test_digits_come_from_other_sources(tmp_path):
    """No test image is a copy of a train image (their sources are disjoint), and augmentation varies."""
    generate(tmp_path, SynthColoredMNISTConfig(**TINY))
    train = read_split(tmp_path, "train")[0].reshape(60, -1)
    test = read_split(tmp_path, "test")[0].reshape(30, -1)
    assert len(np.unique(train, axis=0)) == 60
    assert not (train[:, None] == test[None]).all(-1).any()
    assert set(read_split(tmp_path, "train")[1].tolist()) == set(range(10))


def test_stand_in_colouring_is_a_new_cache_from_the_same_files(tmp_path):
    ds = SynthColoredMNIST()
    first = ds.ensure_prepared(tmp_path, generator=TINY)
    stamp = (tmp_path / STAMP).read_text()
    files = (tmp_path / IDX_FILES["train"][0]).read_bytes()
    second = ds.ensure_prepared(tmp_path, generator={**TINY, "color_variance": 0.05, "test_correlation": 0.3})
    assert second != first and first.is_file() and second.is_file()
    assert (tmp_path / STAMP).read_text() == stamp
    assert (tmp_path / IDX_FILES["train"][0]).read_bytes() == files
    assert TensorCache.load(second).meta["coloring"]["test_correlation"] == 0.3
    with pytest.raises(FileExistsError, match="other parameters"):
        ds.ensure_prepared(tmp_path, generator={**TINY, "rotation": 3.0})
    with pytest.raises(KeyError, match="nope"):
        ds.ensure_prepared(tmp_path, generator={**TINY, "nope": 1})


def test_cli_prepare_real_and_embedded(mnist_copy, tmp_path, monkeypatch, capsys):
    """``prepare --dataset NAME``: the real dataset on its files; the stand-in with the profile's generator
    when the profile's dataset is it, else with its defaults (never another dataset's generator)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(
        "base: {data: {dataset: synth_colored_mnist, generator: {train_images: 40, test_images: 20}}}\n"
        "profiles: {ci: {}, demo: {}, full: {}}\n")
    monkeypatch.chdir(project)
    assert main(["prepare", "--dataset", "colored_mnist", "--root", str(mnist_copy)]) == 0
    assert (mnist_copy / "cache" / "colored_mnist_var0.02_corr1-0_val0_seed0.pt").is_file()
    assert main(["prepare", "--dataset", "synth_colored_mnist", "--root", str(tmp_path / "synth")]) == 0
    path = capsys.readouterr().out.split()[-1]
    assert len(TensorCache.load(path)) == 60


def test_end_to_end_run(tmp_path):
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_colored_mnist", "root": str(tmp_path / "data"),
                 "modalities": ["color", "gray"],
                 "augment": False, "val_fraction": 0.2, "generator": TINY},
        "model": {"encoders": {m: {"name": "resnet18", "width": 4} for m in ("color", "gray")},
                  "fusion": {"name": "sum"}},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 32, "progress": "off", "device": "cpu",
                  "threads": 1},
    })
    rec = experiments.run(cfg, root=tmp_path / "results")
    assert rec.data["dataset"] == "synth_colored_mnist" and rec.data["embedded"]
    assert set(rec.final["test"]["unimodal"]["zero_feature"]) == {"color", "gray"}
