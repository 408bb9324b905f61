"""Batches served from a tensor cache resident on the device; frame choice and augmentation done there too.

The whole cache goes to the GPU when it fits (else it stays in pinned host memory and each batch is copied
asynchronously). Nothing is decoded per sample: an epoch is a permutation and a few gathers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cache import TensorCache

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # audio (B, 1, F, T) float; visual (B, T, 3, H, W) float
    label: torch.Tensor  # (B,) int64; dense labels (B, H, W) int64, void pixels = mmlib.metrics.IGNORE_INDEX
    index: torch.Tensor | None = None  # (B,) positions in the cache (None for batches built by a user's loop)

    def __len__(self) -> int:
        return int(self.label.shape[0])


def place_cache(cache: TensorCache, device: torch.device, headroom: float = 0.5) -> dict[str, torch.Tensor]:
    """Move the cache's tensors to ``device`` when they fit in ``headroom`` of its free memory; else pin them."""
    if device.type != "cuda":
        return dict(cache.tensors)
    size = sum(t.numel() * t.element_size() for t in cache.tensors.values())
    free, _ = torch.cuda.mem_get_info(device)
    if size <= headroom * free:
        return {k: v.to(device, non_blocking=True) for k, v in cache.tensors.items()}
    return {k: v.pin_memory() for k, v in cache.tensors.items()}


