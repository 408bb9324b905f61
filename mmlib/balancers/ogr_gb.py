"""OGR-GB: Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020, "What makes training multi-modal classification
networks hard?"), online version.

The loss blends the fused head and each modality's unimodal head: L = sum_k w_k CE(logits_k), k in {fused, m_1..m_K}.
Every super-epoch of n epochs, with L^T / L^V the train / validation losses of each head at the start (N) and end
(N + n) of the super-epoch:
    O_N    = L^V_N - L^T_N                           (overfitting)
    dG_k   = L^V_N - L^V_{N+n}                       (generalisation gain)
    dO_k   = O_{N+n} - O_N                           (overfitting gain)
    w_k   ∝ dG_k / dO_k^2,  sum_k w_k = 1            (Prop. 2: the overfitting-to-generalisation ratio, squared)
Weights start uniform. A head whose validation loss rose (dG_k < 0) gets weight 0; if every head does, the weights
are kept. Losses are measured by evaluation passes (eval mode) over the train and validation loaders.

``weights: fixed`` is G-Blending as the DGL paper runs it (dgl.md Tables 1-4, "G-Blending with different alpha"):
L = CE(fused) + alpha sum_m CE(logits_m), the unimodal losses at a fixed weight alpha (as DGL's own), nothing
estimated. It is registered as ``g_blending`` with the DGL paper's CREMA-D alpha = 4 (Table 4: 69.21, the value of
Table 1); Table 4's rows are ``g_blending`` with alpha = 1..5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Balancer
from .common import check_choice, evaluate_heads, require_modalities, resolve_protocol


WEIGHTS = ("estimated", "fixed")


@dataclass
class GradientBlendingConfig:
    weights: str = "estimated"  # estimated (w ∝ dG / dO^2 per super-epoch) | fixed (fused 1, each modality alpha)
    alpha: float = 1.0  # the unimodal losses' weight when weights == fixed
    super_epoch: int = 10  # epochs between weight estimates (BalanceMM's value; see LOG.md)
    protocol: str = "auto"  # unimodal heads: auto = own_head/head_split under late fusion, else zero_feature
    train_batches: int = 0  # batches of the train loader used to measure L^T (0: all)
    min_overfitting_gain: float = 1e-4  # |dO| floor, keeps w finite when a head does not overfit at all


def blending_weights(start: dict[str, dict], end: dict[str, dict], floor: float = 1e-4) -> dict[str, float] | None:
    """w_k ∝ dG_k / dO_k^2 from ``{head: {"train": L^T, "val": L^V}}`` at the start and end of a super-epoch,
    normalised to sum 1; None when no head generalised better (every dG_k <= 0)."""
    raw = {}
    for k in start:
        gain = start[k]["val"] - end[k]["val"]
        over = (end[k]["val"] - end[k]["train"]) - (start[k]["val"] - start[k]["train"])
        raw[k] = max(gain, 0.0) / max(abs(over), floor) ** 2
    total = sum(raw.values())
    if total <= 0:
        return None
    return {k: v / total for k, v in raw.items()}


@register("balancers", "ogr_gb")
class GradientBlending(Balancer):
    Config = GradientBlendingConfig

    def __init__(self, **params):
        super().__init__(**params)
        check_choice("ogr_gb.weights", self.cfg.weights, WEIGHTS)
        if self.cfg.super_epoch < 1:
            raise ValueError(f"ogr_gb.super_epoch must be >= 1, got {self.cfg.super_epoch}")
        if self.cfg.alpha < 0:
            raise ValueError(f"ogr_gb.alpha must be >= 0, got {self.cfg.alpha}")
        self.estimated = self.cfg.weights == "estimated"

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("ogr_gb", model.modalities)
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        heads = ["fused", *model.modalities]
        if self.estimated:
            self.weights = {k: 1.0 / len(heads) for k in heads}
        else:
            self.weights = {"fused": 1.0, **{m: self.cfg.alpha for m in model.modalities}}
        self.reference: dict | None = None  # losses at the start of the current super-epoch

    def measure(self, trainer) -> dict[str, dict[str, float]]:
        """{head: {"train": L^T, "val": L^V}} by evaluation passes."""
        limit = self.cfg.train_batches or None
        train = evaluate_heads(trainer.model, trainer.loaders["train"], self.protocol, trainer.autocast, limit)
        val = evaluate_heads(trainer.model, trainer.loaders["val"], self.protocol, trainer.autocast)
        return {k: {"train": train[k]["loss"], "val": val[k]["loss"]} for k in self.weights}

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        if self.estimated and self.reference is None:
            self.reference = self.measure(trainer)

    def on_epoch_end(self, trainer, epoch):
        if not self.estimated or (epoch + 1) % self.cfg.super_epoch:
            return
        now = self.measure(trainer)
        weights = blending_weights(self.reference, now, self.cfg.min_overfitting_gain)
        if weights is not None:
            self.weights = weights
        self.reference = now

    def loss(self, model, out, batch):
        uni = model.unimodal_logits(batch.inputs, out, self.protocol)
        logits = {"fused": out.logits, **uni}
        return sum(self.weights[k] * F.cross_entropy(z.float(), batch.label) for k, z in logits.items())

    def state(self):
        return {f"weight_{k}": torch.tensor(w) for k, w in self.weights.items()}

    def state_dict(self):
        return {"weights": dict(self.weights), "reference": self.reference}

    def load_state_dict(self, state):
        self.weights, self.reference = dict(state["weights"]), state["reference"]


@dataclass
class FixedBlendingConfig(GradientBlendingConfig):
    weights: str = "fixed"
    alpha: float = 4.0  # DGL paper, CREMA-D (Table 4 sweeps 1..5)


@register("balancers", "g_blending")
class FixedGradientBlending(GradientBlending):
    """G-Blending as the DGL paper compares it: ``ogr_gb`` with ``weights: fixed`` and alpha = 4."""

    Config = FixedBlendingConfig
