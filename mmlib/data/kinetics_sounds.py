"""Kinetics-Sounds in the public layout of the OGM-GE / AMSS preprocessing.

- ``<root>/my_train.txt`` and ``<root>/my_test.txt``: one clip a row, ``<clip_id>,<duration_s>,<label_index>``
  (e.g. ``ytid_start_end,10,4``; labels 0..C-1);
- ``<root>/classes.txt``: one class name a line, line i names label i (31 lines for the usual KS);
- ``<root>/audio/<clip_id>.wav``;
- ``<root>/visual/Image-01-FPS/<clip_id>/frame_00001.jpg, frame_00002.jpg, ...`` (1 frame per second).

``prepare`` validates the layout, reads every clip's frames in sorted name order (numbers compared as numbers,
never the directory listing's order), resizes them to ``image_size`` and turns the audio into a spectrogram by a
named recipe, then writes the tensor cache ``<root>/cache/<recipe>_img<size>.pt`` with every frame of every clip
(the loader picks ``data.frames`` of them per clip). The validation split is carved from train when a run loads the
cache.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..registry import register
from .audio import MediaError, spectrogram
from .cache import SPLIT_CODES, TensorCache, require_prepared
from .layout import LayoutError, Listing, check_listings, decode_all, report_bad
from .video import pad_clips

# The 31 classes as listed by the AdaMML authors (IBM/AdaMML#3). The label order of a real copy is the one of
# its classes.txt; this tuple is the default naming of the generated stand-in.
LABELS = (
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball", "laughing",
    "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar", "playing clarinet",
    "playing drums", "playing guitar", "playing harmonica", "playing keyboard", "playing organ", "playing piano",
    "playing saxophone", "playing trombone", "playing trumpet", "playing violin", "playing xylophone",
    "ripping paper", "shoveling snow", "shuffling cards", "singing", "stomping grapes", "tap dancing",
    "tapping guitar", "tapping pen", "tickling",
)
SPLIT_FILES = {"train": "my_train.txt", "test": "my_test.txt"}
CLASSES_FILE = "classes.txt"
AUDIO_DIR = "audio"
FRAME_DIR = "visual/Image-01-FPS"
FRAME_SUFFIXES = (".jpg", ".jpeg")


@dataclass
class KSClip:
    name: str
    label: int
    split: str  # train | test
    wav: Path
    frames: list[Path]  # in time order


def read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise LayoutError(f"{path}: class list not found (expected one class name a line, line i = label i)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1]:
        names.pop()
    for lineno, name in enumerate(names, start=1):
        if not name:
            raise LayoutError(f"{path}:{lineno}: empty class name")
    if len(names) < 2:
        raise LayoutError(f"{path}: needs at least 2 class names, got {len(names)}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise LayoutError(f"{path}: class {dup!r} is listed twice")
    return names


def read_rows(path: Path, num_classes: int) -> list[tuple[int, str, float, int]]:
    """``(line number, clip_id, duration_s, label)`` of each row of ``my_train.txt`` / ``my_test.txt``."""
    if not path.is_file():
        raise LayoutError(f"{path}: split file not found")
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            where = f"{path}:{lineno}"
            if len(row) != 3:
                raise LayoutError(f"{where}: expected '<clip_id>,<duration_s>,<label_index>', got {','.join(row)!r}")
            clip, duration, label = (field.strip() for field in row)
            if not clip or "/" in clip or clip in (".", ".."):
                raise LayoutError(f"{where}: bad clip id {clip!r}")
            try:
                seconds = float(duration)
            except ValueError:
                seconds = -1.0
            if not (seconds > 0 and math.isfinite(seconds)):
                raise LayoutError(f"{where}: duration must be a positive number of seconds, got {duration!r}")
            if not label.isdigit() or int(label) >= num_classes:
                raise LayoutError(f"{where}: unknown label {label!r} for clip {clip!r}; labels are "
                                  f"0..{num_classes - 1} (the lines of {CLASSES_FILE})")
            rows.append((lineno, clip, seconds, int(label)))
    if not rows:
        raise LayoutError(f"{path}: split file lists no clips")
    return rows


def read_split_file(path: Path, num_classes: int) -> list[tuple[str, float, int]]:
    """``(clip_id, duration_s, label)`` rows of ``my_train.txt`` / ``my_test.txt``."""
    return [row[1:] for row in read_rows(path, num_classes)]


def _natural_key(path: Path) -> list:
    """``frame_2`` before ``frame_10``; zero-padded names sort as they read."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]


