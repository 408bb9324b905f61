"""``synth_sarcasm`` and ``synth_twitter15``: embedded text + image stand-ins, written in the public TSV layout.

Seeded and procedural. Each item has a short sentence from a template grammar and a JPEG image. The sentence
carries a class-tied content word with probability ``text_present`` (else a class-free filler word); the image
carries a grating whose orientation encodes the class with probability ``image_present`` (else class-free
concentric rings). Orientations lie in [0, 90] degrees, so horizontal flips keep classes apart; the pattern
fills the image, so crops keep it. The text cue is present more often and is
easier to read than the noisy, cluttered image, so text dominates (as on the real sets, where text-only beats
image-only by about ten points) and the modalities are complementary. Everything that sets the difficulty is a
field of ``SynthTextImageConfig``. The real loaders (``mmlib.data.text_image``) prepare the written layout.
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
from .text_image import Sarcasm, Twitter15

GENERATOR_VERSION = 2  # bump when a change to the generator changes what it writes
STAMP = "synth_text_image.txt"
LAYOUTS = {"sarcasm": ("images", 2), "twitter15": ("twitter2015_images", 3)}  # image directory, classes

# class-tied content words per layout, one tuple per class (label order of the real dataset)
CLASS_WORDS = {
    "sarcasm": (("lovely", "helpful", "relaxing", "delicious", "peaceful", "cozy", "friendly", "sunny"),
                ("yeah", "obviously", "totally", "thrilled", "fabulous", "shocking", "sooo", "wow")),
    "twitter15": (("awful", "terrible", "angry", "disaster", "worst", "broken", "horrible", "sad"),
                  ("announced", "scheduled", "reported", "located", "released", "listed", "updated", "attended"),
                  ("amazing", "great", "happy", "love", "best", "wonderful", "excited", "brilliant")),
}
FILLER_WORDS = ("okay", "there", "again", "today", "somehow", "anyway", "probably", "still", "different", "long")
SUBJECTS = ("my boss", "the weather", "this game", "our team", "the traffic", "my phone", "the new album",
            "the meeting", "this city", "the show", "my flight", "the update", "monday", "the coffee")
VERBS = ("is", "was", "looks", "seems", "feels", "has been", "will be", "got")
OPENERS = ("well", "so", "honestly", "guess what", "breaking", "ok", "hmm")
TAILS = ("", "!", "...", "today", "as usual", "again", "#life", "#news", "@friend", "lol", "right now", "this week")
TEMPLATES = ("{subj} {verb} {cue} {tail}", "{opener} , {subj} {verb} {cue} {tail}",
             "{subj} {verb} {filler} {cue} {tail}", "{cue} ! {subj} {verb} {filler} {tail}")


@dataclass
class SynthTextImageConfig:
    items: int = 800  # total items (train + test)
    classes: int = 2  # must match the layout: sarcasm 2, twitter15 3
    layout: str = "sarcasm"  # sarcasm | twitter15
    test_fraction: float = 0.2
    seed: int = 0
    image_size: int = 32  # square JPEGs, pixels
    jpeg_quality: int = 90
    text_present: float = 0.7  # probability that a sentence carries its class's content word
    image_present: float = 0.6  # probability that an image carries its class's grating (else rings)
    image_contrast: float = 0.15  # grating amplitude (pixel values in [0, 1])
    image_noise: float = 0.2  # std of per-pixel noise
    image_clutter: int = 3  # class-free random rectangles drawn over each image

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.classes != LAYOUTS[self.layout][1]:
            raise ValueError(f"layout {self.layout} has {LAYOUTS[self.layout][1]} classes, got classes={self.classes}")
        for name in ("text_present", "image_present", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        n_test = int(round(self.test_fraction * self.items))
        if n_test < 1 or self.items - n_test < self.classes:
            raise ValueError(f"items={self.items} with test_fraction={self.test_fraction} leaves no test or too "
                             f"little train data")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


def sentence(cfg: SynthTextImageConfig, label: int, rng: np.random.Generator) -> str:
    words = CLASS_WORDS[cfg.layout]
    cue_words = words[label] if rng.random() < cfg.text_present else FILLER_WORDS
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(
        subj=SUBJECTS[rng.integers(len(SUBJECTS))], verb=VERBS[rng.integers(len(VERBS))],
        cue=cue_words[rng.integers(len(cue_words))], filler=FILLER_WORDS[rng.integers(len(FILLER_WORDS))],
        opener=OPENERS[rng.integers(len(OPENERS))], tail=TAILS[rng.integers(len(TAILS))])
    return " ".join(text.split())


def image(cfg: SynthTextImageConfig, label: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) uint8: background, clutter, a full-frame pattern, noise. The pattern is a straight grating
    whose orientation encodes the class when the cue is present, else concentric rings (no orientation)."""
    s = cfg.image_size
    yy, xx = np.mgrid[0:s, 0:s] / s
    freq, phase = rng.uniform(2.5, 4.0), rng.uniform(0, 2 * np.pi)  # cycles per image
    if rng.random() < cfg.image_present:
        angle = (np.pi / 2) / (cfg.classes - 1) * label + rng.normal(0, 0.05)  # 0 .. 90 degrees
        grating = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    else:
        cy, cx = rng.uniform(0.2, 0.8, size=2)
        grating = np.sin(2 * np.pi * freq * np.hypot(xx - cx, yy - cy) + phase)
    img = np.broadcast_to(rng.uniform(0.25, 0.75, size=3), (s, s, 3)).copy()
    for _ in range(cfg.image_clutter):  # class-free blocks in random colours
        x0, y0 = rng.integers(0, s - 2, size=2)
        w, h = rng.integers(2, max(3, s // 2), size=2)
        img[y0:y0 + h, x0:x0 + w] = 0.5 * img[y0:y0 + h, x0:x0 + w] + 0.5 * rng.uniform(0, 1, size=3)
    img += cfg.image_contrast * grating[..., None] * rng.uniform(0.6, 1.0, size=3)
    img += rng.normal(0, cfg.image_noise, size=(s, s, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _write_jpeg(path: Path, pixels: np.ndarray, quality: int) -> None:
    from PIL import Image

    atomic_write_bytes(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="JPEG", quality=quality))


def generate(root: str | Path, cfg: SynthTextImageConfig) -> Path:
    """Write the dataset under ``root`` (annotations/{train,test}.tsv, the image directory, the stamp)."""
    cfg.validate()
    root = Path(root)
    image_dir = root / LAYOUTS[cfg.layout][0]
    image_dir.mkdir(parents=True, exist_ok=True)
    # one random stream for the dataset's structure and one per modality: a modality's parameters change its
    # own media only, so the stand-in can be calibrated one modality at a time
    rng, text_rng, image_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    labels = [i % cfg.classes for i in range(cfg.items)]
    rng.shuffle(labels)
    first_id = 682716753374351360 if cfg.layout == "sarcasm" else 1860693  # ids shaped like the real sets'
    ids = [str(first_id + 7 * i) for i in range(cfg.items)]
    texts = []
    for image_id, label in zip(ids, labels):
        texts.append(sentence(cfg, label, text_rng))
        _write_jpeg(image_dir / f"{image_id}.jpg", image(cfg, label, image_rng), cfg.jpeg_quality)
    order = rng.permutation(cfg.items)
    n_test = int(round(cfg.test_fraction * cfg.items))
    for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
        # columns in another order than the loader names them, plus an ignored index column
        rows = "index\tLabel\tImageID\tString\n" + "".join(
            f"{k}\t{labels[i]}\t{ids[i]}\t{texts[i]}\n" for k, i in enumerate(sorted(idx)))
        atomic_write_bytes(root / "annotations" / f"{split}.tsv",
                           lambda tmp, rows=rows: tmp.write_text(rows, encoding="utf-8"))
    atomic_write_bytes(root / STAMP, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))  # last: media complete
    return root


class _Embedded:
    """Generated on first use (seeded), then prepared by the real loader. The tokenizer defaults to the
    word-level vocabulary, so results do not depend on what the local Hugging Face cache holds."""

    name = ""
    layout = ""
    embedded = True

    def generator_config(self, generator: dict | None) -> SynthTextImageConfig:
        defaults = {"layout": self.layout, "classes": LAYOUTS[self.layout][1]}
        cfg = from_dict(SynthTextImageConfig, {**defaults, **(generator or {})}, f"datasets.{self.name}")
        if cfg.layout != self.layout:
            raise ValueError(f"datasets.{self.name}.layout must be {self.layout!r}, got {cfg.layout!r}")
        cfg.validate()
        return cfg

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int = 224,
                        skip_bad: bool = False, generator: dict | None = None, tokenizer: str = "vocab",
                        **options) -> Path:
        cfg = self.generator_config(generator)
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, self.name)
        path = self.cache_path(root, recipe, image_size, tokenizer=tokenizer, **options)
        if not is_prepared(path):
            self.prepare(root, recipe, image_size, skip_bad, tokenizer=tokenizer, **options)
        return path


@register("datasets", "synth_sarcasm")
class SynthSarcasm(_Embedded, Sarcasm):
    name = "synth_sarcasm"
    layout = "sarcasm"


@register("datasets", "synth_twitter15")
class SynthTwitter15(_Embedded, Twitter15):
    name = "synth_twitter15"
    layout = "twitter15"
