"""Fusion modules. Each declares its per-modality parameters and shared parameters, and how it yields
unimodal logits under the named protocols:

- ``zero_feature``: the other modalities' features set to 0, the full head (and full bias);
- ``head_split``: the modality's own block of the head, bias / M (OGM-GE, AMSS, PMR);
- ``zero_input``: the other inputs zeroed through the whole network (handled by MultimodalModel);
- ``own_head``: a dedicated unimodal head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..registry import register

PROTOCOLS = ("zero_feature", "head_split", "zero_input", "own_head")


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, classes) fused prediction
    features: dict[str, torch.Tensor]  # per-modality features the fusion consumed
    extras: dict = field(default_factory=dict)  # fusion-specific outputs (per-branch logits, evidence, ...)


class Fusion(nn.Module):
    """Base class. ``kind`` is late (per-modality heads combined), early or hybrid (inside the encoders)."""

    kind = "early"
    protocols: tuple[str, ...] = ("zero_feature", "zero_input")
    max_modalities: int | None = None

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        if len(dims) < 1:
            raise ValueError("a fusion needs at least one modality")
        if self.max_modalities is not None and len(dims) > self.max_modalities:
            raise ValueError(f"{type(self).__name__} supports at most {self.max_modalities} modalities, "
                             f"got {len(dims)}: {', '.join(dims)}")
        self.dims, self.num_classes = dict(dims), num_classes
        self.modalities = list(dims)

    @classmethod
    def from_encoders(cls, encoders: dict[str, nn.Module], num_classes: int, **params) -> "Fusion":
        """The fusion for these encoders (what ``build_model`` calls): from their feature widths ``out_dim``;
        fusions acting inside the encoders read more of them (mmlib.models.cnn_fusion)."""
        return cls({m: e.out_dim for m, e in encoders.items()}, num_classes, **params)

    def run(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        """Encode each modality, then fuse. Hybrid fusions override this to act inside the encoders."""
        features = {m: encoders[m](inputs[m]) for m in self.modalities}
        return ModelOutput(self(features), features)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def unimodal(self, features: dict[str, torch.Tensor], modality: str, protocol: str) -> torch.Tensor:
        if protocol == "zero_feature":
            return self({m: f if m == modality else torch.zeros_like(f) for m, f in features.items()})
        raise ValueError(f"{type(self).__name__} does not support the {protocol!r} protocol; "
                         f"it supports {', '.join(self.protocols)}")

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """The head's parameters that belong to ``modality`` alone."""
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that mix modalities. Default: every fusion parameter not owned by a modality."""
        owned = {id(p) for m in self.modalities for p in self.modality_parameters(m)}
        return [p for p in self.parameters() if id(p) not in owned]


@register("fusions", "concat")
class ConcatFusion(Fusion):
    """Linear head on the concatenated features, stored as one weight block per modality plus a shared bias
    (identical to ``Linear(sum(dims), classes)``), so each block is that modality's part of the head."""

    kind = "early"
    protocols = ("zero_feature", "head_split", "zero_input")

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__(dims, num_classes)
        bound = 1.0 / math.sqrt(sum(dims.values()))
        self.blocks = nn.ModuleDict({m: nn.Linear(d, num_classes, bias=False) for m, d in dims.items()})
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))
        for block in self.blocks.values():
            nn.init.uniform_(block.weight, -bound, bound)

    def forward(self, features):
        return sum(self.blocks[m](features[m]) for m in self.modalities) + self.bias

    def unimodal(self, features, modality, protocol):
        if protocol == "head_split":
            return self.blocks[modality](features[modality]) + self.bias / len(self.modalities)
        if protocol == "zero_feature":
            return self.blocks[modality](features[modality]) + self.bias
        return super().unimodal(features, modality, protocol)

    def modality_parameters(self, modality):
        return list(self.blocks[modality].parameters())


@register("fusions", "sum")
class SumFusion(Fusion):
    """Prediction summation: a linear head per modality, logits summed (late fusion)."""

    kind = "late"
    protocols = ("zero_feature", "head_split", "own_head", "zero_input")

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__(dims, num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})

    def forward(self, features):
        return sum(self.heads[m](features[m]) for m in self.modalities)

    def unimodal(self, features, modality, protocol):
        if protocol in ("head_split", "own_head"):
            return self.heads[modality](features[modality])
        return super().unimodal(features, modality, protocol)

    def modality_parameters(self, modality):
        return list(self.heads[modality].parameters())


