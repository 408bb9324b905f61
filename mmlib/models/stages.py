"""The staged-encoder interface: how a hybrid fusion (MMTM, ``mmlib.models.cnn_fusion``) runs a CNN encoder one
stage at a time and acts on the feature maps between stages.

A staged encoder declares
- ``stage_names``: its stages, in order (ResNet: layer1..layer4);
- ``stage_channels``: ``{stage: channels of the map after it}``;
- ``fusion_stages``: the stages after which its paper puts the fusion modules (ResNet: the last three);
- ``enter(x) -> (map, frames)``: the stem on the encoder's input; 2-D CNNs fold a (B, T, C, H, W) frame sequence
  into the batch, so ``frames`` is T (1 for single images and for 3-D CNNs, whose maps are (B, C, T, H, W));
- ``stage(name, map) -> map``.
Its features are ``global_mean`` of the last map: the mean over everything but batch and channel (space, and time
for 3-D maps), then over the frames folded into the batch, which is what its ``forward`` returns.
"""
from __future__ import annotations

import torch

STAGED_ATTRIBUTES = ("stage_names", "stage_channels", "fusion_stages", "enter", "stage")


def is_staged(encoder) -> bool:
    return all(hasattr(encoder, name) for name in STAGED_ATTRIBUTES)


def fold_frames(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, T, C, H, W) -> ((B*T, C, H, W), T); a (B, C, H, W) batch is returned as it is with T = 1."""
    if x.dim() == 5:
        return x.flatten(0, 1), x.shape[1]
    return x, 1


def global_mean(fmap: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*frames, C, ...) -> (B, C): the mean over every dimension after the channels, then over the frames."""
    return fmap.mean(dim=tuple(range(2, fmap.dim()))).view(-1, frames, fmap.shape[1]).mean(dim=1)
