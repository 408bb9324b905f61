"""MultimodalModel: per-modality encoders joined by a fusion module."""
from __future__ import annotations

import torch
from torch import nn

from ..data.loader import COPY_SUFFIX
from ..registry import get
from .fusion import Fusion, ModelOutput


class MultimodalModel(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: Fusion):
        super().__init__()
        if list(encoders) != fusion.modalities:
            raise ValueError(f"encoders {list(encoders)} and fusion modalities {fusion.modalities} differ")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.modalities = list(encoders)

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(f"inputs lack modalities {missing}; got {list(inputs)}")
        return self.fusion.run(self.encoders, inputs)

    def unimodal_logits(self, inputs: dict[str, torch.Tensor], out: ModelOutput, protocol: str,
                        modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Per-modality logits under a named protocol (see mmlib.models.fusion)."""
        result = {}
        for m in modalities or self.modalities:
            if protocol == "zero_input":
                zeroed = {k: x if k == m else torch.zeros_like(x) for k, x in inputs.items()}
                result[m] = self(zeroed).logits
            else:
                result[m] = self.fusion.unimodal(out.features, m, protocol)
        return result

    def encoder_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.encoders[modality].parameters())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{modality: encoder + its part of the head, "shared": the rest}``; every parameter exactly once.
        Modules that mix modalities inside the encoders (hybrid fusions) declare theirs as shared."""
        groups = {m: self.encoder_parameters(m) + self.fusion.modality_parameters(m) for m in self.modalities}
        groups["shared"] = self.fusion.shared_parameters()
        return groups


def build_model(model_cfg, modality_channels: dict[str, int], num_classes: int) -> MultimodalModel:
    """Model from a ModelConfig: ``encoders: {modality: {name, **params}}`` and ``fusion: {name, **params}``.
    A duplicated modality ``<m>_copy`` without an entry of its own gets ``<m>``'s spec (and weights of its
    own)."""
    encoders = {}
    for m, channels in modality_channels.items():
        spec = model_cfg.encoders.get(m)
        if spec is None and m.endswith(COPY_SUFFIX):
            spec = model_cfg.encoders.get(m[: -len(COPY_SUFFIX)])
        if spec is None:
            raise KeyError(f"model.encoders has no entry for modality {m!r}; it has {list(model_cfg.encoders)}")
        spec = dict(spec)
        name = spec.pop("name")
        spec.setdefault("in_channels", channels)
        encoders[m] = get("encoders", name)(**spec)
    fspec = dict(model_cfg.fusion)
    fusion_cls = get("fusions", fspec.pop("name"))
    return MultimodalModel(encoders, fusion_cls.from_encoders(encoders, num_classes, **fspec))