def frame_files(directory: Path) -> list[Path]:
    """The clip's JPEG frames in sorted name order (never the order of the directory listing)."""
    return sorted((p for p in directory.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()),
                  key=_natural_key)


def scan_layout(root: str | Path, skip_bad: bool = False) -> tuple[list[str], list[KSClip]]:
    """Class names and the clips of both split files with their media. A clip listed in both files, twice or with
    two labels, and a clip whose wav or frames are missing raise (or are reported and skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    for sub in (AUDIO_DIR, FRAME_DIR):
        if not (root / sub).is_dir():
            raise LayoutError(f"{root / sub}: directory not found (expected the public Kinetics-Sounds layout: "
                              f"{AUDIO_DIR}/<clip_id>.wav and {FRAME_DIR}/<clip_id>/frame_00001.jpg, ...)")
    classes = read_classes(root / CLASSES_FILE)
    listings = [Listing(name, label, split, f"{root / file_name}:{lineno}")
                for split, file_name in SPLIT_FILES.items()
                for lineno, name, _, label in read_rows(root / file_name, len(classes))]
    keep, problems = check_listings(listings)
    clips = []
    for item in (listings[i] for i in keep):
        name, file_name = item.clip, SPLIT_FILES[item.split]
        wav, frame_dir = root / AUDIO_DIR / f"{name}.wav", root / FRAME_DIR / name
        missing = [] if wav.is_file() else [str(wav)]
        frames = frame_files(frame_dir) if frame_dir.is_dir() else []
        if not frames:
            missing.append(f"{frame_dir}/frame_*.jpg")
        if missing:
            problems.append(f"clip {name!r} in {file_name} has no media: {', '.join(missing)}")
            continue
        clips.append(KSClip(name, item.label, item.split, wav, frames))
    report_bad(problems, skip_bad)
    return classes, clips


def load_frame(path: Path, size: int) -> np.ndarray:
    """One JPEG as uint8 (3, size, size). Raises MediaError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the frame is much larger
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError, truncated files
        raise MediaError(f"{path}: not a decodable image ({err})") from err
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def build_cache(root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                dataset: str = "kinetics_sounds") -> Path:
    """Decode every clip once and write the tensor cache. Returns its path."""
    root = Path(root)
    classes, clips = scan_layout(root, skip_bad)
    decoded = decode_all(clips, lambda c: (spectrogram(c.wav, recipe),
                                           np.stack([load_frame(f, image_size) for f in c.frames])),
                         skip_bad, root)
    kept = [clip for clip, _ in decoded]
    specs, frames = zip(*(media for _, media in decoded))
    video, counts = pad_clips(frames)
    cache = TensorCache(
        tensors={
            "audio": torch.from_numpy(np.stack(specs)).unsqueeze(1).to(torch.float16),  # (N, 1, F, T)
            "visual": video,  # (N, T_max, 3, S, S)
            "visual_count": counts,
            "label": torch.tensor([c.label for c in kept], dtype=torch.int64),
            "split": torch.tensor([SPLIT_CODES[c.split] for c in kept], dtype=torch.int8),
        },
        meta={"dataset": dataset, "classes": classes, "clips": [c.name for c in kept], "audio_recipe": recipe,
              "image_size": image_size, "modalities": ["audio", "visual"]},
    )
    path = cache_file(root, recipe, image_size)
    cache.save(path)
    return path


def cache_file(root: str | Path, recipe: str, image_size: int) -> Path:
    return Path(root) / "cache" / f"{recipe}_img{image_size}.pt"


@register("datasets", "kinetics_sounds")
class KineticsSounds:
    """The real Kinetics-Sounds, prepared from its public layout under ``data.root``."""

    name = "kinetics_sounds"
    labels = LABELS
    modalities = {"audio": 1, "visual": 3}  # input channels per modality
    embedded = False

    def prepare(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False, **_) -> Path:
        return build_cache(root, recipe, image_size, skip_bad, dataset=self.name)

    def cache_path(self, root: str | Path, recipe: str, image_size: int, **_) -> Path:
        return cache_file(root, recipe, image_size)

    def ensure_prepared(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                        **_) -> Path:
        path = self.cache_path(root, recipe, image_size)
        return require_prepared(path, self.name, root, recipe, image_size)
