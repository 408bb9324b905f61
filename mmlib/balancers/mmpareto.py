"""MMPareto: boosting multimodal learning with innocent unimodal assistance (Wei & Hu, ICML 2024).

The loss is L = L^mm + sum_m L^m (the fused cross-entropy and each modality's unimodal cross-entropy). The fusion
module and head take the gradient of L. For each modality m, with g_mm and g_m the gradients of L^mm and of L^m on
encoder m, taken separately (the original calls ``zero_grad`` between the backward passes; BalanceMM accumulates
them), cos = <g_mm, g_m> / (|g_mm| |g_m|) over the whole encoder:
    cos > 0:  (w_mm, w_m) = (1/2, 1/2)
    else:     w_mm = <g_m - g_mm, g_m> / |g_mm - g_m|^2, w_m = 1 - w_mm     (MinNorm of two tasks, MGDA closed form:
                                                                         the minimum-norm point of their segment)
    g        = 2 (w_mm g_mm + w_m g_m)
and, per parameter tensor as the original codes it, g <- gamma max(1, |g_sum| / |g|) g, with g_sum the tensor's
gradient of L (``rescale``: the combined gradient is raised to the summed gradient's norm where it is smaller; gamma
= 1.5 in the original, hard-coded). Under dense fusion, g_sum also holds the other modalities' unimodal gradients
that reach encoder m through the fusion; g leaves them out, as the original does.

Unimodal logits (``protocol``): the original has a separate head per modality (``own_head``, what ``auto`` picks
under late fusion such as ``sum``); under ``concat`` (no head of its own per modality) ``auto`` is ``zero_feature``:
the concat head with the other features set to 0 (DGL Table 2's protocol for G-Blending, OGM-GE and MMPareto),
whose unimodal losses then also train the shared head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Balancer
from .common import require_modalities, resolve_protocol


@dataclass
class MMParetoConfig:
    gamma: float = 1.5  # scale of the final encoder gradient (the original's hard-coded value)
    rescale: bool = True  # raise the combined gradient to the summed gradient's norm, per tensor, where smaller
    protocol: str = "auto"  # unimodal logits: auto = own_head under late fusion (the original), else zero_feature


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(x.float() * y.float()).sum() for x, y in zip(a, b)]).sum()


def pareto_weights(g_mm: list[torch.Tensor], g_uni: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos(g_mm, g_uni), w_mm) over the concatenated tensors: w_mm = 1/2 when cos > 0, else the MinNorm weight
    <g_uni - g_mm, g_uni> / |g_mm - g_uni|^2 in [0, 1]."""
    v11, v12, v22 = _dot(g_mm, g_mm), _dot(g_mm, g_uni), _dot(g_uni, g_uni)
    cos = v12 / (v11.sqrt() * v22.sqrt()).clamp_min(1e-12)
    min_norm = ((v22 - v12) / (v11 + v22 - 2 * v12).clamp_min(1e-30)).clamp(0, 1)
    return cos, torch.where(cos > 0, torch.full_like(min_norm, 0.5), min_norm)


def pareto_gradients(g_mm: list[torch.Tensor], g_uni: list[torch.Tensor], g_sum: list[torch.Tensor],
                     gamma: float = 1.5, rescale: bool = True
                     ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(new gradient per tensor, cos, w_mm): g = 2 (w_mm g_mm + (1 - w_mm) g_uni), then gamma max(1, |g_sum| / |g|) g
    per tensor (``rescale``) or gamma g."""
    cos, w = pareto_weights(g_mm, g_uni)
    combined = [2 * (w * a + (1 - w) * b) for a, b in zip(g_mm, g_uni)]
    if not rescale:
        return [gamma * g for g in combined], cos, w
    out = []
    for g, total in zip(combined, g_sum):
        norm, total_norm = g.norm(), total.norm()
        factor = torch.where(norm > 0, (total_norm / norm.clamp_min(1e-30)).clamp_min(1.0), torch.ones_like(norm))
        out.append(gamma * factor * g)
    return out, cos, w


@register("balancers", "mmpareto")
class MMPareto(Balancer):
    Config = MMParetoConfig

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("mmpareto", model.modalities)
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        self.encoders = {m: [p for p in model.encoder_parameters(m) if p.requires_grad] for m in model.modalities}
        self.fusion = [p for p in model.fusion.parameters() if p.requires_grad]
        self.targets = [p for ps in self.encoders.values() for p in ps] + self.fusion
        self._state: dict[str, torch.Tensor] = {}

    def _grads(self, loss: torch.Tensor, retain: bool) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.targets, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.targets, grads)]

    def training_step(self, model, batch, optimizer):
        with self.info.autocast():
            out = model(batch.inputs)
            uni = model.unimodal_logits(batch.inputs, out, self.protocol)
        fused = F.cross_entropy(out.logits.float(), batch.label)
        unimodal = {m: F.cross_entropy(z.float(), batch.label) for m, z in uni.items()}
        g_mm = self._grads(fused, retain=True)
        g_uni = {m: self._grads(loss, retain=k < len(unimodal) - 1) for k, (m, loss) in enumerate(unimodal.items())}
        g_sum = [sum(gs) for gs in zip(g_mm, *g_uni.values())]
        new = list(g_sum)  # the fusion module and head keep the gradient of L
        cos, weights = {}, {}
        start = 0
        for m, params in self.encoders.items():
            part = slice(start, start + len(params))
            start += len(params)
            new[part], cos[m], weights[m] = pareto_gradients(g_mm[part], g_uni[m][part], g_sum[part],
                                                             self.cfg.gamma, self.cfg.rescale)
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.targets, new):
            p.grad = g.to(p.dtype)
        optimizer.step()
        loss = fused + torch.stack(list(unimodal.values())).sum()
        return {"loss": loss.detach(), "loss_fused": fused.detach(),
                **{f"loss_{m}": v.detach() for m, v in unimodal.items()},
                **{f"cos_{m}": c for m, c in cos.items()}, **{f"weight_fused_{m}": w for m, w in weights.items()}}
