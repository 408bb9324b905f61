"""Video decoding with PyAV: frames at 1 fps, in time order, resized to a square uint8 array."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .audio import MediaError


def extract_frames(path: str | Path, size: int, fps: float = 1.0) -> np.ndarray:
    """Frames at ``fps`` (the first decoded frame at or after each 1/fps second), as uint8 (T, 3, size, size).

    Frames come out in presentation-time order (never a directory listing's order). A video whose frames end more
    than 1/fps before the duration its header declares (a truncated file, which the decoder reads silently as a
    shorter clip) raises MediaError, as do missing, undecodable and empty files.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: video file not found")
    kept: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            next_time, end = 0.0, 0.0
            step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
            for frame in container.decode(video=0):
                t = float(frame.time) if frame.time is not None else len(kept) / fps
                end = max(end, t + step)
                if t + 1e-6 >= next_time:
                    kept.append(frame.to_ndarray(format="rgb24"))
                    next_time = (int(t * fps + 1e-6) + 1) / fps
            declared = declared_seconds(container, stream)
            if stream.start_time is not None:
                end -= float(stream.start_time * stream.time_base)
    except MediaError:
        raise
    except Exception as err:  # av raises InvalidDataError and friends on corrupt files
        raise MediaError(f"{path}: not a decodable video ({err})") from err
    if not kept:
        raise MediaError(f"{path}: video holds no frames")
    if declared is not None and end < declared - 1.0 / fps:
        raise MediaError(f"{path}: truncated video: its frames end at {end:.2f} s, its header declares "
                         f"{declared:.2f} s")
    frames = torch.from_numpy(np.stack(kept)).permute(0, 3, 1, 2).float()
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames.round().clamp(0, 255).to(torch.uint8).numpy()


def declared_seconds(container, stream) -> float | None:
    """The video stream's duration from the file's header (the stream's own, else the container's); None when
    the header holds none."""
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # in av.time_base units: microseconds
    return None


def pad_clips(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of (T_i, ...) uint8 frames -> zero-padded (N, T_max, ...) uint8 and the counts T_i as int16."""
    t_max = max(x.shape[0] for x in clips)
    stacked = np.zeros((len(clips), t_max, *clips[0].shape[1:]), dtype=np.uint8)
    for i, x in enumerate(clips):
        stacked[i, : x.shape[0]] = x
    return torch.from_numpy(stacked), torch.tensor([x.shape[0] for x in clips], dtype=torch.int16)
