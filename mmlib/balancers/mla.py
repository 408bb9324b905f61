"""MLA: multimodal representation learning by alternating unimodal adaptation (Zhang, Yoon, Bansal & Yao, CVPR
2024).

Joint training becomes alternating unimodal training through one head shared by every modality (the
``shared_head`` fusion). Per batch: one forward pass of the encoders, then for each modality m in turn
logits_m = W h^m + b, L^m = CE(logits_m, y), backward (encoder m and the head), the head's weight gradient projected,
an optimizer step. The projection (orthogonal weight modification, OWM) keeps the head's responses to what it
learned before: with s the batch mean of h^m and alpha_t = 0.1^(1 + b / N) (b: the batch's index in the epoch, N:
batches per epoch; the public code's schedule),
    q = P s,   P <- P - q q^T / (alpha_t + s^T q),   grad_W <- grad_W P^T
so a step moves W s' by about alpha_t / (alpha_t + |s'|^2) of the unprojected move for a mean feature s' that P has
absorbed (for earlier modalities and the current one alike). The bias is not projected. P is the identity of the
head's input size at the start (the public code and BalanceMM hard-code eye(512)) and is carried across batches
and epochs. The fused prediction at inference is the entropy-weighted sum of the unimodal logits
(``SharedHeadFusion.gating``).

Public code (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, ``utils.GSPlugin``):
- ``projector_norm: frobenius``: P is divided by its Frobenius norm after every update;
- its denominator is ``alpha + mm(k, r)`` with k = P s a column and r = s a row, an outer product (an elementwise
  division by a D x D matrix), not the scalar s^T P s of the OWM rule; not offered;
- at HEAD (commit 11ae1ee "Fix bugs") the projection only acts on a parameter named ``module.weight``, which the
  plain ``fc_out`` Linear it is given does not have, so the head is never projected (``projection: false``); the
  previous commit 4735bbc also matched ``weight``;
- the first step of a run is neither projected nor absorbed into P; here every step is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.fusion import SharedHeadFusion
from ..registry import register
from .base import Balancer
from .common import check_choice, require_modalities

PROJECTOR_NORMS = ("none", "frobenius")


@dataclass
class MLAConfig:
    projection: bool = True  # OWM projection of the shared head's weight gradient
    projector_norm: str = "none"  # none (the OWM recursion) | frobenius (public code: P / ||P||_F per update)


def owm_alpha(batch_index: int, batches_per_epoch: int) -> float:
    """alpha_t = 0.1^(1 + b / N): 0.1 at an epoch's first batch, towards 0.01 at its last."""
    return 0.1 ** (1 + batch_index / max(1, batches_per_epoch))


@torch.no_grad()
def owm_update(projector: torch.Tensor, mean_input: torch.Tensor, alpha: float, norm: str = "none") -> torch.Tensor:
    """P - q q^T / (alpha + s^T q) with q = P s (recursive least squares: P stays symmetric, P s -> 0 as alpha / (
    alpha + |s|^2) for a P that starts as the identity); ``norm="frobenius"`` divides the result by its Frobenius
    norm."""
    s = mean_input.float()
    q = projector @ s
    updated = projector - torch.outer(q, q) / (alpha + s @ q)
    return updated / torch.linalg.matrix_norm(updated) if norm == "frobenius" else updated


@register("balancers", "mla")
class MLA(Balancer):
    Config = MLAConfig

    def __init__(self, **params):
        super().__init__(**params)
        check_choice("mla.projector_norm", self.cfg.projector_norm, PROJECTOR_NORMS)

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("mla", model.modalities)
        if not isinstance(model.fusion, SharedHeadFusion):
            raise ValueError(f"mla needs a head shared by every modality (model.fusion.name: shared_head); the "
                             f"model's fusion is {type(model.fusion).__name__}")
        self.head = model.fusion.head
        self.projector = torch.eye(self.head.in_features, device=info.device)
        self.batch_index = 0

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        self.batch_index = 0

    def training_step(self, model, batch, optimizer):
        with self.info.autocast():
            features = model(batch.inputs).features
        alpha = owm_alpha(self.batch_index, self.info.steps_per_epoch)
        losses = {}
        for m in model.modalities:  # each modality its own backward and optimizer step, in turn
            optimizer.zero_grad(set_to_none=True)
            with self.info.autocast():
                logits = self.head(features[m])
            loss = F.cross_entropy(logits.float(), batch.label)
            loss.backward()
            if self.cfg.projection:
                self.projector = owm_update(self.projector, features[m].detach().float().mean(0), alpha,
                                            self.cfg.projector_norm)
                self.head.weight.grad = self.head.weight.grad @ self.projector.T
            optimizer.step()
            losses[m] = loss.detach()
        self.batch_index += 1
        return {"loss": torch.stack(list(losses.values())).mean(), **{f"loss_{m}": v for m, v in losses.items()}}

    def state_dict(self):
        return {"projector": self.projector.cpu(), "batch_index": self.batch_index}

    def load_state_dict(self, state):
        self.projector = state["projector"].to(self.info.device)
        self.batch_index = int(state["batch_index"])