class AveragedHeadsFusion(Fusion):
    """Base for fusions with a linear head per modality whose prediction is the mean of the branch logits
    (Greedy's MMTM model, MBT). ``own_head`` is a branch's logits; each head belongs to its modality."""

    def make_heads(self) -> None:
        self.heads = nn.ModuleDict({m: nn.Linear(d, self.num_classes) for m, d in self.dims.items()})

    def branch_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.heads[m](features[m]) for m in self.modalities}

    def averaged_output(self, features: dict[str, torch.Tensor]) -> ModelOutput:
        branches = self.branch_logits(features)
        return ModelOutput(torch.stack(list(branches.values())).mean(dim=0), features, {"branch_logits": branches})

    def forward(self, features):
        return torch.stack(list(self.branch_logits(features).values())).mean(dim=0)

    def unimodal(self, features, modality, protocol):
        if protocol == "own_head":
            return self.heads[modality](features[modality])
        return super().unimodal(features, modality, protocol)

    def modality_parameters(self, modality):
        return list(self.heads[modality].parameters())


GATINGS = ("sample", "batch", "mean")


def entropy_gates(logits: torch.Tensor, gating: str) -> torch.Tensor:
    """Weights (K, B) of K modalities' logits (K, B, C) for MLA's test-time fusion, w_m = exp(H_max - H_m) /
    sum_k exp(H_max - H_k) = softmax_m(-H_m): ``sample``, H_m,i the entropy of softmax(logits_m,i) (MLA paper);
    ``batch``, H_m the entropy of a softmax over the batch axis summed over the batch (the public code's
    ``calculate_entropy``, one weight per modality and batch); ``mean``, equal weights."""
    z = logits.float()
    if gating == "mean":
        return torch.full(z.shape[:2], 1.0 / z.shape[0], device=z.device)
    if gating == "sample":
        logp = torch.log_softmax(z, dim=2)
        entropy = -(logp.exp() * logp).sum(dim=2)  # (K, B)
    elif gating == "batch":
        logp = torch.log_softmax(z, dim=1)
        entropy = -(logp.exp() * logp).sum(dim=(1, 2))[:, None].expand(z.shape[:2])  # (K, B), constant in B
    else:
        raise ValueError(f"gating must be one of {', '.join(GATINGS)}, got {gating!r}")
    return torch.softmax(-entropy, dim=0)


@register("fusions", "shared_head")
class SharedHeadFusion(Fusion):
    """One linear head shared by every modality (MLA, Zhang et al. CVPR 2024): logits_m = W h^m + b, so every
    modality's features have the same size. The fused prediction is the mean of the unimodal logits in training
    mode and, in eval mode, MLA's test-time fusion sum_m w_m logits_m with the weights of ``entropy_gates``
    (``gating``: sample (paper) | batch (public code; a prediction then depends on its evaluation batch) | mean
    (the public code without ``--dynamic``)). ``own_head`` is the shared head on one modality's features; the head
    mixes every modality, so it is a shared parameter."""

    kind = "late"
    protocols = ("own_head", "zero_feature", "zero_input")

    def __init__(self, dims: dict[str, int], num_classes: int, gating: str = "sample"):
        super().__init__(dims, num_classes)
        sizes = sorted(set(dims.values()))
        if len(sizes) != 1:
            raise ValueError(f"shared_head fusion needs features of one size for every modality, got {dims}")
        if gating not in GATINGS:
            raise ValueError(f"shared_head fusion: gating must be one of {', '.join(GATINGS)}, got {gating!r}")
        self.gating = gating
        self.head = nn.Linear(sizes[0], num_classes)

    def forward(self, features):
        logits = torch.stack([self.head(features[m]) for m in self.modalities])  # (K, B, C)
        if self.training:
            return logits.mean(dim=0)
        return (entropy_gates(logits, self.gating).unsqueeze(-1).to(logits.dtype) * logits).sum(dim=0)

    def unimodal(self, features, modality, protocol):
        if protocol == "own_head":
            return self.head(features[modality])
        return super().unimodal(features, modality, protocol)
