"""Joint training without rebalancing, and unimodal baselines."""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import register
from .base import Balancer


@register("balancers", "naive")
class Naive(Balancer):
    """Joint training: cross-entropy on the fused logits."""


@dataclass
class UnimodalConfig:
    modality: str = "audio"  # the one modality the model is built with


@register("balancers", "unimodal")
class Unimodal(Balancer):
    """Unimodal baseline: the model is built on ``modality`` alone (its encoder and head) and trained with CE."""

    Config = UnimodalConfig

    def modalities(self, available):
        if self.cfg.modality not in available:
            raise ValueError(f"balancer.params.modality {self.cfg.modality!r} is not among the data's "
                             f"modalities {available}")
        return [self.cfg.modality]
