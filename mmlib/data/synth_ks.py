"""``synth_ks``: the embedded Kinetics-Sounds stand-in, written in the public KS layout (my_train.txt, my_test.txt,
classes.txt, audio/<clip>.wav, visual/Image-01-FPS/<clip>/frame_00001.jpg ... at 1 fps).

Seeded and procedural. A class is a pair of codes (a, b) on two small grids (8 x 4 = 32 pairs for 31 classes), and
each modality spells the pair out with its own two attributes:
- audio: a chord of a low and a high tone; the low tone's pitch is a on one grid, the high tone's pitch b on
  another (grids in Hz, ``audio_step_hz`` apart: two or more spectrogram bins of every recipe);
- visual: a drifting grating on a grey background; its colour (the channels it modulates, plus a faint cast)
  has hue a (hues around the colour circle), its orientation is b (orientations in [0, 90] degrees: a horizontal
  flip maps theta to 180 - theta, which no other class uses; hue and orientation survive random resized crops).
Each cue is present with its own probability and otherwise replaced by a class-free distractor whose attributes
lie half-way between the grid's values. The audio cue is present more often and is learnt faster, so audio
dominates and naive joint training under-trains the visual encoder. Clips last about ``seconds`` (3 s or more, so 3+
frames). Everything that sets the difficulty is a field of ``SynthKSConfig``; the real loader
(``mmlib.data.kinetics_sounds``) prepares the written layout.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io.wavfile

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .kinetics_sounds import AUDIO_DIR, CLASSES_FILE, FRAME_DIR, LABELS, SPLIT_FILES, KineticsSounds

GENERATOR_VERSION = 3  # bump when a change to the generator changes the media it writes
STAMP = "synth_ks.txt"
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
LOW_TONE_HZ = 300.0  # the low tone's first grid value


@dataclass
class SynthKSConfig:
    clips: int = 900  # total clips (train + test)
    classes: int = 31  # the first ``classes`` Kinetics-Sounds names
    test_fraction: float = 0.2
    seed: int = 0
    seconds: float = 3.5  # mean clip length; each lasts seconds * U(0.85, 1.15), with max(3, int(length)) frames
    sample_rate: int = 16000
    frame_size: int = 64  # square JPEG frames, pixels
    jpeg_quality: int = 90
    audio_present: float = 0.9  # probability that a clip carries its class's chord
    audio_snr_db: float = 20.0  # chord power over noise power
    audio_step_hz: float = 130.0  # spacing of the pitch grids (43 Hz is one bin of the 129-bin recipes)
    visual_present: float = 0.75  # probability that a clip carries its class's hue and orientation
    visual_contrast: float = 0.45  # grating amplitude (pixel values in [0, 1]); the hue's colour cast is half of it
    visual_noise: float = 0.05  # std of per-pixel noise

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        if not 2 <= self.classes <= len(LABELS):
            raise ValueError(f"synth_ks.classes must be in [2, {len(LABELS)}], got {self.classes}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"synth_ks.test_fraction must be in (0, 1), got {self.test_fraction}")
        n_test = int(round(self.test_fraction * self.clips))
        if n_test < 1 or self.clips - n_test < self.classes:
            raise ValueError(f"synth_ks: clips={self.clips} with test_fraction={self.test_fraction} leaves no test "
                             f"clips or fewer train clips than classes")
        if self.seconds * 0.85 < 1.0 or self.frame_size < 8 or self.sample_rate < 8000:
            raise ValueError("synth_ks: seconds must be >= 1.2, frame_size >= 8 and sample_rate >= 8000")
        for name in ("audio_present", "visual_present"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"synth_ks.{name} must be in [0, 1], got {getattr(self, name)}")
        low, high = code_grid(self.classes)
        if LOW_TONE_HZ + self.audio_step_hz * (low + high + 1) > 0.45 * min(self.sample_rate, 11025):
            raise ValueError(f"synth_ks.audio_step_hz={self.audio_step_hz} puts the high tone above the band of "
                             f"the 11.025 kHz recipes")


def code_grid(classes: int) -> tuple[int, int]:
    """Sizes (n_a, n_b) of the two code grids: class k is the pair (k % n_a, k // n_a)."""
    n_a = math.ceil(math.sqrt(2 * classes))
    return n_a, max(2, math.ceil(classes / n_a))


def _codes(present_prob: float, label: int, classes: int, rng: np.random.Generator) -> tuple[float, float]:
    """The class's pair of grid positions, or a class-free distractor half-way between grid values."""
    n_a, n_b = code_grid(classes)
    if rng.random() < present_prob:
        return float(label % n_a), float(label // n_a)
    return rng.integers(0, n_a - 1) + 0.5, rng.integers(0, n_b - 1) + 0.5


def clip_ids(n: int, rng: np.random.Generator) -> list[str]:
    """Unique YouTube-style ids ``<11 chars>_<start>_<end>`` (as in the public split files)."""
    ids: list[str] = []
    seen = set()
    while len(ids) < n:
        ytid = "".join(ID_CHARS[i] for i in rng.integers(0, len(ID_CHARS), size=11))
        start = int(rng.integers(0, 290))
        name = f"{ytid}_{start}_{start + 10}"
        if name not in seen:
            seen.add(name)
            ids.append(name)
    return ids


def _audio(cfg: SynthKSConfig, label: int, rng: np.random.Generator, seconds: float) -> np.ndarray:
    n = int(cfg.sample_rate * seconds)
    t = np.arange(n) / cfg.sample_rate
    a, b = _codes(cfg.audio_present, label, cfg.classes, rng)
    n_a, _ = code_grid(cfg.classes)
    step = cfg.audio_step_hz
    pitches = np.array([LOW_TONE_HZ + step * a, LOW_TONE_HZ + step * (n_a + 1 + b)])
    pitches = pitches + rng.normal(0, 0.05 * step, size=2)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 2 * np.pi))
    weights = rng.uniform(0.7, 1.0, size=2)
    cue = envelope * sum(w * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for w, f in zip(weights, pitches))
    cue /= np.sqrt(np.mean(cue**2)) + 1e-9
    x = cue + rng.standard_normal(n) * 10 ** (-cfg.audio_snr_db / 20)
    return (0.3 * x / np.abs(x).max() * 32767).astype(np.int16)


