"""RGB-D semantic segmentation in the style of ESANet (Seichter et al. 2021; DGL Table 5): two ResNet branches,
the depth features fused into the RGB pathway after every residual stage by squeeze-and-excitation and addition
(fused_k = SE_rgb(rgb_k) + SE_depth(depth_k)), a context module at 1/32 resolution and a light decoder that
upsamples by 2 three times, adding a 1x1 projection of the fused map of the same resolution (skip connections),
then per-pixel logits upsampled to the input size: (B, classes, H, W).

How it fits ``MultimodalModel(encoders, fusion)``:
- encoders (``resnet18_pyramid``, ``resnet34_pyramid``) return the four stage outputs (1/4 .. 1/32 of the
  input) packed into one tensor by space-to-depth (``F.pixel_unshuffle`` of each stage down to 1/32, channels
  stacked): (B, 120 * width, H/32, W/32); the packing is lossless, so ``features[m]`` is one tensor per
  modality that can be detached or zeroed like any other;
- the ``esanet`` fusion owns the SE blocks, the context module and the decoder: ``fusion(features)`` unpacks the
  stages, fuses and decodes. ``zero_feature`` sets the other branch's features to 0 at every fusion point
  (SE(0) = 0), so a modality's unimodal output runs its own branch through the shared fusion and decoder. DGL's
  unimodal losses are exactly these (the decoder with the other branch's features zeroed); its multimodal loss on
  detached features reaches only the fusion and decoder.

Parameters: each encoder is its modality's; the SE blocks that read one modality belong to it (the ownership
rule of mmlib.models.feature_fusion); context and decoder are shared.

``fuse_into``: by default (None) the branches run side by side and the fused maps go to the decoder only, so each
encoder is a function of its own modality and the zero_feature outputs are exact. ``fuse_into: rgb`` is ESANet's
own layout: the fused map of each stage is the input of the RGB branch's next stage. The fusion is then hybrid:
the RGB features already carry depth, and the RGB zero_feature output depends on the depth input (as MMTM's
does). ESANet's fusion after the stem (at 1/2 resolution) is left out; its NonBottleneck1D blocks are ResNet
basic blocks here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from .fusion import Fusion, ModelOutput
from .resnet import BasicBlock, ResNet

STAGES = ("layer1", "layer2", "layer3", "layer4")
STRIDES = (4, 8, 16, 32)  # input size / stage output size
PACK = tuple(STRIDES[-1] // s for s in STRIDES)  # space-to-depth factor of each stage down to 1/32
PACKED_PER_WIDTH = sum(2**k * f * f for k, f in enumerate(PACK))  # 64 + 32 + 16 + 8 = 120 channels per width


def pyramid_channels(out_dim: int) -> tuple[int, ...]:
    """Channels of the four stages of a pyramid encoder with packed output ``out_dim`` (width w: w, 2w, 4w, 8w)."""
    if out_dim % PACKED_PER_WIDTH:
        raise ValueError(f"out_dim {out_dim} is not a packed pyramid (not a multiple of {PACKED_PER_WIDTH}); "
                         f"the esanet fusion needs resnet*_pyramid encoders")
    width = out_dim // PACKED_PER_WIDTH
    return tuple(width * 2**k for k in range(len(STAGES)))


def pack(maps: list[torch.Tensor]) -> torch.Tensor:
    """Four stage outputs (strides 4 .. 32) -> one (B, sum C_k f_k^2, H/32, W/32) tensor."""
    return torch.cat([F.pixel_unshuffle(x, f) if f > 1 else x for x, f in zip(maps, PACK)], dim=1)


def unpack(packed: torch.Tensor, channels: tuple[int, ...]) -> list[torch.Tensor]:
    parts = torch.split(packed, [c * f * f for c, f in zip(channels, PACK)], dim=1)
    return [F.pixel_shuffle(x, f) if f > 1 else x for x, f in zip(parts, PACK)]


class PyramidResNet(ResNet):
    """A ResNet (basic blocks) whose output is its four stage maps packed at 1/32 (``pack``). Input
    (B, C, H, W), or (B, 1, C, H, W) as the loader serves one frame; H and W must be multiples of 32."""

    def __init__(self, layers: tuple[int, ...], in_channels: int = 3, width: int = 64):
        super().__init__(BasicBlock, layers, in_channels, width)
        self.stage_channels = tuple(width * 2**k for k in range(len(STAGES)))
        self.out_dim = width * PACKED_PER_WIDTH

    @staticmethod
    def check_image(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            if x.shape[1] != 1:
                raise ValueError(f"a pyramid encoder reads one frame per item, got {x.shape[1]} (set data.frames: 1)")
            x = x[:, 0]
        if x.dim() != 4 or x.shape[-2] % STRIDES[-1] or x.shape[-1] % STRIDES[-1]:
            raise ValueError(f"a pyramid encoder needs (B, C, H, W) with H and W multiples of {STRIDES[-1]}, got "
                             f"{tuple(x.shape)}")
        return x

    def image(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_image(x)
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.image(x))
        maps = []
        for stage in STAGES:
            x = getattr(self, stage)(x)
            maps.append(x)
        return pack(maps)


@register("encoders", "resnet18_pyramid")
def resnet18_pyramid(in_channels: int = 3, width: int = 64) -> PyramidResNet:
    return PyramidResNet((2, 2, 2, 2), in_channels, width)


@register("encoders", "resnet34_pyramid")
def resnet34_pyramid(in_channels: int = 3, width: int = 64) -> PyramidResNet:
    """ESANet's default encoder depth (3, 4, 6, 3)."""
    return PyramidResNet((3, 4, 6, 3), in_channels, width)


