"""VGGSound in its public layout: ``<root>/vggsound.csv`` and the clips, as the VGGSound release ships them or
as the DGL repository's preprocessing leaves them.

- ``vggsound.csv``: no header, rows ``<ytid>,<start_seconds>,<label>,<split>`` (labels are strings, quoted
  when they hold a comma, e.g. ``"male speech, man speaking"``; split ``train`` or ``test``). A clip is named
  ``<ytid>_<start:06d>`` (the public loaders: ``ytid + '_' + start.zfill(6)``);
- the release: ``video/<name>.mp4`` (10 s, with its audio track). The mp4's audio is decoded with PyAV, every
  channel at the file's rate, and averaged to mono; frames are taken at 1 fps (mmlib.data.video);
- or the DGL preprocessing's outputs (``mp4_to_wav.py``: ffmpeg to 16 kHz PCM; frames at 1 fps), read instead
  of the mp4 when both exist: ``audio/<split>-audios/<split>-set/<name>.wav`` and
  ``video/<split>-set-img/Image-01-FPS/<name>.mp4/*.jpg`` (a directory named like the mp4).

The public loader (DGL ``dataset/VGGSoundDataset.py``) keeps a clip when its media exist and it has at least 3
frames (OGM-GE's copy: more than 3), takes 3 frames per clip and cuts a random 5 s from the audio tiled to
10 s. Here: a clip listed without media stops ``prepare`` naming it (``--skip-bad`` reports and skips it; a real
copy misses the clips no longer on YouTube, which the public loader skips silently); a clip with fewer than 3
frames at 1 fps is skipped and reported on stderr, as the public loader's rule (counted in the cache's meta);
the cache holds 3 frames per clip, the centre frames of three equal segments of its 1 fps frames ("evenly pick
3 frames", the DGL maintainers' description; the public loader takes the first 3 of an unsorted listing), so
``data.frames`` is at most 3. Audio goes through a named recipe (the public one: ``stft_129x626``, whose
random crop becomes the centre 5 s). Classes are the labels of the usable train clips, sorted (the public
loader numbers them in order of first appearance: the same classes, another numbering), and the test split
must hold the same ones (the public loader asserts it). The validation split is carved from train when a run
loads the cache.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..registry import get, register
from .audio import MediaError, load_audio
from .cache import SPLIT_CODES, TensorCache, require_prepared
from .kinetics_sounds import frame_files, load_frame
from .layout import LayoutError, decode_all, report_bad
from .loader import segment_frames
from .video import extract_frames, pad_clips

CSV_FILE = "vggsound.csv"
VIDEO_DIR = "video"
FRAMES = 3  # frames kept per clip (DGL §4.2: 3 frames per clip for KS and VGGSound)
MIN_FRAMES = 3  # the DGL loader keeps clips with at least 3 frames at 1 fps
SPLITS = ("train", "test")


@dataclass
class VGGClip:
    name: str  # <ytid>_<start:06d>
    label: str
    split: str  # train | test
    video: Path
    where: str  # <csv>:<line>


def clip_name(ytid: str, start: int) -> str:
    return f"{ytid}_{start:06d}"


def extracted_paths(root: Path, name: str, split: str) -> tuple[Path, Path]:
    """Where the DGL preprocessing leaves a clip: (its 16 kHz wav, its directory of 1 fps frames)."""
    return (root / "audio" / f"{split}-audios" / f"{split}-set" / f"{name}.wav",
            root / VIDEO_DIR / f"{split}-set-img" / "Image-01-FPS" / f"{name}.mp4")


def read_csv(path: Path) -> list[tuple[str, int, str, str, str]]:
    """``(ytid, start, label, split, where)`` rows of vggsound.csv."""
    if not path.is_file():
        raise LayoutError(f"{path}: clip list not found (rows <ytid>,<start_seconds>,<label>,<split>)")
    rows, seen = [], {}
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            where = f"{path}:{lineno}"
            if len(row) != 4:
                raise LayoutError(f"{where}: expected '<ytid>,<start_seconds>,<label>,<split>' (quote labels "
                                  f"holding a comma), got {len(row)} fields: {','.join(row)!r}")
            ytid, start, label, split = (field.strip() for field in row)
            if not ytid or "/" in ytid or ytid in (".", ".."):
                raise LayoutError(f"{where}: bad YouTube id {ytid!r}")
            if not start.isdigit():
                raise LayoutError(f"{where}: start_seconds must be a whole number >= 0, got {start!r}")
            if not label:
                raise LayoutError(f"{where}: empty label")
            if split not in SPLITS:
                raise LayoutError(f"{where}: split must be train or test, got {split!r}")
            name = clip_name(ytid, int(start))
            if name in seen:
                raise LayoutError(f"{where}: clip {name} is already listed at {seen[name]}")
            seen[name] = where
            rows.append((ytid, int(start), label, split, where))
    if not rows:
        raise LayoutError(f"{path}: lists no clips")
    return rows


def extracted(root: Path, clip: VGGClip) -> tuple[Path, list[Path]] | None:
    """The DGL preprocessing's outputs for a clip (wav, frames in time order), when both exist."""
    wav, frame_dir = extracted_paths(root, clip.name, clip.split)
    if wav.is_file() and frame_dir.is_dir():
        frames = frame_files(frame_dir)
        if frames:
            return wav, frames
    return None