def _frames(cfg: SynthKSConfig, label: int, rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, S, S, 3) uint8: a drifting grating whose hue and orientation spell the class (or a distractor)."""
    s = cfg.frame_size
    a, b = _codes(cfg.visual_present, label, cfg.classes, rng)
    n_a, n_b = code_grid(cfg.classes)
    hue = (a / n_a + rng.normal(0, 0.01)) % 1.0
    angle = (np.pi / 2) * b / (n_b - 1) + rng.normal(0, 0.03)
    # the grating modulates the channels along the hue's (non-negative) RGB direction: opposite hues stay apart
    colour = np.array(colorsys.hsv_to_rgb(hue, 1.0, 1.0))
    background = rng.uniform(0.35, 0.65)  # grey: the colour in the frame is the cue's
    freq = rng.uniform(2.5, 4.0)  # cycles per frame
    phase, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.5)
    yy, xx = (np.mgrid[0:s, 0:s] + 0.5) / s
    proj = np.cos(angle) * xx + np.sin(angle) * yy
    out = []
    for k in range(count):
        grating = np.sin(2 * np.pi * freq * proj + phase + speed * k)
        img = background + cfg.visual_contrast * (0.5 * (colour - colour.mean()) + grating[..., None] * colour)
        img = img + rng.normal(0, cfg.visual_noise, size=(s, s, 3))
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(out)


def _write_jpeg(path: Path, pixels: np.ndarray, quality: int) -> None:
    from PIL import Image

    atomic_write_bytes(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="JPEG", quality=quality))


def generate(root: str | Path, cfg: SynthKSConfig) -> Path:
    """Write the dataset under ``root`` (classes.txt, audio/, visual/Image-01-FPS/, the split files, the stamp)."""
    cfg.check()
    root = Path(root)
    # one random stream for the dataset's structure and one per modality: a modality's parameters change its
    # own media only, so the stand-in can be calibrated one modality at a time
    rng, audio_rng, visual_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    labels = [i % cfg.classes for i in range(cfg.clips)]
    rng.shuffle(labels)
    names = clip_ids(cfg.clips, rng)
    durations = []
    for name, label in zip(names, labels):
        seconds = round(cfg.seconds * rng.uniform(0.85, 1.15), 2)
        durations.append(seconds)
        audio = _audio(cfg, label, audio_rng, seconds)
        atomic_write_bytes(root / AUDIO_DIR / f"{name}.wav",
                           lambda tmp, audio=audio: scipy.io.wavfile.write(tmp, cfg.sample_rate, audio))
        for k, pixels in enumerate(_frames(cfg, label, visual_rng, max(3, int(seconds))), start=1):
            _write_jpeg(root / FRAME_DIR / name / f"frame_{k:05d}.jpg", pixels, cfg.jpeg_quality)
    atomic_write_bytes(root / CLASSES_FILE,
                       lambda tmp: tmp.write_text("".join(f"{c}\n" for c in LABELS[: cfg.classes])))
    order = rng.permutation(cfg.clips)
    n_test = int(round(cfg.test_fraction * cfg.clips))
    for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
        rows = "".join(f"{names[i]},{durations[i]:g},{labels[i]}\n" for i in sorted(idx))
        atomic_write_bytes(root / SPLIT_FILES[split], lambda tmp, rows=rows: tmp.write_text(rows))
    atomic_write_bytes(root / STAMP, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))  # last: media complete
    return root


@register("datasets", "synth_ks")
class SynthKS(KineticsSounds):
    """Embedded Kinetics-Sounds stand-in: generated on first use, then prepared by the real KS path."""

    name = "synth_ks"
    embedded = True

    def ensure_prepared(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                        generator: dict | None = None, **_) -> Path:
        cfg = from_dict(SynthKSConfig, generator or {}, "datasets.synth_ks")
        cfg.check()
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, "synth_ks")
        path = self.cache_path(root, recipe, image_size)
        if not is_prepared(path):
            self.prepare(root, recipe, image_size, skip_bad)
        return path