class SqueezeExcitation(nn.Module):
    """x * sigmoid(W2 relu(W1 mean_hw(x))) (Hu et al.), as in ESANet's fusion."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ContextModule(nn.Module):
    """A light pyramid pooling module at 1/32: the map beside its average-pooled versions on ``bins`` grids
    (each projected, upsampled back), merged by a 1x1 convolution."""

    def __init__(self, channels: int, out_channels: int, bins: tuple[int, ...] = (1, 5)):
        super().__init__()
        branch = max(1, channels // len(bins))
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(conv_bn_relu(channels, branch, 1) for _ in self.bins)
        self.merge = conv_bn_relu(channels + branch * len(self.bins), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(F.adaptive_avg_pool2d(x, (min(n, size[0]), min(n, size[1])))), size=size,
                                mode="bilinear", align_corners=False) for b, n in zip(self.branches, self.bins)]
        return self.merge(torch.cat([x, *pooled], dim=1))


@register("fusions", "esanet")
class ESANetFusion(Fusion):
    """SE-add fusion of two pyramid branches after each stage, context module and decoder (see the module
    docstring). ``dims``: the packed out_dim of each encoder (one width for both: the fused maps are sums).
    ``fuse_into``: None (side-by-side branches) or the modality whose next stage reads the fused map (ESANet:
    ``rgb``). ``reduction``: the SE blocks' channel reduction. Logits (B, classes, H, W)."""

    kind = "early"
    protocols = ("zero_feature", "zero_input")
    max_modalities = 2

    def __init__(self, dims, num_classes, fuse_into: str | None = None, reduction: int = 16,
                 context_bins: list[int] | tuple[int, ...] = (1, 5)):
        super().__init__(dims, num_classes)
        if len(dims) not in (1, 2) or len(set(dims.values())) != 1:  # one: a unimodal model (its pre-training)
            raise ValueError(f"esanet fuses one or two pyramid encoders of one width, got out_dims {dims}")
        if fuse_into is not None and fuse_into not in dims:
            raise ValueError(f"esanet: fuse_into must be one of {list(dims)} or null, got {fuse_into!r}")
        if reduction < 1 or not context_bins or min(context_bins) < 1:
            raise ValueError(f"esanet: reduction and context_bins must be >= 1, got {reduction}, {context_bins}")
        self.channels = pyramid_channels(next(iter(dims.values())))
        self.fuse_into = fuse_into
        if fuse_into is not None:
            self.kind = "hybrid"
        self.se = nn.ModuleDict({m: nn.ModuleList(SqueezeExcitation(c, reduction) for c in self.channels)
                                 for m in self.modalities})
        c1, c2, c3, c4 = self.channels
        self.context = ContextModule(c4, c3, tuple(context_bins))
        self.decode = nn.ModuleList([conv_bn_relu(c3, c3), conv_bn_relu(c3, c2), conv_bn_relu(c2, c1)])
        self.skips = nn.ModuleList(nn.Conv2d(c, c, 1) for c in (c3, c2, c1))
        self.classifier = nn.Conv2d(c1, num_classes, 3, padding=1)

    def fuse(self, stage: int, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.se[m][stage](maps[m]) for m in self.modalities)

    def run(self, encoders, inputs):
        missing = [m for m in self.modalities if not isinstance(encoders[m], PyramidResNet)]
        if missing:
            raise TypeError(f"esanet needs resnet*_pyramid encoders; {missing} are "
                            f"{[type(encoders[m]).__name__ for m in missing]}")
        if self.fuse_into is None:
            features = {m: encoders[m](inputs[m]) for m in self.modalities}
            return ModelOutput(self(features), features)
        x = {m: encoders[m].stem(encoders[m].image(inputs[m])) for m in self.modalities}
        maps: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        for k, stage in enumerate(STAGES):
            x = {m: getattr(encoders[m], stage)(x[m]) for m in self.modalities}
            for m in self.modalities:
                maps[m].append(x[m])
            x[self.fuse_into] = self.fuse(k, x)  # ESANet: the RGB branch continues from the fused map
        features = {m: pack(maps[m]) for m in self.modalities}
        return ModelOutput(self(features), features)

    def forward(self, features):
        stages = {m: unpack(features[m], self.channels) for m in self.modalities}
        fused = [self.fuse(k, {m: stages[m][k] for m in self.modalities}) for k in range(len(STAGES))]
        x = self.context(fused[3])
        for decode, skip, level in zip(self.decode, self.skips, (2, 1, 0)):
            x = F.interpolate(decode(x), size=fused[level].shape[-2:], mode="bilinear", align_corners=False)
            x = x + skip(fused[level])
        logits = self.classifier(x)
        return F.interpolate(logits, scale_factor=STRIDES[0], mode="bilinear", align_corners=False)

    def modality_parameters(self, modality):
        return list(self.se[modality].parameters())
