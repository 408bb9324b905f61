"""Colored-and-gray MNIST (Kim et al. 2019, as the Greedy paper uses it) from MNIST's four IDX files.

Layout: ``<root>/train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (each also accepted gzipped, ``<name>.gz``, as the files are distributed). Every
file is checked: the IDX magic number (unsigned bytes, 3-D images / 1-D labels), the size the header's shape
asks for, equal image and label counts, labels 0..9, one image size for both splits.

The two modalities, built at prepare time by Kim et al.'s construction:
- ``color`` (m0): a monochromatic copy of the digit. Ten mean colours, one per digit (``MEAN_COLORS``); an
  image takes its own digit's mean colour with probability ``train_correlation`` (train) or
  ``test_correlation`` (test), else one of the ten drawn uniformly; Gaussian noise of variance
  ``color_variance`` (sigma^2) per RGB channel is added to it (clipped to [0, 1]) and the gray digit is
  painted in it (pixel = gray * colour). Kim et al.: every train image in its digit's colour, every test image
  in a mean colour drawn independently of the label, the same sigma^2 for both, sub-datasets sigma^2 =
  0.020..0.050 (defaults: 1.0 / 0.0 / 0.02);
- ``gray`` (m1): the MNIST image itself.

The cache ``<root>/cache/colored_mnist_<colouring>.pt`` (the colouring's parameters name it and are part of
its content) holds ``color`` uint8 (N, 1, 3, 28, 28) and ``gray`` uint8 (N, 1, 1, 28, 28) as one-frame clips
(with ``<m>_count``, like every image modality), ``color_class`` (the mean colour each image was painted
with), label, split and the train split's per-channel statistics in ``meta["normalize"]``. MNIST keeps its
native 28 x 28 (``data.image_size`` does not apply). The validation split is carved from train by the run
(strongly correlated colours, as train's); ``val_from_test`` marks a stratified share of the test images as
validation instead, the weakly correlated held-out set the Greedy paper selects on (then run with
``data.val_fraction: 0``). The colouring's parameters come from ``data.generator`` (``ColoringConfig``).
"""
from __future__ import annotations

import dataclasses
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import from_dict
from ..registry import register
from .cache import SPLIT_CODES, TensorCache, atomic_write_bytes, require_prepared
from .layout import LayoutError

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
UNSIGNED_BYTE = 0x08  # the IDX type code of unsigned bytes (the third byte of the magic number)
NUM_CLASSES = 10
# the ten mean colours (RGB in [0, 1]), digit k -> MEAN_COLORS[k]: pairwise at least 0.5 apart
MEAN_COLORS = np.array([
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0), (1.0, 0.5, 0.0), (0.5, 0.0, 1.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5),
])


@dataclass
class ColoringConfig:
    """Kim et al.'s colouring: ``data.generator`` of ``colored_mnist`` (and part of its stand-in's)."""

    color_variance: float = 0.02  # sigma^2 of the Gaussian colour noise per RGB channel (colours in [0, 1])
    train_correlation: float = 1.0  # P(a train image takes its digit's mean colour); else one of ten
    test_correlation: float = 0.0  # the same for test images (Kim et al.: 0, colour independent of label)
    val_from_test: float = 0.0  # share of test images (stratified) marked val: a weakly correlated val split
    color_seed: int = 0

    def check(self) -> None:
        if self.color_variance < 0:
            raise ValueError(f"color_variance must be >= 0, got {self.color_variance}")
        for name in ("train_correlation", "test_correlation"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.val_from_test < 1:
            raise ValueError(f"val_from_test must be in [0, 1), got {self.val_from_test}")

    def coloring(self) -> "ColoringConfig":
        """The colouring fields alone (a subclass's other fields describe how its IDX files were written)."""
        return ColoringConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ColoringConfig)})

    def tag(self) -> str:
        return (f"var{self.color_variance:g}_corr{self.train_correlation:g}-{self.test_correlation:g}_"
                f"val{self.val_from_test:g}_seed{self.color_seed}")


# ------------------------------------------------------------------------------------------------------------
# IDX files


