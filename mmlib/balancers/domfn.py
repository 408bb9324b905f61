"""DOMFN: divergence-orientated multimodal fusion (Yang et al., ACM MM 2022), as a training strategy.

Per sample i, with p_k = softmax of modality k's unimodal logits and p_f = softmax of the fused logits:
    d_k,i  = max_c (p_k,ic - p_f,ic)^2                                   (functional penalty score)
    fuse_i = all_k d_k,i / tau < gamma                                   (cross-modal divergence small enough)
    L_i    = sum_k (CE_k,i^2 / 2 - eta d_k,i)  +  fuse_i * (sum_k CE_k,i + CE_f,i)
For samples that are not fused the fused prediction is held fixed (detached) in d_k, so, as in the public code's
two branches, only the unimodal paths learn from them. The inference-time switch (predict with the more confident
modality when the divergence is too large) is not applied: evaluation uses the fused logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Balancer
from .common import require_modalities, resolve_protocol


@dataclass
class DOMFNConfig:
    eta: float = 0.1  # weight of the divergence reward in the unimodal losses
    tau: float = 1.0  # penalty scale
    gamma: float = 0.25  # fuse a sample while every d_k / tau < gamma
    protocol: str = "auto"  # unimodal heads: auto = own_head/head_split under late fusion, else zero_feature


def penalty_scores(unimodal_logits: dict[str, torch.Tensor], fused_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """d_k,i = max_c (softmax(z_k)_ic - softmax(z_f)_ic)^2, (B,) per modality."""
    p_f = torch.softmax(fused_logits.float(), dim=1)
    return {m: (torch.softmax(z.float(), dim=1) - p_f).square().amax(dim=1) for m, z in unimodal_logits.items()}


def domfn_loss(unimodal_logits: dict[str, torch.Tensor], fused_logits: torch.Tensor, labels: torch.Tensor,
               eta: float, tau: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(batch-mean loss, fraction of fused samples, mean penalty per modality)."""
    with torch.no_grad():
        scores = penalty_scores(unimodal_logits, fused_logits)
        fuse = torch.stack([d / tau < gamma for d in scores.values()]).all(0)
    held = torch.where(fuse[:, None], fused_logits.float(), fused_logits.float().detach())
    penalties = penalty_scores(unimodal_logits, held)
    ce = {m: F.cross_entropy(z.float(), labels, reduction="none") for m, z in unimodal_logits.items()}
    ce_fused = F.cross_entropy(fused_logits.float(), labels, reduction="none")
    unimodal = sum(0.5 * ce[m].square() - eta * penalties[m] for m in ce)
    fused = fuse.float() * (sum(ce.values()) + ce_fused)
    return (unimodal + fused).mean(), fuse.float().mean(), {m: d.mean() for m, d in scores.items()}


@register("balancers", "domfn")
class DOMFN(Balancer):
    Config = DOMFNConfig

    def __init__(self, **params):
        super().__init__(**params)
        if self.cfg.tau <= 0 or self.cfg.eta < 0:
            raise ValueError(f"domfn: tau must be > 0 and eta >= 0, got {self.cfg.tau}, {self.cfg.eta}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("domfn", model.modalities)
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        self._state: dict[str, torch.Tensor] = {}

    def loss(self, model, out, batch):
        uni = model.unimodal_logits(batch.inputs, out, self.protocol)
        loss, fused, penalties = domfn_loss(uni, out.logits, batch.label, self.cfg.eta, self.cfg.tau, self.cfg.gamma)
        self._state = {"fused_fraction": fused, **{f"penalty_{m}": d for m, d in penalties.items()}}
        return loss

    def state(self):
        return dict(self._state)
