"""NVGesture (RGB, depth, optical flow) in the layout of the official release, as read by the AMSS NVGesture code.

- list files ``nvgesture_train_correct_cvpr2016_v2.lst`` and ``nvgesture_test_correct_cvpr2016_v2.lst``, one clip
  per line: ``path:./Video_data/class_01/subject1_r0 depth:sk_depth:<start>:<end> color:sk_color:<start>:<end>
  duo_left:duo_left:<start>:<end> label:<1..25>`` (frame ranges are half-open, ``range(start, end)`` as in the
  official loader; labels 1-based in the file, 0-based here);
- videos ``<path>/sk_color.avi`` (RGB) and ``<path>/sk_depth.avi`` (depth, read as one grey channel);
- optical flow precomputed per clip: ``flow_data/<train|test>/<i>.npy``, float (T, 2, H, W) in pixels per frame,
  ``i`` the clip's 0-based line in its list file.

``prepare`` decodes every clip once, keeps ``frames`` evenly spaced frames of each sensor range (fewer when the
range is shorter), resizes them to ``image_size`` and writes ``<root>/cache/nvgesture_f<frames>_img<size>.pt``:
``rgb`` uint8 (N, T, 3, S, S), ``depth`` uint8 (N, T, 1, S, S), ``flow`` uint8 (N, T, 2, S, S), each with
``<m>_count``. Flow is measured in frame sizes (dx / W, dy / H, so it does not depend on the resolution), clipped
to +-``FLOW_BOUND`` and quantised linearly into 0..255 (128 ~ no motion); ``meta["normalize"]["flow"]`` maps it back
to [-1, 1] (= flow / FLOW_BOUND).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import register
from .audio import MediaError
from .cache import SPLIT_CODES, TensorCache, require_prepared
from .layout import LayoutError, Listing, check_listings, decode_all, report_bad
from .video import pad_clips

LIST_FILES = {"train": "nvgesture_train_correct_cvpr2016_v2.lst", "test": "nvgesture_test_correct_cvpr2016_v2.lst"}
NUM_CLASSES = 25
LABELS = tuple(f"class_{i:02d}" for i in range(1, NUM_CLASSES + 1))
SENSORS = {"rgb": ("color", "sk_color.avi"), "depth": ("depth", "sk_depth.avi")}
FLOW_BOUND = 0.0625  # |flow| clip, in frame sizes per frame (1/16 of the frame)
DEFAULT_FRAMES = 8


@dataclass
class GestureClip:
    name: str  # the list file's path without its leading "./" (unique id)
    label: int  # 0-based
    split: str  # train | test
    line: int  # 0-based line among the list file's clips (names the flow file)
    ranges: dict[str, tuple[int, int]]  # sensor -> (start, end), half-open
    directory: Path
    where: str = ""  # <list file>:<line>, for error messages

    def video(self, modality: str) -> Path:
        return self.directory / SENSORS[modality][1]

    def flow(self, root: Path) -> Path:
        return root / "flow_data" / self.split / f"{self.line}.npy"


def parse_list_line(text: str, where: str) -> tuple[str, dict[str, tuple[int, int]], int]:
    """``(path, {sensor: (start, end)}, label 1..25)`` of one list line; ``where`` names it in errors."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition(":")
        if not sep or not value:
            raise LayoutError(f"{where}: malformed field {token!r}")
        fields[key] = value
    for key in ("path", "label", *(s for s, _ in SENSORS.values())):
        if key not in fields:
            raise LayoutError(f"{where}: missing field {key!r} in {text.strip()!r}")
    ranges = {}
    for key, value in fields.items():
        if key in ("path", "label"):
            continue
        parts = value.split(":")
        try:
            start, end = int(parts[-2]), int(parts[-1])
        except (ValueError, IndexError):
            raise LayoutError(f"{where}: field {key!r} must be <name>:<start>:<end>, got {value!r}") from None
        if not 0 <= start < end:
            raise LayoutError(f"{where}: field {key!r} has an empty or negative frame range {start}:{end}")
        ranges[key] = (start, end)
    try:
        label = int(fields["label"])
    except ValueError:
        label = 0
    if not 1 <= label <= NUM_CLASSES:
        raise LayoutError(f"{where}: label must be an integer in 1..{NUM_CLASSES}, got {fields['label']!r}")
    path = fields["path"]
    return path[2:] if path.startswith("./") else path, ranges, label


