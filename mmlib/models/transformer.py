"""ViT / AST-style transformer encoder for frames and spectrograms, and the multimodal bottleneck transformer
(MBT, Nagrani et al. 2021; amss.md Table 4) built on it.

Attention keeps separate q/k/v/out projections laid out head by head, so head h owns a contiguous slice; each
such weight carries ``p.mask_unit = ("head", num_heads, dim)`` ("split along ``dim`` into num_heads equal
slices"), the head-wise mask unit of AMSS (amss.md App. C.2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from .fusion import AveragedHeadsFusion


def mark_heads(linear: nn.Linear, heads: int, dim: int) -> None:
    """Tag ``linear``'s weight (and, for output-side slices, its bias) as ``heads`` slices along ``dim``."""
    linear.weight.mask_unit = ("head", heads, dim)
    if dim == 0 and linear.bias is not None:
        linear.bias.mask_unit = ("head", heads, 0)


class HeadwiseAttention(nn.Module):
    """Multi-head self-attention; head h uses rows [h*d, (h+1)*d) of q/k/v and the same columns of out."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        for linear in (self.q, self.k, self.v):
            mark_heads(linear, heads, 0)
        mark_heads(self.out, heads, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def split(t):  # (B, N, D) -> (B, heads, N, D / heads)
            return t.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = max(1, int(dim * mlp_ratio))
        self.norm1, self.attention = nn.LayerNorm(dim), HeadwiseAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register("encoders", "vit")
class ViTEncoder(nn.Module):
    """ViT (images, frames) / AST (spectrograms) encoder: non-overlapping ``patch_size`` patches of an
    ``input_size`` input, learned position embeddings (bilinearly resized when an input has another size), a
    CLS token, ``depth`` pre-norm blocks of ``width`` channels and ``heads`` heads; output: the normalised CLS
    token, (B, width). Input (B, C, H, W), or (B, T, C, H, W) with T <= ``max_frames``: the patches of all
    frames form one sequence, each frame with its own learned time embedding."""

    def __init__(self, in_channels: int = 3, width: int = 192, depth: int = 4, heads: int = 3,
                 patch_size: int = 16, input_size: tuple[int, int] = (224, 224), max_frames: int = 1,
                 mlp_ratio: float = 4.0):
        super().__init__()
        sizes = {"in_channels": in_channels, "width": width, "depth": depth, "heads": heads,
                 "patch_size": patch_size, "max_frames": max_frames}
        for key, value in sizes.items():
            if value < 1:
                raise ValueError(f"vit: {key} must be >= 1, got {value}")
        height, width_px = input_size
        self.grid = (height // patch_size, width_px // patch_size)
        if min(self.grid) < 1:
            raise ValueError(f"vit: input_size {tuple(input_size)} is smaller than patch_size {patch_size}")
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, width, *self.grid) * 0.02)
        self.time_embed = nn.Parameter(torch.zeros(max_frames, width))
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out_dim, self.max_frames = width, max_frames

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + T * patches, width): CLS token, then the embedded patches of every frame."""
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.dim() != 5:
            raise ValueError(f"vit expects (B, C, H, W) or (B, T, C, H, W), got shape {tuple(x.shape)}")
        batch, frames = x.shape[:2]
        if frames > self.max_frames:
            raise ValueError(f"vit got {frames} frames but was built with max_frames={self.max_frames}")
        patches = self.patch_embed(x.flatten(0, 1))  # (B*T, width, gh, gw)
        pos = self.pos_embed
        if patches.shape[2:] != pos.shape[2:]:
            pos = F.interpolate(pos, size=patches.shape[2:], mode="bilinear", align_corners=False)
        patches = (patches + pos).flatten(2).transpose(1, 2)  # (B*T, N, width)
        patches = patches.view(batch, frames, -1, self.out_dim) + self.time_embed[:frames, None, :]
        return torch.cat([self.cls_token.expand(batch, -1, -1), patches.flatten(1, 2)], dim=1)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.pool(t)


@register("fusions", "mbt")
class MBTFusion(AveragedHeadsFusion):
    """Multimodal bottleneck transformer (MBT; amss.md Table 4) over ``vit`` encoders of one width and depth.
    Layers before ``fusion_layer`` run per modality; from then on each modality's layer reads its tokens plus
    ``bottlenecks`` shared bottleneck tokens, and the bottleneck is the mean of the K updated copies, so the
    modalities exchange information only through it. A linear head per modality reads its CLS token; the
    prediction is the mean of the heads' logits (per-head logits in ``extras["branch_logits"]``)."""

    kind = "hybrid"
    protocols = ("own_head", "zero_feature", "zero_input")

    def __init__(self, dims, num_classes, fusion_layer: int = 2, bottlenecks: int = 4):
        super().__init__(dims, num_classes)
        widths = set(dims.values())
        if len(widths) != 1:
            raise ValueError(f"mbt needs encoders of one width (the bottleneck is shared), got {dims}")
        if fusion_layer < 0 or bottlenecks < 1:
            raise ValueError(f"mbt: fusion_layer must be >= 0 and bottlenecks >= 1, got {fusion_layer}, "
                             f"{bottlenecks}")
        width = widths.pop()
        self.fusion_layer = fusion_layer
        self.bottleneck = nn.Parameter(torch.randn(1, bottlenecks, width) * 0.02)
        self.make_heads()

    def run(self, encoders, inputs):
        depths = {}
        for m in self.modalities:
            if not all(hasattr(encoders[m], name) for name in ("tokens", "blocks", "pool")):
                raise TypeError(f"mbt needs vit encoders; the {m!r} encoder is {type(encoders[m]).__name__}")
            depths[m] = len(encoders[m].blocks)
        if len(set(depths.values())) != 1 or self.fusion_layer >= min(depths.values()):
            raise ValueError(f"mbt needs encoders of one depth greater than fusion_layer="
                             f"{self.fusion_layer}, got depths {depths}")
        tokens = {m: encoders[m].tokens(inputs[m]) for m in self.modalities}
        for m in self.modalities:
            for block in encoders[m].blocks[:self.fusion_layer]:
                tokens[m] = block(tokens[m])
        batch = next(iter(tokens.values())).shape[0]
        bottleneck = self.bottleneck.expand(batch, -1, -1)
        for layer in range(self.fusion_layer, depths[self.modalities[0]]):
            updated = []
            for m in self.modalities:
                n = tokens[m].shape[1]
                y = encoders[m].blocks[layer](torch.cat([tokens[m], bottleneck.to(tokens[m].dtype)], dim=1))
                tokens[m] = y[:, :n]
                updated.append(y[:, n:])
            bottleneck = torch.stack(updated).mean(dim=0)
        features = {m: encoders[m].pool(tokens[m]) for m in self.modalities}
        return self.averaged_output(features)