def find_idx(root: Path, name: str) -> Path:
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    raise LayoutError(f"{root / name}: IDX file not found (nor {name}.gz)")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (gzipped when its name ends in .gz)."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise LayoutError(f"{path}: unreadable ({err})") from err
    expected = (UNSIGNED_BYTE << 8) | ndim
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != expected:
        found = "a file shorter than its magic number" if magic is None else f"{magic:#010x}"
        raise LayoutError(f"{path}: magic number {found}, expected {expected:#010x} (IDX unsigned bytes, "
                          f"{ndim}-D)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise LayoutError(f"{path}: truncated header ({len(data)} bytes, the {ndim}-D header needs {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = header + int(np.prod(shape))
    if len(data) != size:
        what = "truncated" if len(data) < size else "has trailing bytes"
        raise LayoutError(f"{path}: {what}: {len(data)} bytes, its header's shape {shape} needs {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as an IDX file, gzipped when the name ends in .gz (no timestamp: the same bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = struct.pack(f">I{array.ndim}I", (UNSIGNED_BYTE << 8) | array.ndim, *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        blob = gzip.compress(blob, mtime=0)
    atomic_write_bytes(path, lambda tmp: tmp.write_bytes(blob))


def read_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W), labels uint8 (N,)) of one split, validated."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    image_file, label_file = (find_idx(root, name) for name in IDX_FILES[split])
    images, labels = read_idx(image_file, 3), read_idx(label_file, 1)
    if len(images) != len(labels):
        raise LayoutError(f"{image_file}: {len(images)} images, but {label_file.name} holds "
                          f"{len(labels)} labels")
    if len(images) == 0 or min(images.shape[1:]) == 0:
        raise LayoutError(f"{image_file}: no images (shape {images.shape})")
    if labels.max() >= NUM_CLASSES:
        raise LayoutError(f"{label_file}: label {int(labels.max())} out of 0..{NUM_CLASSES - 1}")
    return images, labels


# ------------------------------------------------------------------------------------------------------------
# Colouring


def draw_colors(labels: np.ndarray, correlation: float, variance: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mean-colour index (N,), colour (N, 3) in [0, 1]): the digit's own mean colour with probability
    ``correlation``, else one of the ten uniformly; plus N(0, variance) per channel."""
    own = rng.random(len(labels)) < correlation
    chosen = np.where(own, labels, rng.integers(0, NUM_CLASSES, size=len(labels)))
    noise = rng.normal(0.0, np.sqrt(variance), size=(len(labels), 3))
    return chosen, np.clip(MEAN_COLORS[chosen] + noise, 0.0, 1.0)


def paint(gray: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 digits painted in (N, 3) colours -> (N, 3, H, W) uint8 monochromatic images."""
    painted = gray[:, None].astype(np.float32) * colors[:, :, None, None].astype(np.float32)
    return np.rint(painted).astype(np.uint8)


def stratified_share(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask choosing round(share * n_c) items of each class c."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        mask[rng.choice(members, size=int(round(share * len(members))), replace=False)] = True
    return mask


def channel_statistics(x: torch.Tensor) -> list[list[float]]:
    """[[mean per channel], [std per channel]] of uint8 clips (N, T, C, H, W), in [0, 1]."""
    x = x.flatten(0, 1).float().div_(255.0)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return [[round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]]


def build_cache(root: str | Path, coloring: ColoringConfig, dataset: str = "colored_mnist") -> Path:
    """Read and validate the four IDX files, colour the digits, write the tensor cache. Returns its path."""
    coloring.check()
    root = Path(root)
    (train_x, train_y), (test_x, test_y) = read_split(root, "train"), read_split(root, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise LayoutError(f"{root}: train images are {train_x.shape[1:]} but test images {test_x.shape[1:]}")
    # one stream per split (a split's colours do not depend on the other's size) and one for the val share
    train_rng, test_rng, val_rng = (np.random.default_rng(s)
                                    for s in np.random.SeedSequence(coloring.color_seed).spawn(3))
    train_k, train_c = draw_colors(train_y, coloring.train_correlation, coloring.color_variance, train_rng)
    test_k, test_c = draw_colors(test_y, coloring.test_correlation, coloring.color_variance, test_rng)
    gray = np.concatenate([train_x, test_x])
    split = np.concatenate([np.full(len(train_y), SPLIT_CODES["train"]),
                            np.full(len(test_y), SPLIT_CODES["test"])])
    split[len(train_y):][stratified_share(test_y, coloring.val_from_test, val_rng)] = SPLIT_CODES["val"]
    color = torch.from_numpy(paint(gray, np.concatenate([train_c, test_c])))[:, None]  # (N, 1, 3, H, W)
    gray_t = torch.from_numpy(np.ascontiguousarray(gray))[:, None, None]  # (N, 1, 1, H, W)
    ones = torch.ones(len(gray), dtype=torch.int16)
    n_train = len(train_y)
    cache = TensorCache(
        tensors={"color": color, "color_count": ones, "gray": gray_t, "gray_count": ones.clone(),
                 "color_class": torch.from_numpy(np.concatenate([train_k, test_k]).astype(np.int64)),
                 "label": torch.from_numpy(np.concatenate([train_y, test_y]).astype(np.int64)),
                 "split": torch.from_numpy(split.astype(np.int8))},
        meta={"dataset": dataset, "classes": [str(k) for k in range(NUM_CLASSES)],
              "clips": [f"train/{i:05d}" for i in range(n_train)]
              + [f"test/{i:05d}" for i in range(len(test_y))],
              "modalities": ["color", "gray"], "image_size": int(gray.shape[1]), "audio_recipe": None,
              "coloring": dataclasses.asdict(coloring), "mean_colors": MEAN_COLORS.tolist(),
              "normalize": {"color": channel_statistics(color[:n_train]),
                            "gray": channel_statistics(gray_t[:n_train])}},
    )
    path = cache_file(root, coloring)
    cache.save(path)
    return path


def cache_file(root: str | Path, coloring: ColoringConfig) -> Path:
    return Path(root) / "cache" / f"colored_mnist_{coloring.tag()}.pt"


@register("datasets", "colored_mnist")
class ColoredMNIST:
    """Colored-and-gray MNIST, prepared from MNIST's IDX files under ``data.root``; ``data.generator`` holds
    the colouring (``ColoringConfig``)."""

    name = "colored_mnist"
    labels = tuple(str(k) for k in range(NUM_CLASSES))
    modalities = {"color": 3, "gray": 1}  # input channels per modality
    embedded = False

    def coloring(self, generator: dict | None) -> ColoringConfig:
        cfg = from_dict(ColoringConfig, generator or {}, f"data.generator ({self.name})")
        cfg.check()
        return cfg

    def prepare(self, root: str | Path, recipe: str | None = None, image_size: int | None = None,
                skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        return build_cache(root, self.coloring(generator), dataset=self.name)

    def cache_path(self, root: str | Path, recipe: str | None = None, image_size: int | None = None,
                   generator: dict | None = None, **_) -> Path:
        return cache_file(root, self.coloring(generator))

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int | None = None,
                        skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        return require_prepared(self.cache_path(root, generator=generator), self.name, root)
