"""A small I3D-style 3D CNN for video streams (the NVGesture branches of AMSS and Greedy use I3D;
greedy.md §6.1, amss.md §5): a 3D stem, then stages of inception modules with 3D convolutions, global
average pooling.

Input (B, T, C, H, W) (a single frame (B, C, H, W) is read as T = 1); output (B, out_dim). Staged
(``mmlib.models.stages``): each inception module is a stage (``inception1``, ``inception2``, ...; a max-pool
between stages belongs to the module after it), maps (B, C, T, H, W); the Greedy paper's MMTMs sit in the six
final inception modules (greedy.md §6.1).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register
from .stages import global_mean


class Unit3d(nn.Sequential):
    """Conv3d -> BatchNorm3d -> ReLU, 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        padding = tuple(k // 2 for k in kernel)
        super().__init__(nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


class Inception3d(nn.Module):
    """Inception module of I3D: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | max-pool -> 1x1x1, concatenated.
    ``width`` is the channels of each of the four branches (out = 4 * width)."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.branch1 = Unit3d(cin, width)
        self.branch2 = nn.Sequential(Unit3d(cin, width), Unit3d(width, width, (3, 3, 3)))
        narrow = max(1, width // 2)
        self.branch3 = nn.Sequential(Unit3d(cin, narrow), Unit3d(narrow, width, (3, 3, 3)))
        self.branch4 = nn.Sequential(nn.MaxPool3d(3, 1, 1), Unit3d(cin, width))
        self.out_channels = 4 * width

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


@register("encoders", "i3d")
class I3DEncoder(nn.Module):
    """Stem: 7x7x7 conv (stride 1, 2, 2) and a spatial max-pool; then ``len(blocks)`` stages of inception
    modules (branch width ``width * 2**stage``), a (time, space) max-pool between stages; mean over time
    and space."""

    fused_modules = 6  # inception modules joined by MMTMs in the Greedy paper (the last six)

    def __init__(self, in_channels: int = 3, width: int = 16, blocks: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        if in_channels < 1 or width < 1 or not blocks or min(blocks) < 1:
            raise ValueError(f"i3d: in_channels, width and every entry of blocks must be >= 1, got "
                             f"{in_channels}, {width}, {list(blocks)}")
        self.stem = nn.Sequential(Unit3d(in_channels, 2 * width, (7, 7, 7), (1, 2, 2)),
                                  nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        layers, cin = [], 2 * width
        self.stage_channels, self._stage_layers, start = {}, {}, 0
        for stage, count in enumerate(blocks):
            if stage > 0:
                layers.append(nn.MaxPool3d(3, 2, 1))
            for _ in range(count):
                module = Inception3d(cin, width * 2**stage)
                layers.append(module)
                cin = module.out_channels
                name = f"inception{len(self.stage_channels) + 1}"
                self.stage_channels[name], self._stage_layers[name] = cin, (start, len(layers))
                start = len(layers)
        self.stages = nn.Sequential(*layers)
        self.stage_names = tuple(self.stage_channels)
        self.fusion_stages = self.stage_names[-self.fused_modules:]
        self.in_channels, self.out_dim = in_channels, cin

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The stem on (B, T, C, H, W) -> ((B, C', T', H', W'), 1): time stays inside the 3-D maps."""
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(f"i3d expects (B, T, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        return self.stem(x.transpose(1, 2)), 1

    def stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self._stage_layers:
            raise KeyError(f"i3d has no stage {name!r}; its stages are {', '.join(self.stage_names)}")
        start, stop = self._stage_layers[name]
        for i in range(start, stop):
            x = self.stages[i](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap, frames = self.enter(x)
        for name in self.stage_names:
            fmap = self.stage(name, fmap)
        return global_mean(fmap, frames)
