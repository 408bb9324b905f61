"""Encoders of feature sequences (B, T, D): the per-step audio, vision and text features of MOSI-style data (the
MMSA toolkit's COVAREP / Facet / BERT features).

Padding: a time step whose features are all zero is padding (the toolkit zero-pads every sequence to a common
length and its loader sets the audio features' -inf to 0), so no mask travels beside the input; a sequence of
padding only (an input zeroed by the ``zero_input`` protocol) gives zero features. Each step is projected to
``width`` channels and layer-normalised (the raw features' scales differ by orders of magnitude between
modalities), then read by an LSTM (``seq_lstm``) or a pre-norm transformer (``seq_transformer``); the output is the
mean over the valid steps (or, for the LSTM, its output at the last valid step). Output: (B, width).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register

POOLINGS = ("mean", "last")


def step_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True where a step holds any non-zero feature."""
    return x.ne(0).any(dim=-1)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, C) over the steps where mask (B, T) holds; 0 for a row without any."""
    weights = mask.to(h.dtype).unsqueeze(-1)
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def last_valid(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (B, T, C) at each row's last valid step (0 for a row without any)."""
    steps = torch.arange(h.shape[1], device=h.device).expand_as(mask)
    last = torch.where(mask, steps, torch.zeros_like(steps)).amax(dim=1)
    picked = h.gather(1, last.view(-1, 1, 1).expand(-1, 1, h.shape[2])).squeeze(1)
    return picked * mask.any(dim=1, keepdim=True).to(h.dtype)


class SequenceEncoder(nn.Module):
    """Shared part: input check, projection of each step to ``width`` channels with a LayerNorm."""

    name = "sequence"

    def __init__(self, in_channels: int, width: int, pooling: str):
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"{self.name}: in_channels and width must be >= 1, got {in_channels}, {width}")
        if pooling not in POOLINGS:
            raise ValueError(f"{self.name}: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.in_channels, self.out_dim, self.pooling = in_channels, width, pooling
        self.project = nn.Sequential(nn.Linear(in_channels, width), nn.LayerNorm(width))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected steps (B, T, width), valid-step mask (B, T)); a step's projection is 0 where it is padding."""
        if x.dim() != 3 or not x.is_floating_point():
            raise ValueError(f"{self.name} expects float features (B, T, D), got {tuple(x.shape)} {x.dtype} "
                             f"(token ids go to the text_bert encoder)")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"{self.name}: the input has {x.shape[-1]} features per step, the encoder was built "
                             f"with in_channels={self.in_channels} (set model.encoders.<modality>.in_channels)")
        mask = step_mask(x)
        return self.project(x) * mask.unsqueeze(-1).to(x.dtype), mask

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return last_valid(h, mask) if self.pooling == "last" else masked_mean(h, mask)


@register("encoders", "seq_lstm")
class LSTMSequenceEncoder(SequenceEncoder):
    """A ``layers``-deep unidirectional LSTM of ``width`` channels over the projected steps. Padding sits at the
    end of a sequence, so the valid steps' outputs never read it (no packing, no host synchronisation)."""

    name = "seq_lstm"

    def __init__(self, in_channels: int = 20, width: int = 64, layers: int = 1, dropout: float = 0.0,
                 pooling: str = "mean"):
        super().__init__(in_channels, width, pooling)
        if layers < 1:
            raise ValueError(f"seq_lstm: layers must be >= 1, got {layers}")
        self.lstm = nn.LSTM(width, width, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = self.embed(x)
        out, _ = self.lstm(h)
        return self.pool(out, mask)


@register("encoders", "seq_transformer")
class TransformerSequenceEncoder(SequenceEncoder):
    """``depth`` pre-norm transformer layers (``heads`` heads, MLP ``mlp_ratio`` x width) over the projected steps
    plus learned position embeddings (``max_length`` positions); padding steps are masked out of the attention.
    Mean pooling over the valid steps."""

    name = "seq_transformer"

    def __init__(self, in_channels: int = 20, width: int = 64, depth: int = 2, heads: int = 4,
                 max_length: int = 512, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__(in_channels, width, "mean")
        if depth < 1 or heads < 1 or max_length < 1 or width % heads:
            raise ValueError(f"seq_transformer: depth, heads, max_length must be >= 1 and width divisible by "
                             f"heads, got depth={depth}, heads={heads}, max_length={max_length}, width={width}")
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.max_length = max_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] > self.max_length:
            raise ValueError(f"seq_transformer: {x.shape[1]} steps exceed max_length={self.max_length}")
        h, mask = self.embed(x)
        h = h + self.position[: h.shape[1]]
        # a row of padding only attends to its first step (else its softmax has no finite entry)
        ignore = ~mask
        ignore[:, 0] &= mask.any(dim=1)
        h = self.layers(h, src_key_padding_mask=ignore)
        return self.pool(self.norm(h), mask)