def read_list_file(path: Path, split: str) -> list[GestureClip]:
    if not path.is_file():
        raise LayoutError(f"{path}: list file not found")
    clips = []
    for lineno, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        name, ranges, label = parse_list_line(text, f"{path}:{lineno}")
        clips.append(GestureClip(name, label - 1, split, len(clips), ranges, path.parent / name,
                                 f"{path}:{lineno}"))
    if not clips:
        raise LayoutError(f"{path}: list file lists no clips")
    return clips


def scan_layout(root: str | Path, skip_bad: bool = False) -> list[GestureClip]:
    """Clips of both list files whose videos and flow file exist. A clip listed in both files, twice or with two
    labels, and a clip without its media raise (or are reported and skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    listed = [clip for split, list_name in LIST_FILES.items() for clip in read_list_file(root / list_name, split)]
    keep, problems = check_listings([Listing(c.name, c.label + 1, c.split, c.where) for c in listed])
    clips = []
    for clip in (listed[i] for i in keep):
        media = [clip.video(m) for m in SENSORS] + [clip.flow(root)]
        missing = [str(p) for p in media if not p.is_file()]
        if missing:
            problems.append(f"clip {clip.name!r} in {LIST_FILES[clip.split]} has no media: {', '.join(missing)}")
            continue
        clips.append(clip)
    report_bad(problems, skip_bad)
    return clips


def even_positions(length: int, count: int) -> np.ndarray:
    """``count`` evenly spaced positions in range(length) (segment centres); all of them when length <= count."""
    if length <= count:
        return np.arange(length)
    return ((np.arange(count) + 0.5) * length / count).astype(np.int64)


def resize(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, C, H, W) float -> (T, C, size, size) float, bilinear with antialiasing."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def read_sensor(path: Path, start: int, end: int, frames: int, size: int, grey: bool) -> np.ndarray:
    """Frames start..end-1 of a video (decode order = time order), ``frames`` of them evenly spaced, as uint8
    (T, C, size, size) with C = 1 (grey) or 3 (RGB)."""
    import av

    kept: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            for index, frame in enumerate(container.decode(video=0)):
                if index >= end:
                    break
                if index >= start:
                    kept.append(frame.to_ndarray(format="gray" if grey else "rgb24"))
    except MediaError:
        raise
    except Exception as err:  # av raises InvalidDataError and friends on corrupt files
        raise MediaError(f"{path}: not a decodable video ({err})") from err
    if len(kept) < end - start:
        raise MediaError(f"{path}: the list asks for frames {start}:{end} but the video holds "
                         f"{start + len(kept) if kept else 'at most ' + str(start)} frames")
    chosen = np.stack([kept[i] for i in even_positions(len(kept), frames)])
    chosen = chosen[:, None] if grey else chosen.transpose(0, 3, 1, 2)
    return resize(chosen, size).round().clamp(0, 255).to(torch.uint8).numpy()


def quantise_flow(flow: torch.Tensor) -> torch.Tensor:
    """Flow in frame sizes -> uint8: [-FLOW_BOUND, FLOW_BOUND] onto [0, 255]."""
    return ((flow / FLOW_BOUND).clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8)


def read_flow(path: Path, frames: int, size: int) -> np.ndarray:
    """(T, 2, H, W) float pixels per frame -> ``frames`` evenly spaced fields, resized, in frame sizes, quantised:
    uint8 (T', 2, size, size)."""
    try:
        flow = np.load(path, allow_pickle=False)
    except Exception as err:
        raise MediaError(f"{path}: not a readable .npy file ({err})") from err
    if flow.ndim != 4 or flow.shape[1] != 2 or flow.shape[0] < 1 or min(flow.shape[2:]) < 1:
        raise MediaError(f"{path}: optical flow must be (T, 2, H, W), got shape {flow.shape}")
    if not np.issubdtype(flow.dtype, np.number) or not np.isfinite(flow).all():
        raise MediaError(f"{path}: optical flow must hold finite numbers")
    h, w = flow.shape[2:]
    chosen = flow[even_positions(flow.shape[0], frames)].astype(np.float32)
    chosen = chosen / np.array([w, h], dtype=np.float32).reshape(1, 2, 1, 1)
    return quantise_flow(resize(chosen, size)).numpy()


def build_cache(root: str | Path, image_size: int, frames: int = DEFAULT_FRAMES, skip_bad: bool = False,
                dataset: str = "nvgesture", labels: tuple[str, ...] = LABELS) -> Path:
    """Decode every clip once and write the tensor cache. Returns its path."""
    if frames < 1:
        raise ValueError(f"frames per clip must be >= 1, got {frames}")
    root = Path(root)
    clips = scan_layout(root, skip_bad)

    def decode(clip: GestureClip) -> dict[str, np.ndarray]:
        item = {m: read_sensor(clip.video(m), *clip.ranges[SENSORS[m][0]], frames, image_size, m == "depth")
                for m in SENSORS}
        item["flow"] = read_flow(clip.flow(root), frames, image_size)
        return item

    decoded = decode_all(clips, decode, skip_bad, root)
    kept = [clip for clip, _ in decoded]
    tensors = {}
    for m in ("rgb", "depth", "flow"):
        tensors[m], tensors[f"{m}_count"] = pad_clips([item[m] for _, item in decoded])
    tensors["label"] = torch.tensor([c.label for c in kept], dtype=torch.int64)
    tensors["split"] = torch.tensor([SPLIT_CODES[c.split] for c in kept], dtype=torch.int8)
    # the classes up to the highest label listed (all 25 for the real release; fewer for a smaller stand-in)
    classes = list(labels[: max(c.label for c in clips) + 1])
    cache = TensorCache(tensors=tensors, meta={
        "dataset": dataset, "classes": classes, "clips": [c.name for c in kept],
        "modalities": ["rgb", "depth", "flow"], "image_size": image_size, "audio_recipe": None,
        "frames_per_clip": frames, "flow_scale": FLOW_BOUND,
        # rgb: ImageNet statistics (loader default); depth in [-1, 1]; flow back to flow / flow_scale in [-1, 1]
        "normalize": {"depth": [[0.5], [0.5]], "flow": [[0.5, 0.5], [0.5, 0.5]]},
    })
    path = cache_file(root, image_size, frames)
    cache.save(path)
    return path


def cache_file(root: str | Path, image_size: int, frames: int) -> Path:
    return Path(root) / "cache" / f"nvgesture_f{frames}_img{image_size}.pt"


@register("datasets", "nvgesture")
class NVGesture:
    """The real NVGesture, prepared from its official layout under ``data.root``."""

    name = "nvgesture"
    labels = LABELS
    modalities = {"rgb": 3, "depth": 1, "flow": 2}  # input channels per modality
    embedded = False
    frames = DEFAULT_FRAMES  # frames kept per clip in the cache

    def prepare(self, root: str | Path, recipe: str | None, image_size: int, skip_bad: bool = False,
                frames: int | None = None, **_) -> Path:
        return build_cache(root, image_size, frames or self.frames, skip_bad, dataset=self.name,
                           labels=self.labels)

    def cache_path(self, root: str | Path, recipe: str | None, image_size: int, frames: int | None = None,
                   **_) -> Path:
        return cache_file(root, image_size, frames or self.frames)

    def ensure_prepared(self, root: str | Path, recipe: str | None, image_size: int, skip_bad: bool = False,
                        **_) -> Path:
        path = self.cache_path(root, recipe, image_size)
        return require_prepared(path, self.name, root, image_size=image_size)
