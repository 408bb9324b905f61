"""``synth_colored_mnist``: the embedded Colored-and-gray MNIST stand-in, written as MNIST's four IDX files.

The digits come from scikit-learn's ``load_digits`` (1,797 8 x 8 handwritten digits that ship inside the
wheel; no download). A stratified share of them (``test_sources``) is reserved for the test images, so no test
image is an augmented copy of a train digit. Each image is one source digit resampled (bilinear) into MNIST's
frame (the digit in a 20 x 20 box centred in 28 x 28), under a seeded random affine map (rotation, scale,
shift) and a stroke-width jitter (a soft threshold at a random level: lower thickens the strokes, higher thins
them). The four IDX files are then prepared by the real path (``mmlib.data.colored_mnist``), which colours
them by Kim et al.'s construction; the colouring fields (``ColoringConfig``) sit in the same
``data.generator`` block but do not change the IDX files, so only the image fields enter the stamp (a new
colouring prepares a new cache from the same files).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .colored_mnist import IDX_FILES, ColoredMNIST, ColoringConfig, stratified_share, write_idx

GENERATOR_VERSION = 1  # bump when a change to the generator changes the files it writes
STAMP = "synth_colored_mnist.txt"
SIZE, BOX = 28, 20  # MNIST's frame and the box its digits are fitted into
NUM_DIGITS = 10
COLORING_FIELDS = tuple(f.name for f in dataclasses.fields(ColoringConfig))


@dataclass
class SynthColoredMNISTConfig(ColoringConfig):
    train_images: int = 3000
    test_images: int = 1000
    test_sources: float = 0.3  # share of the 1,797 source digits (per class) that only test images use
    seed: int = 0
    rotation: float = 12.0  # |rotation| <= this many degrees
    scale: float = 0.12  # scale factor in 1 +- this
    shift: float = 2.0  # |shift| <= this many pixels, per axis
    stroke: float = 0.12  # soft-threshold level in 0.4 +- this (lower: thicker strokes)
    edge: float = 0.08  # soft-threshold width (smaller: sharper stroke edges)

    def fingerprint(self) -> str:
        """The image fields only (the colouring is applied at prepare time)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in COLORING_FIELDS}
        blob = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        super().check()
        if self.train_images < NUM_DIGITS or self.test_images < NUM_DIGITS:
            raise ValueError(f"synth_colored_mnist: train_images and test_images must be >= {NUM_DIGITS}, "
                             f"got {self.train_images}, {self.test_images}")
        if not 0 < self.test_sources < 1:
            raise ValueError(f"synth_colored_mnist.test_sources must be in (0, 1), got {self.test_sources}")
        if not 0 < self.scale < 1 or self.rotation < 0 or self.shift < 0 or self.edge <= 0 or \
                not 0 <= self.stroke < 0.4:
            raise ValueError("synth_colored_mnist: need 0 < scale < 1, rotation >= 0, shift >= 0, edge > 0, "
                             f"0 <= stroke < 0.4; got {self.scale}, {self.rotation}, {self.shift}, "
                             f"{self.edge}, {self.stroke}")



def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (images float (1797, 8, 8) in [0, 1], labels int (1797,))."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target.astype(np.int64)


def render(sources: np.ndarray, cfg: SynthColoredMNISTConfig, rng: np.random.Generator) -> np.ndarray:
    """(N, 8, 8) digits in [0, 1] -> (N, 28, 28) uint8: each under its own random affine map and stroke width,
    bilinearly sampled from the source (zero outside it)."""
    n, src = len(sources), sources.shape[1]
    angle = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation, n))
    scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale, n)
    shift = rng.uniform(-cfg.shift, cfg.shift, (n, 2))
    level = rng.uniform(0.4 - cfg.stroke, 0.4 + cfg.stroke, n)
    # output pixel centres about the frame's centre, minus the shift, rotated back, scaled into source pixels
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5 - SIZE / 2
    px = xs[None] - shift[:, 0, None, None]
    py = ys[None] - shift[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    unit = (src / BOX) / scale[:, None, None]
    sx = (cos * px + sin * py) * unit + src / 2 - 0.5
    sy = (-sin * px + cos * py) * unit + src / 2 - 0.5
    padded = np.pad(sources, ((0, 0), (1, 1), (1, 1)))  # zero border: samples outside the digit fade to 0
    sx, sy = np.clip(sx + 1, 0, src + 1 - 1e-6), np.clip(sy + 1, 0, src + 1 - 1e-6)
    x0, y0 = np.minimum(sx.astype(np.int64), src), np.minimum(sy.astype(np.int64), src)
    fx, fy = sx - x0, sy - y0
    i = np.arange(n)[:, None, None]
    value = (padded[i, y0, x0] * (1 - fx) * (1 - fy) + padded[i, y0, x0 + 1] * fx * (1 - fy)
             + padded[i, y0 + 1, x0] * (1 - fx) * fy + padded[i, y0 + 1, x0 + 1] * fx * fy)
    ink = 1 / (1 + np.exp(-(value - level[:, None, None]) / cfg.edge))
    ink = (ink - 1 / (1 + np.exp(level / cfg.edge))[:, None, None]).clip(min=0)  # background exactly 0
    ink /= ink.max(axis=(1, 2), keepdims=True).clip(min=1e-6)
    return np.rint(ink * 255).astype(np.uint8)


def generate(root: str | Path, cfg: SynthColoredMNISTConfig) -> Path:
    """Write the four IDX files under ``root``, then the stamp."""
    cfg.check()
    root = Path(root)
    # one stream for which source digits each split draws and one per split for the augmentation
    rng, train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    digits, labels = source_digits()
    reserved = stratified_share(labels, cfg.test_sources, rng)
    for split, pool, count, split_rng in (("train", np.flatnonzero(~reserved), cfg.train_images, train_rng),
                                          ("test", np.flatnonzero(reserved), cfg.test_images, test_rng)):
        chosen = np.resize(rng.permutation(pool), count)  # each source used about count / len(pool) times
        images, targets = render(digits[chosen], cfg, split_rng), labels[chosen].astype(np.uint8)
        image_name, label_name = IDX_FILES[split]
        write_idx(root / image_name, images)
        write_idx(root / label_name, targets)
    # written last: the files are complete
    atomic_write_bytes(root / STAMP, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))
    return root


@register("datasets", "synth_colored_mnist")
class SynthColoredMNIST(ColoredMNIST):
    """Embedded Colored-and-gray MNIST stand-in: IDX files generated on first use, then the real path."""

    name = "synth_colored_mnist"
    embedded = True

    def generator_config(self, generator: dict | None) -> SynthColoredMNISTConfig:
        cfg = from_dict(SynthColoredMNISTConfig, generator or {}, f"datasets.{self.name}")
        cfg.check()
        return cfg

    def coloring(self, generator: dict | None) -> ColoringConfig:
        return self.generator_config(generator).coloring()

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int | None = None,
                        skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        cfg = self.generator_config(generator)
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, self.name)
        path = self.cache_path(root, generator=generator)
        if not is_prepared(path):
            self.prepare(root, generator=generator)
        return path
