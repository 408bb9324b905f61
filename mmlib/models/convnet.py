"""A four-layer CNN: the uni-modal branch of the Greedy paper's Colored-and-gray-MNIST model (greedy.md §6.1: "a
neural network with four convolutional layers as the uni-modal branch and three MMTMs to connect them").

The paper gives no more detail; our reading: four 3x3 convolution -> batch norm -> ReLU layers of widths
``width * (1, 2, 4, 8)``, a 2x2 max-pool (ceil mode, so small inputs stay valid) after each of the first three,
global average pooling. Staged (``mmlib.models.stages``): the stages are conv1..conv4 and the three MMTMs sit
after conv2, conv3 and conv4 (as in the ResNet model, after the last three stages).

Input (B, C, H, W), or (B, T, C, H, W) with frames folded into the batch and mean-pooled; output (B, out_dim).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register
from .stages import fold_frames, global_mean


@register("encoders", "convnet4")
class ConvNet4(nn.Module):
    stage_names = ("conv1", "conv2", "conv3", "conv4")
    fusion_stages = ("conv2", "conv3", "conv4")

    def __init__(self, in_channels: int = 3, width: int = 16):
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"convnet4: in_channels and width must be >= 1, got {in_channels}, {width}")
        self.stage_channels, cin = {}, in_channels
        for i, name in enumerate(self.stage_names):
            cout = width * 2**i
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if i < len(self.stage_names) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            setattr(self, name, nn.Sequential(*layers))
            self.stage_channels[name], cin = cout, cout
        self.in_channels, self.out_dim = in_channels, cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """No stem: the input itself (frames folded into the batch) -> (map, frames)."""
        x, frames = fold_frames(x)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"convnet4 expects (B, {self.in_channels}, H, W) or (B, T, {self.in_channels}, "
                             f"H, W), got shape {tuple(x.shape)}")
        if self.conv1[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return x, frames

    def stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.stage_names:
            raise KeyError(f"convnet4 has no stage {name!r}; its stages are {', '.join(self.stage_names)}")
        return getattr(self, name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap, frames = self.enter(x)
        for name in self.stage_names:
            fmap = self.stage(name, fmap)
        return global_mean(fmap, frames)
