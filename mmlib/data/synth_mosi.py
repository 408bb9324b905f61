"""``synth_mosi``: the embedded CMU-MOSI stand-in, written as MMSA's unaligned feature pickle
(``Processed/unaligned_50.pkl``: train / valid / test dicts of numpy arrays and lists) and prepared by the real
loader (``mmlib.data.mosi``, restricted unpickler included).

Seeded and procedural. Each clip has a sentiment score in [-3, 3] on the annotators' grid (multiples of 0.2, a
``neutral_fraction`` of exact zeros) whose sign is the binary label. Each modality is a sequence of unit-noise
feature vectors (audio 5-d, vision 20-d, text 768-d, MMSA's dims) of a clip-specific length, zero-padded, with
the text's padded steps holding a constant [PAD] vector (as BERT features do; the ``text_bert`` mask marks them).
A modality carries the clip's polarity with probability ``<m>_present`` (else a distractor of random polarity)
through one of two cues, on a ``<m>_cue_steps`` fraction of its valid steps, at amplitude ``<m>_snr`` along
modality-specific random directions:
- ``mean``: +/- one direction: readable from the mean over time, so it is learned fast;
- ``order``: direction a in the first half and b in the second half (positive) or b then a (negative): the mean
  over time carries no polarity, so the encoder must learn the order, slowly.
The default makes text dominant (a frequent, strong ``mean`` cue), vision weaker and slow, audio weakest, as in
DGL Table 2 (right): text-only 77.1, vision-only 54.3, audio-only 44.3, naive fusion 76.8 (calibration is done
on params.yaml's generator fields). ``shared_absence`` is the probability that a clip carries no cue in any
modality.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .mosi import MOSI

GENERATOR_VERSION = 1  # bump when a change to the generator changes what it writes
STAMP = "synth_mosi.txt"
FEATURE_FILE = "Processed/unaligned_50.pkl"
CUES = ("mean", "order")
PAD_TOKEN = 0


@dataclass
class SynthMOSIConfig:
    clips: int = 1200  # total clips (train + valid + test); MOSI has 2,199
    valid_fraction: float = 0.1  # MOSI: 229 valid, 686 test of 2,199
    test_fraction: float = 0.3
    seed: int = 0
    neutral_fraction: float = 0.02  # clips scored exactly 0
    audio_steps: int = 40  # padded lengths (MOSI unaligned: 375 / 500 / 50); each clip uses 50-100 % of them
    vision_steps: int = 40
    text_steps: int = 24
    audio_dim: int = 5
    vision_dim: int = 20
    text_dim: int = 768
    audio_present: float = 0.55  # probability that a modality carries the clip's polarity
    vision_present: float = 0.6
    text_present: float = 0.8
    audio_snr: float = 0.8  # cue amplitude over the unit noise per feature
    vision_snr: float = 0.8
    text_snr: float = 1.5
    audio_cue: str = "order"  # mean | order (see the module docstring)
    vision_cue: str = "order"
    text_cue: str = "mean"
    audio_cue_steps: float = 0.5  # fraction of a clip's valid steps that carry the cue
    vision_cue_steps: float = 0.5
    text_cue_steps: float = 0.3
    shared_absence: float = 0.0  # probability that a clip carries no cue in any modality

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        for name in ("valid_fraction", "test_fraction", "neutral_fraction", "shared_absence",
                     *(f"{m}_{k}" for m in ("audio", "vision", "text") for k in ("present", "cue_steps"))):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"synth_mosi.{name} must be in [0, 1], got {getattr(self, name)}")
        n_valid, n_test = (int(round(f * self.clips)) for f in (self.valid_fraction, self.test_fraction))
        if n_valid < 2 or n_test < 2 or self.clips - n_valid - n_test < 4:
            raise ValueError(f"synth_mosi: clips={self.clips} leaves too few train / valid / test clips")
        for m in ("audio", "vision", "text"):
            if getattr(self, f"{m}_cue") not in CUES:
                raise ValueError(f"synth_mosi.{m}_cue must be one of {', '.join(CUES)}, got "
                                 f"{getattr(self, f'{m}_cue')!r}")
            if getattr(self, f"{m}_steps") < 4 or getattr(self, f"{m}_dim") < 1:
                raise ValueError(f"synth_mosi: {m}_steps must be >= 4 and {m}_dim >= 1")


def scores(cfg: SynthMOSIConfig, rng: np.random.Generator) -> np.ndarray:
    """Balanced polarities, magnitudes 0.2 .. 3.0 on the 0.2 grid, a ``neutral_fraction`` of zeros."""
    sign = np.where(np.arange(cfg.clips) % 2 == 0, 1.0, -1.0)
    rng.shuffle(sign)
    magnitude = rng.integers(1, 16, size=cfg.clips) * 0.2
    s = np.round(sign * magnitude, 1)
    s[rng.random(cfg.clips) < cfg.neutral_fraction] = 0.0
    return s


def sequence(cfg: SynthMOSIConfig, m: str, polarity: np.ndarray, carries: np.ndarray, lengths: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """(N, steps, dim) float32: unit noise on the valid steps, the cue on a fraction of them, 0 after them."""
    steps, dim = getattr(cfg, f"{m}_steps"), getattr(cfg, f"{m}_dim")
    n = len(polarity)
    directions = rng.standard_normal((2, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = rng.standard_normal((n, steps, dim))
    sign = np.where(carries, polarity, rng.choice([-1.0, 1.0], size=n))  # distractor: a random polarity
    t = np.arange(steps)[None, :]
    cue_at = rng.random((n, steps)) < getattr(cfg, f"{m}_cue_steps")
    amplitude = getattr(cfg, f"{m}_snr") * np.sqrt(dim)  # the cue's norm against the noise's per-step norm
    if getattr(cfg, f"{m}_cue") == "mean":
        x += (cue_at * sign[:, None])[..., None] * amplitude * directions[0]
    else:
        first = t < (lengths[:, None] / 2)
        use_a = np.where(sign[:, None] > 0, first, ~first)  # positive: a then b; negative: b then a
        cue = np.where(use_a[..., None], directions[0], directions[1])
        x += cue_at[..., None] * amplitude * cue
    valid = t < lengths[:, None]
    return np.where(valid[..., None], x, 0.0).astype(np.float32)


def generate(root: str | Path, cfg: SynthMOSIConfig) -> Path:
    """Write ``Processed/unaligned_50.pkl`` and the stamp under ``root``."""
    cfg.check()
    root = Path(root)
    rng, *modality_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(4))
    score = scores(cfg, rng)
    polarity = np.where(score >= 0, 1.0, -1.0)
    ambiguous = rng.random(cfg.clips) < cfg.shared_absence
    lengths = {m: np.maximum(2, (getattr(cfg, f"{m}_steps") * rng.uniform(0.5, 1.0, cfg.clips)).astype(int))
               for m in ("audio", "vision", "text")}
    features = {}
    for m, mrng in zip(("audio", "vision", "text"), modality_rngs):
        carries = (mrng.random(cfg.clips) < getattr(cfg, f"{m}_present")) & ~ambiguous
        features[m] = sequence(cfg, m, polarity, carries, lengths[m], mrng)
    # BERT features are not zero at [PAD] positions: a constant vector there, marked by the text_bert mask
    pad_vector = modality_rngs[2].standard_normal(cfg.text_dim).astype(np.float32)
    text_valid = np.arange(cfg.text_steps)[None, :] < lengths["text"][:, None]
    features["text"] = np.where(text_valid[..., None], features["text"], pad_vector)
    token_ids = np.where(text_valid, rng.integers(1000, 30000, size=(cfg.clips, cfg.text_steps)), PAD_TOKEN)
    text_bert = np.stack([token_ids, text_valid, np.zeros_like(token_ids)], axis=1).astype(np.float32)
    order = rng.permutation(cfg.clips)
    n_valid, n_test = (int(round(f * cfg.clips)) for f in (cfg.valid_fraction, cfg.test_fraction))
    parts = {"valid": order[:n_valid], "test": order[n_valid:n_valid + n_test], "train": order[n_valid + n_test:]}
    ids = [f"synth{i // 20:04d}$_${i % 20 + 1}" for i in range(cfg.clips)]  # <video>$_$<clip>
    data = {}
    for split in ("train", "valid", "test"):
        idx = np.sort(parts[split])
        data[split] = {
            "raw_text": [f"utterance {ids[i]}" for i in idx],
            "audio": features["audio"][idx], "vision": features["vision"][idx], "text": features["text"][idx],
            "text_bert": text_bert[idx], "id": [ids[i] for i in idx],
            "audio_lengths": lengths["audio"][idx].tolist(), "vision_lengths": lengths["vision"][idx].tolist(),
            "annotations": ["Positive" if s > 0 else "Negative" if s < 0 else "Neutral" for s in score[idx]],
            "classification_labels": np.sign(score[idx]).astype(np.float32) + 1,
            "regression_labels": score[idx].astype(np.float32),
        }
    atomic_write_bytes(root / FEATURE_FILE, lambda tmp: tmp.write_bytes(pickle.dumps(data, protocol=4)))
    atomic_write_bytes(root / STAMP, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))  # last: complete
    return root


@register("datasets", "synth_mosi")
class SynthMOSI(MOSI):
    """Embedded CMU-MOSI stand-in: generated on first use, then prepared by the real MOSI path (neutral clips
    dropped, as ``mosi``)."""

    name = "synth_mosi"
    embedded = True

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int | None = None,
                        skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        cfg = from_dict(SynthMOSIConfig, generator or {}, "datasets.synth_mosi")
        cfg.check()
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, self.name)
        path = self.cache_path(root)
        if not is_prepared(path):
            self.prepare(root, skip_bad=skip_bad)
        return path