def segment_frames(count: torch.Tensor, frames: int, train: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Frame positions (B, frames): the clip's frames cut into ``frames`` equal segments; a random frame of
    each segment when training, its centre frame otherwise."""
    count = count.long().clamp(min=1).unsqueeze(1)
    j = torch.arange(frames, device=count.device).unsqueeze(0)
    start = (j * count) // frames
    end = torch.maximum(((j + 1) * count) // frames, start + 1)
    if train:
        u = torch.rand(start.shape, device=count.device, generator=generator)
        pos = start + (u * (end - start)).long()
    else:
        pos = (start + end - 1) // 2
    return pos.clamp(max=count - 1)


def crop_transform(b: int, device: torch.device, generator: torch.Generator | None, scale=(0.08, 1.0),
                   ratio=(3 / 4, 4 / 3), flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One random resized crop (+ horizontal flip) per item, as affine-grid parameters theta (b, 2, 3) and the
    flip sign (b,) (-1 where mirrored). The crop covers ``scale`` of the frame's area, with aspect ratio
    ``ratio`` relative to the frame's, and lies inside the frame."""
    area = torch.empty(b, device=device).uniform_(*scale, generator=generator)
    log_r = torch.empty(b, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - sw)
    cy = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - sh)
    sign = torch.ones(b, device=device)
    if flip:
        sign = torch.where(torch.rand(b, device=device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = sw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = cy
    return theta, sign


def warp_frames(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample a batch (B, T, C, H, W) through per-item affine grids theta (B, 2, 3), the same for all T."""
    b, t, c, h, w = x.shape
    theta = theta.repeat_interleave(t, dim=0).to(x.dtype)
    flat = x.reshape(b * t, c, h, w)
    grid = F.affine_grid(theta, [b * t, c, h, w], align_corners=False)
    return F.grid_sample(flat, grid, mode=mode, padding_mode="reflection", align_corners=False).view_as(x)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator | None, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), flip: bool = True,
                        horizontal_channel: int | None = None) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip for a batch (B, T, C, H, W) in [0, 1], one crop per clip, via affine
    grids. ``horizontal_channel``: the channel of a vector field's horizontal component (0.5 = zero), which a
    mirrored clip reflects about 0.5 (optical flow's dx changes sign)."""
    b, t = x.shape[:2]
    theta, sign = crop_transform(b, x.device, generator, scale, ratio, flip)
    out = warp_frames(x, theta)
    if horizontal_channel is not None:
        dx = out[:, :, horizontal_channel]
        out[:, :, horizontal_channel] = torch.where((sign < 0).view(b, 1, 1, 1), 1 - dx, dx)
    return out


# Dense labels (segmentation): every frame modality and the label map of an item share one crop and flip. The
# crop keeps the frame's aspect and covers [1/1.4^2, 1] of its area (ESANet's random rescale by 1.0-1.4, then a
# crop of the original size); the label map is resampled with nearest neighbours, as are the modalities below.
DENSE_SCALE = (1 / 1.4**2, 1.0)
NEAREST_MODALITIES = {"depth"}  # resampled with nearest neighbours (no depths blended across object edges)


def warp_labels(label: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """A batch of label maps (B, H, W) int64 through the crops theta, with nearest sampling (void stays void)."""
    warped = warp_frames(label[:, None, None].float(), theta, mode="nearest")
    return warped[:, 0, 0].round().long()


# frame modalities that are vector fields -> the channel of their horizontal component (optical flow: dx, dy)
HORIZONTAL_COMPONENT = {"flow": 0}
COPY_SUFFIX = "_copy"


def source_modality(modality: str, available) -> str:
    """The modality whose data ``modality`` reads: itself, or ``<m>`` for ``<m>_copy`` when only ``<m>`` is in
    ``available`` (the Greedy paper's duplicated input, §6.2: the same tensor under a second name)."""
    base = modality[: -len(COPY_SUFFIX)]
    if modality not in available and modality.endswith(COPY_SUFFIX) and base in available:
        return base
    return modality


class DeviceLoader:
    """Iterates over one split of a cache in batches, on ``device``.

    Shuffling and augmentation draw from a generator reseeded from (seed, epoch), so an epoch's batches do not
    depend on what ran before it (resuming gives the same batches). A modality ``<m>_copy`` is served the very
    batch tensor of ``<m>`` (same pixels, same crop); nothing is stored twice.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], indices: torch.Tensor, modalities: list[str],
                 batch_size: int, frames: int, train: bool, augment: bool, device: torch.device,
                 seed: int = 0, channels_last: bool = False, normalize: dict | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.tensors, self.modalities = tensors, modalities
        self.indices = indices.to(device)
        self.batch_size, self.frames, self.train, self.augment = batch_size, frames, train, augment
        self.device, self.seed, self.epoch = device, seed, 0
        self.channels_last = channels_last
        normalize = normalize or {}
        self.drop_last = train and len(indices) > batch_size  # full, static-shape batches when training
        self.sources = {m: source_modality(m, tensors) for m in modalities}
        missing = [m for m, source in self.sources.items() if source not in tensors]
        if missing:
            held = sorted(k for k in tensors if k not in ("label", "split") and not k.endswith("_count"))
            raise KeyError(f"data.modalities {missing} are not in the tensor cache (it holds {held})")
        # frame-sequence modalities are those with a per-clip frame count ``<m>_count`` in the cache
        self.frame_modalities = {m for m in modalities if f"{self.sources[m]}_count" in tensors}
        self.dense = tensors["label"].dim() > 1  # per-pixel labels (N, H, W), stored compactly (int8 / int16)
        self.norm = {self.sources[m]: self._normalisation(tensors[self.sources[m]].shape[2],
                                                          normalize.get(self.sources[m]), device)
                     for m in self.frame_modalities}

    @staticmethod
    def _normalisation(channels: int, spec, device):
        mean, std = spec if spec else ((IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.5,) * channels))
        return (torch.tensor(mean, device=device).view(1, 1, channels, 1, 1),
                torch.tensor(std, device=device).view(1, 1, channels, 1, 1))

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _take(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        t = self.tensors[name]
        if t.device != self.device:
            return t[idx.to(t.device)].to(self.device, non_blocking=True)
        return t[idx]

    def __iter__(self):
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 100_003 + self.epoch)
        order = self.indices
        if self.train:
            order = order[torch.randperm(len(order), device=self.device, generator=gen)]
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            theta = None  # dense labels: one crop for the item's modalities and its label map
            if self.dense and self.train and self.augment:
                theta, _ = crop_transform(len(idx), self.device, gen, scale=DENSE_SCALE, ratio=(1.0, 1.0))
            inputs, served = {}, {}
            for m in self.modalities:
                source = self.sources[m]
                if source in served:  # a copy: the very tensor already served
                    inputs[m] = served[source]
                    continue
                if m in self.frame_modalities:
                    x = self._frames(source, idx, gen, theta)
                else:
                    x = self._take(source, idx)
                    x = x.float() if x.is_floating_point() else x  # token ids stay integers
                    if self.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                inputs[m] = served[source] = x
            label = self._take("label", idx)
            if self.dense:
                label = label.long() if theta is None else warp_labels(label.long(), theta)
            yield Batch(inputs=inputs, label=label, index=idx)

    def _frames(self, m: str, idx: torch.Tensor, gen: torch.Generator,
                theta: torch.Tensor | None = None) -> torch.Tensor:
        count = self._take(f"{m}_count", idx)
        pos = segment_frames(count, self.frames, self.train, gen)  # (B, frames)
        video = self.tensors[m]  # (N, T_max, C, S, S) uint8
        flat = (idx.unsqueeze(1) * video.shape[1] + pos).flatten()  # gather only the chosen frames
        frames = video.flatten(0, 1)
        x = frames[flat.to(video.device)].to(self.device, non_blocking=True)
        x = x.view(len(idx), self.frames, *video.shape[2:]).float().div_(255.0)
        if theta is not None:
            x = warp_frames(x, theta, "nearest" if m in NEAREST_MODALITIES else "bilinear")
        elif self.train and self.augment:
            x = random_resized_crop(x, gen, horizontal_channel=HORIZONTAL_COMPONENT.get(m))
        mean, std = self.norm[m]
        return (x - mean) / std
