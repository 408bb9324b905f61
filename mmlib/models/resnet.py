"""ResNet18 / ResNet50 encoders with configurable input channels and base width.

Input (B, C, H, W), or (B, T, C, H, W) for frame sequences: frames are folded into the batch and the output is
mean-pooled over time and space, as in the public audio-visual code. Output: (B, out_dim) features. Staged
(``mmlib.models.stages``): stem, layer1..layer4; the Greedy paper's MMTMs sit after the last three (greedy.md
§6.1).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register
from .stages import fold_frames, global_mean


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    stage_names = ("layer1", "layer2", "layer3", "layer4")
    fusion_stages = ("layer2", "layer3", "layer4")

    def __init__(self, block: type, layers: tuple[int, ...], in_channels: int = 3, width: int = 64):
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels}, {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        self.stage_channels = {}
        for i, n in enumerate(layers):
            w = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
            self.stage_channels[self.stage_names[i]] = cin
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The stem on (B, C, H, W) or (B, T, C, H, W) (frames folded into the batch) -> (map, frames)."""
        x, frames = fold_frames(x)
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stem(x), frames

    def stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.stage_names:
            raise KeyError(f"ResNet has no stage {name!r}; its stages are {', '.join(self.stage_names)}")
        return getattr(self, name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap, frames = self.enter(x)
        for name in self.stage_names:
            fmap = self.stage(name, fmap)
        return global_mean(fmap, frames)


@register("encoders", "resnet18")
def resnet18(in_channels: int = 3, width: int = 64) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, width)


@register("encoders", "resnet50")
def resnet50(in_channels: int = 3, width: int = 64) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, width)