def scan_layout(root: str | Path, skip_bad: bool = False) -> list[VGGClip]:
    """The clips of vggsound.csv that have media (an mp4, or the extracted wav and frames)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    clips, problems = [], []
    for ytid, start, label, split, where in read_csv(root / CSV_FILE):
        name = clip_name(ytid, start)
        clip = VGGClip(name, label, split, root / VIDEO_DIR / f"{name}.mp4", where)
        if not clip.video.is_file() and extracted(root, clip) is None:
            wav, frame_dir = extracted_paths(root, name, split)
            problems.append(f"{where}: clip {name} has no media: {clip.video} (nor {wav.relative_to(root)} "
                            f"with {frame_dir.relative_to(root)}/*.jpg)")
            continue
        clips.append(clip)
    report_bad(problems, skip_bad)
    return clips


def decode_mp4_audio(path: Path) -> tuple[np.ndarray, int]:
    """The mp4's first audio track at its own rate, mono as librosa.load makes it (the mean of the channels;
    ffmpeg's own downmix weighs them by 1/sqrt(2)). MediaError names the file."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            # planar float, every channel kept: each chunk is (channels, samples)
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
            chunks = [out.to_ndarray() for frame in container.decode(stream)
                      for out in resampler.resample(frame)]
            chunks += [out.to_ndarray() for out in resampler.resample(None)]
            rate = int(stream.rate)
    except MediaError:
        raise
    except Exception as err:  # av raises InvalidDataError and friends on corrupt files
        raise MediaError(f"{path}: not a decodable video ({err})") from err
    x = np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if x.size == 0:
        raise MediaError(f"{path}: audio track holds no samples")
    if not np.isfinite(x).all():
        raise MediaError(f"{path}: audio holds non-finite samples (NaN or inf)")
    return x, rate


def kept_frames(count: int) -> list[int]:
    """Positions of the ``FRAMES`` frames kept of a clip's ``count``: the centres of equal segments (the
    loader's evaluation choice)."""
    return segment_frames(torch.tensor([count]), FRAMES, train=False, generator=None)[0].tolist()


def decode_clip(root: Path, clip: VGGClip, recipe: str,
                image_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(spectrogram (F, T), the kept frames (k, 3, S, S) uint8, the clip's number of frames at 1 fps)."""
    fn = get("audio_recipes", recipe)
    done = extracted(root, clip)
    if done is not None:
        wav, files = done
        frames = np.stack([load_frame(files[i], image_size) for i in kept_frames(len(files))])
        return fn(*load_audio(wav, fn.rate)), frames, len(files)
    frames = extract_frames(clip.video, image_size)
    return fn(*decode_mp4_audio(clip.video)), frames[kept_frames(len(frames))], len(frames)


def build_cache(root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                dataset: str = "vggsound") -> Path:
    """Decode every clip once and write the tensor cache ``<root>/cache/<recipe>_img<size>.pt``."""
    root = Path(root)
    clips = scan_layout(root, skip_bad)
    decoded = decode_all(clips, lambda c: decode_clip(root, c, recipe, image_size), skip_bad, root)
    kept, short = [], 0
    for clip, (spec, frames, count) in decoded:
        if count < MIN_FRAMES:  # the public loader's rule: skipped, not an error
            print(f"skipped: {clip.where}: clip {clip.name} has {count} frames at 1 fps (the public loader "
                  f"keeps clips with at least {MIN_FRAMES})", file=sys.stderr)
            short += 1
            continue
        kept.append((clip, spec, frames))
    if not kept:
        raise LayoutError(f"{root}: no clip has {MIN_FRAMES} frames or more")
    classes = {split: sorted({c.label for c, _, _ in kept if c.split == split}) for split in SPLITS}
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise LayoutError(f"{root / CSV_FILE}: train and test must hold the same classes (the public loader "
                          f"asserts it); only in train: {only_train[:5]}, only in test: {only_test[:5]}")
    names = classes["train"]
    index = {label: i for i, label in enumerate(names)}
    video, counts = pad_clips([frames for _, _, frames in kept])
    cache = TensorCache(
        tensors={
            "audio": torch.from_numpy(np.stack([s for _, s, _ in kept])).unsqueeze(1).to(torch.float16),
            "visual": video,  # (N, 3, 3, S, S) uint8
            "visual_count": counts,
            "label": torch.tensor([index[c.label] for c, _, _ in kept], dtype=torch.int64),
            "split": torch.tensor([SPLIT_CODES[c.split] for c, _, _ in kept], dtype=torch.int8),
        },
        meta={"dataset": dataset, "classes": names, "clips": [c.name for c, _, _ in kept],
              "audio_recipe": recipe, "image_size": image_size, "modalities": ["audio", "visual"],
              "frames_per_clip": FRAMES, "skipped_short_clips": short},
    )
    path = cache_file(root, recipe, image_size)
    cache.save(path)
    return path


def cache_file(root: str | Path, recipe: str, image_size: int) -> Path:
    return Path(root) / "cache" / f"{recipe}_img{image_size}.pt"


@register("datasets", "vggsound")
class VGGSound:
    """The real VGGSound (309 classes as used by DGL), prepared from its public layout under ``data.root``."""

    name = "vggsound"
    modalities = {"audio": 1, "visual": 3}  # input channels per modality
    embedded = False

    def prepare(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False, **_) -> Path:
        return build_cache(root, recipe, image_size, skip_bad, dataset=self.name)

    def cache_path(self, root: str | Path, recipe: str, image_size: int, **_) -> Path:
        return cache_file(root, recipe, image_size)

    def ensure_prepared(self, root: str | Path, recipe: str, image_size: int, skip_bad: bool = False,
                        **_) -> Path:
        return require_prepared(self.cache_path(root, recipe, image_size), self.name, root)
