"""``synth_nvgesture``: the embedded NVGesture stand-in (RGB, depth, optical flow), written in the official layout.

Seeded and procedural. A gesture is a soft disc (the "hand") moving in a straight line across the frame:
- flow: the motion field, the disc's displacement per frame; its direction encodes the class (classes evenly
  spaced around the circle). Flow values are not mirrored by a horizontal flip, so the cue survives the loader's
  crop + flip;
- RGB: the disc's colour; its hue encodes the class (appearance survives crops and flips);
- depth: the disc's depth profile, a dome whose mean level encodes the class.
A per-frame encoder pooled over time cannot read the direction of motion from RGB or depth frames, so each
modality carries only its own cue. Each cue is present with its own probability (``<m>_present``) and otherwise
replaced by a class-free distractor (a direction, hue or level half-way between two classes'), so the modalities are
complementary; depth is the most reliable cue (the paper's strongest modality on NVGesture), then RGB, then flow.
Everything that sets the difficulty is a field of ``SynthNVGestureConfig``.
"""
from __future__ import annotations

import colorsys
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .nvgesture import LABELS, LIST_FILES, NVGesture

GENERATOR_VERSION = 2  # bump when a change to the generator changes the media it writes
STAMP = "synth_nvgesture.txt"


@dataclass
class SynthNVGestureConfig:
    clips: int = 300  # total clips (train + test)
    classes: int = 25  # the first ``classes`` NVGesture classes
    test_fraction: float = 0.3
    seed: int = 0
    frames: int = 8  # frames in each gesture's listed range (the cache keeps all of them)
    frame_size: int = 32  # square frames, pixels (even)
    rgb_present: float = 0.6  # probability that a clip carries its class's colour
    depth_present: float = 0.95  # ... its class's depth level
    flow_present: float = 0.5  # ... its class's direction of motion
    # probability that a clip carries no cue in any modality (an ambiguous gesture): the modalities then share
    # their hard clips, as real sensors of one gesture do, and fusing them gains less than independent cues would
    shared_absence: float = 0.0
    rgb_noise: float = 0.3  # std of per-pixel noise (pixel values in [0, 1])
    depth_noise: float = 0.03  # std of per-pixel noise (depth values in [0, 1])
    flow_noise: float = 0.5  # std of per-pixel flow noise, relative to the gesture's speed
    speed: float = 0.03  # disc displacement per frame, in frame sizes
    hand_size: float = 0.3  # disc radius, in frame sizes (large, so that random crops rarely lose it)

    def fingerprint(self) -> str:
        import hashlib
        import json
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        if not 2 <= self.classes <= len(LABELS):
            raise ValueError(f"synth_nvgesture.classes must be in [2, {len(LABELS)}], got {self.classes}")
        if self.clips < 2 * self.classes:
            raise ValueError(f"synth_nvgesture.clips must be >= 2 * classes, got {self.clips}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"synth_nvgesture.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.frames < 1 or self.frame_size < 8 or self.frame_size % 2:
            raise ValueError(f"synth_nvgesture: frames must be >= 1 and frame_size an even number >= 8, got "
                             f"{self.frames}, {self.frame_size}")
        for name in ("rgb_present", "depth_present", "flow_present", "shared_absence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"synth_nvgesture.{name} must be in [0, 1], got {getattr(self, name)}")


def _cue(present_prob: float, label: int, classes: int, rng: np.random.Generator) -> float:
    """The class's position in [0, 1) on the cue's scale (label / classes), or a class-free distractor half-way
    between two neighbouring classes."""
    if rng.random() < present_prob:
        return label / classes
    return (rng.integers(0, classes) + 0.5) / classes


def _gesture(cfg: SynthNVGestureConfig, label: int, rngs: dict[str, np.random.Generator], length: int,
             start: int):
    """(rgb uint8 (L, S, S, 3), depth uint8 (L, S, S, 3 grey), flow float32 (frames, 2, S, S) pixels/frame).
    ``rngs``: a stream for the shared geometry and one per modality (its cue and its noise)."""
    s, k = cfg.frame_size, cfg.classes
    rng = rngs["geometry"]
    cues = 0.0 if rng.random() < cfg.shared_absence else 1.0  # 0: no modality carries its class's cue
    direction = 2 * np.pi * _cue(cues * cfg.flow_present, label, k, rngs["flow"]) + rngs["flow"].normal(0, 0.05)
    hue = _cue(cues * cfg.rgb_present, label, k, rngs["rgb"]) + rngs["rgb"].normal(0, 0.005)
    level = 0.35 + 0.6 * _cue(cues * cfg.depth_present, label, k, rngs["depth"]) * k / max(k - 1, 1) + \
        rngs["depth"].normal(0, 0.005)
    speed = cfg.speed * rng.uniform(0.8, 1.2)
    step = speed * np.array([np.cos(direction), np.sin(direction)])  # (dx, dy) per frame, frame sizes
    radius = cfg.hand_size * rng.uniform(0.9, 1.1)
    centre0 = 0.5 + rng.uniform(-0.05, 0.05, size=2) - step * (cfg.frames - 1) / 2 - step * start
    colour = np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.8, 0.9))
    background = rng.uniform(0.2, 0.6, size=3)
    yy, xx = (np.mgrid[0:s, 0:s] + 0.5) / s
    rgb, depth, flow = [], [], []
    for t in range(length):
        cx, cy = centre0 + step * t
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius
        disc = np.clip((1.0 - dist) * 6.0, 0.0, 1.0)  # soft edge
        img = background * (1 - disc[..., None]) + colour * disc[..., None]
        img = img + rngs["rgb"].normal(0, cfg.rgb_noise, size=(s, s, 3))
        rgb.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
        dome = np.sqrt(np.clip(1.0 - dist**2, 0.0, 1.0))
        d = 0.15 * (1 - disc) + disc * level * (0.85 + 0.15 * dome)
        d = d + rngs["depth"].normal(0, cfg.depth_noise, size=(s, s))
        depth.append(np.repeat((np.clip(d, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2))
        if start <= t < start + cfg.frames:
            field = disc[None] * (step * s)[:, None, None]  # pixels per frame inside the disc
            field = field + rngs["flow"].normal(0, cfg.flow_noise * speed * s, size=(2, s, s))
            flow.append(field.astype(np.float32))
    return np.stack(rgb), np.stack(depth), np.stack(flow)


def write_avi(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """uint8 (T, H, W, 3) frames as MPEG-4 Part 2 in AVI (near-lossless quantiser)."""
    import av

    def write(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="avi") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"qscale": "2"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    atomic_write_bytes(path, write)


def generate(root: str | Path, cfg: SynthNVGestureConfig) -> Path:
    """Write the dataset under ``root`` (Video_data/, flow_data/, the two list files, then the stamp)."""
    cfg.check()
    root = Path(root)
    # one random stream for the dataset's structure and geometry and one per modality: a modality's parameters
    # change its own cue and noise only, so the stand-in can be calibrated one modality at a time
    rng, *streams = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(4))
    rngs = {"geometry": rng, **dict(zip(("rgb", "depth", "flow"), streams))}
    labels = [i % cfg.classes for i in range(cfg.clips)]
    rng.shuffle(labels)
    order = rng.permutation(cfg.clips)
    n_test = int(round(cfg.test_fraction * cfg.clips))
    splits = {"test": sorted(order[:n_test].tolist()), "train": sorted(order[n_test:].tolist())}
    for split, members in splits.items():
        lines = []
        for line, i in enumerate(members):
            label = labels[i]
            name = f"Video_data/{LABELS[label]}/subject{i % 20 + 1}_r{i // 20}"
            lead, tail = int(rng.integers(0, 4)), int(rng.integers(0, 3))
            start, end = lead, lead + cfg.frames
            rgb, depth, flow = _gesture(cfg, label, rngs, end + tail, start)
            write_avi(root / name / "sk_color.avi", rgb)
            write_avi(root / name / "sk_depth.avi", depth)
            atomic_write_bytes(root / "flow_data" / split / f"{line}.npy", lambda tmp, f=flow: _save_npy(tmp, f))
            lines.append(f"path:./{name} depth:sk_depth:{start}:{end} color:sk_color:{start}:{end} "
                         f"duo_left:duo_left:{start}:{end} label:{label + 1}\n")
        text = "".join(lines)
        atomic_write_bytes(root / LIST_FILES[split], lambda tmp, text=text: tmp.write_text(text))
    stamp = root / STAMP  # written last: its presence means the media are complete
    atomic_write_bytes(stamp, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))
    return root


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


@register("datasets", "synth_nvgesture")
class SynthNVGesture(NVGesture):
    """Embedded NVGesture stand-in: generated on first use, then prepared by the real NVGesture path."""

    name = "synth_nvgesture"
    embedded = True

    def ensure_prepared(self, root: str | Path, recipe: str | None, image_size: int, skip_bad: bool = False,
                        generator: dict | None = None, **_) -> Path:
        cfg = from_dict(SynthNVGestureConfig, generator or {}, "datasets.synth_nvgesture")
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, "synth_nvgesture")
        path = self.cache_path(root, recipe, image_size, frames=cfg.frames)
        if not is_prepared(path):
            self.prepare(root, recipe, image_size, skip_bad, frames=cfg.frames)
        return path
