"""CREMA-D in its public layout: ``AudioWAV/<clip>.wav``, ``VideoFlash/<clip>.flv`` (or .mp4), and split files
``train.csv`` / ``test.csv`` with ``<clip>,<LABEL>`` rows (labels NEU HAP SAD FEA DIS ANG).

``prepare`` validates the layout, extracts frames at 1 fps, turns audio into a spectrogram by a named recipe
and writes the tensor cache ``<root>/cache/<recipe>_img<size>.pt``. The validation split is carved from train
(stratified, seeded) in memory when a run loads the cache.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..registry import register
from .audio import spectrogram
from .cache import SPLIT_CODES, TensorCache, require_prepared
from .layout import LayoutError, Listing, check_listings, decode_all, report_bad
from .video import extract_frames, pad_clips

LABELS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
VIDEO_SUFFIXES = (".flv", ".mp4")


@dataclass
class Clip:
    name: str
    label: int
    split: str  # train | test
    wav: Path
    video: Path


def read_rows(path: Path, labels: tuple[str, ...] = LABELS) -> list[tuple[int, str, int]]:
    """``(line number, clip, label index)`` of each row of a split file."""
    if not path.is_file():
        raise LayoutError(f"{path}: split file not found")
    rows = []
    with path.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise LayoutError(f"{path}:{lineno}: expected '<clip>,<LABEL>', got {','.join(row)!r}")
            clip, label = row[0].strip(), row[1].strip()
            if label not in labels:
                raise LayoutError(f"{path}:{lineno}: unknown label {label!r} for clip {clip!r}; "
                                  f"labels are {', '.join(labels)}")
            rows.append((lineno, clip, labels.index(label)))
    if not rows:
        raise LayoutError(f"{path}: split file lists no clips")
    return rows


def read_split_file(path: Path, labels: tuple[str, ...] = LABELS) -> list[tuple[str, int]]:
    """``(clip, label index)`` of each row of a split file."""
    return [(clip, label) for _, clip, label in read_rows(path, labels)]


def scan_layout(root: str | Path, skip_bad: bool = False, labels: tuple[str, ...] = LABELS) -> list[Clip]:
    """Clips listed in train.csv and test.csv, with their media paths. A clip listed in both files, twice or
    with two labels, and missing media raise (or are reported and skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    for sub in ("AudioWAV", "VideoFlash"):
        if not (root / sub).is_dir():
            raise LayoutError(f"{root / sub}: directory not found (expected the public CREMA-D layout)")
    listings = [Listing(name, labels[label], split, f"{root / f'{split}.csv'}:{lineno}")
                for split in ("train", "test") for lineno, name, label in read_rows(root / f"{split}.csv", labels)]
    keep, problems = check_listings(listings)
    clips = []
    for item in (listings[i] for i in keep):
        name, split = item.clip, item.split
        wav = root / "AudioWAV" / f"{name}.wav"
        videos = [root / "VideoFlash" / f"{name}{s}" for s in VIDEO_SUFFIXES]
        video = next((v for v in videos if v.is_file()), None)
        missing = ([] if wav.is_file() else [str(wav)]) + ([] if video else [str(videos[0])])
        if missing:
            problems.append(f"clip {name!r} in {split}.csv has no media: {', '.join(missing)}")
            continue
        clips.append(Clip(name, labels.index(item.label), split, wav, video))
    report_bad(problems, skip_bad)
    return clips


def build_cache(root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                dataset: str = "crema_d", labels: tuple[str, ...] = LABELS) -> Path:
    """Decode every clip once and write the tensor cache. Returns its path."""
    root = Path(root)
    clips = scan_layout(root, skip_bad, labels)
    decoded = decode_all(clips, lambda c: (spectrogram(c.wav, recipe), extract_frames(c.video, image_size)),
                         skip_bad, root)
    kept = [clip for clip, _ in decoded]
    specs, frames = zip(*(media for _, media in decoded))
    video, counts = pad_clips(frames)
    cache = TensorCache(
        tensors={
            "audio": torch.from_numpy(np.stack(specs)).unsqueeze(1).to(torch.float16),  # (N, 1, F, T)
            "visual": video,  # (N, T_max, 3, S, S) uint8
            "visual_count": counts,
            "label": torch.tensor([c.label for c in kept], dtype=torch.int64),
            "split": torch.tensor([SPLIT_CODES[c.split] for c in kept], dtype=torch.int8),
        },
        meta={"dataset": dataset, "classes": list(labels), "clips": [c.name for c in kept],
              "audio_recipe": recipe, "image_size": image_size, "modalities": ["audio", "visual"]},
    )
    path = root / "cache" / f"{recipe}_img{image_size}.pt"
    cache.save(path)
    return path


@register("datasets", "crema_d")
class CremaD:
    """The real CREMA-D, prepared from its public layout under ``data.root``."""

    name = "crema_d"
    labels = LABELS
    modalities = {"audio": 1, "visual": 3}  # input channels per modality

    def prepare(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False, **_) -> Path:
        return build_cache(root, recipe, image_size, skip_bad, dataset=self.name, labels=self.labels)

    def cache_path(self, root: str | Path, recipe: str, image_size: int, **_) -> Path:
        return Path(root) / "cache" / f"{recipe}_img{image_size}.pt"

    def ensure_prepared(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                        **_) -> Path:
        path = self.cache_path(root, recipe, image_size)
        return require_prepared(path, self.name, root, recipe, image_size)
