"""PMR: prototypical modal rebalance (Fan et al., CVPR 2023).

Prototypes c^m_y: class means of modality m's features over the first ``proto_fraction`` of the training loader,
recomputed at the start of every epoch and smoothed, c <- (1 - mu) c_new + mu c_old. The features are computed in
train mode (batch-norm batch statistics), as the public code does (``prototype_mode="eval"``: with the running
statistics, which on an untrained model put the prototypes so far apart that rho reaches 1e12 and the loss NaN).
Per step, with d(h, c) the Euclidean distance and P^m_i = softmax_y(-d(h^m_i, c^m_y)):
    s^m     = sum_i P^m_i[y_i]                                   (prototype score)
    rho^m   = s^dom / s^m,  rho = s^dom / s^weak                 (dom / weak: highest / lowest score)
    PCE^m   = 1/B sum_i -log P^m_i[y_i]                          (prototypical cross-entropy)
    PER^m   = 1/B sum_i H(P^m_i)                                 (prototypical entropy)
    L       = CE(fused) + sum_m beta^m PCE^m - gamma PER^entropy_on
    beta^m  = alpha when rho^m > 1       (``coefficient="constant"``, the public code's bounded rule, the default;
                                          ``"proportional"``: alpha (rho^m - 1), unbounded as rho is)
    gamma   = entropy_weight (rho - 1)   (same rule), only during the first ``entropy_epochs`` epochs.
For K = 2 the prototype loss goes on the weaker modality alone. For K > 2 (DGL Table 2, right: the core balancing
rule kept) every modality weaker than the strongest gets it, by its own ratio rho^m, and the entropy term acts on
the strongest (``entropy_on="weak"``: on every modality with a prototype loss), with the largest ratio rho.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Balancer
from .common import check_choice, require_modalities

COEFFICIENTS = ("proportional", "constant")


@dataclass
class PMRConfig:
    alpha: float = 1.0  # PCE strength (public code default)
    momentum: float = 0.2  # prototype EMA mu (public code default)
    proto_fraction: float = 0.1  # share of the training loader used to compute prototypes each epoch
    coefficient: str = "constant"  # constant: alpha when rho > 1 (public code, bounded) | proportional: alpha (rho - 1)
    prototype_mode: str = "train"  # train: batch statistics (public code) | eval: running statistics
    entropy_weight: float = 1.0  # PER strength (0: no entropy regularisation)
    entropy_epochs: int = 10  # PER applies in epochs [0, entropy_epochs)
    entropy_on: str = "dominant"  # dominant | weak: the modality whose prototype entropy is raised


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """-||h_i - c_y||_2, (B, classes)."""
    return -torch.cdist(features.flatten(1).float(), prototypes.float())


def prototype_scores(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """s^m = sum_i softmax(-d)_i[y_i] for the modalities in order, (K,)."""
    return torch.stack([torch.softmax(z, dim=1).gather(1, labels[:, None]).sum() for z in logits.values()])


def pmr_coefficients(scores: torch.Tensor, alpha: float,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rho = s^dom / s^weak, per-modality strength from rho^m = s^dom / s^m: alpha (rho^m - 1)^+ (proportional)
    or alpha [rho^m > 1] (constant), indicator of the strongest), (K,); the strongest modality's strength is 0."""
    ratios = scores.max() / scores.clamp_min(1e-12)
    dominant = (scores == scores.max()).float()
    strength = alpha * (ratios - 1).clamp_min(0) if mode == "proportional" else alpha * (ratios > 1).float()
    return ratios.max(), strength, dominant


def prototypical_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1).mean()


@torch.no_grad()
def class_means(model, loader, num_classes: int, batches: int, autocast,
                mode: str = "train") -> tuple[dict, torch.Tensor]:
    """({modality: (classes, D) feature sums}, (classes,) counts) over the first ``batches`` batches, the model in
    ``mode`` (train: batch statistics | eval: running statistics)."""
    was_training = model.training
    model.train(mode == "train")
    sums, counts = {}, None
    try:
        for k, batch in enumerate(loader):
            if k >= batches:
                break
            with autocast():
                out = model(batch.inputs)
            for m, h in out.features.items():
                h = h.flatten(1).float()
                if m not in sums:
                    sums[m] = torch.zeros(num_classes, h.shape[1], device=h.device)
                sums[m].index_add_(0, batch.label, h)
            ones = torch.ones_like(batch.label, dtype=torch.float)
            counts = (torch.zeros(num_classes, device=ones.device) if counts is None else counts).index_add_(
                0, batch.label, ones)
    finally:
        model.train(was_training)
    return sums, counts


@register("balancers", "pmr")
class PMR(Balancer):
    Config = PMRConfig

    def __init__(self, **params):
        super().__init__(**params)
        c = self.cfg
        check_choice("pmr.coefficient", c.coefficient, COEFFICIENTS)
        check_choice("pmr.entropy_on", c.entropy_on, ("dominant", "weak"))
        check_choice("pmr.prototype_mode", c.prototype_mode, ("train", "eval"))
        if not 0 < c.proto_fraction <= 1 or not 0 <= c.momentum < 1:
            raise ValueError(f"pmr: proto_fraction must be in (0, 1] and momentum in [0, 1), got "
                             f"{c.proto_fraction}, {c.momentum}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("pmr", model.modalities)
        self.prototypes: dict[str, torch.Tensor] | None = None
        self._state: dict[str, torch.Tensor] = {}

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        loader = trainer.loaders["train"]
        batches = max(1, math.ceil(self.cfg.proto_fraction * len(loader)))
        sums, counts = class_means(trainer.model, loader, self.info.num_classes, batches, trainer.autocast,
                                   self.cfg.prototype_mode)
        seen = (counts > 0)[:, None]
        new = {m: s / counts.clamp_min(1)[:, None] for m, s in sums.items()}
        if self.prototypes is None:
            self.prototypes = new
        else:
            mu = self.cfg.momentum
            self.prototypes = {m: torch.where(seen, (1 - mu) * new[m] + mu * self.prototypes[m], self.prototypes[m])
                               for m in new}

    def loss(self, model, out, batch):
        if self.prototypes is None:
            raise RuntimeError("pmr: prototypes are computed in on_epoch_start(trainer, epoch); call it first")
        logits = {m: prototype_logits(out.features[m], self.prototypes[m]) for m in model.modalities}
        scores = prototype_scores({m: z.detach() for m, z in logits.items()}, batch.label)
        rho, beta, dominant = pmr_coefficients(scores, self.cfg.alpha, self.cfg.coefficient)
        loss = F.cross_entropy(out.logits.float(), batch.label)
        pce = torch.stack([F.cross_entropy(z, batch.label) for z in logits.values()])
        loss = loss + (beta * pce).sum()
        gamma = torch.zeros_like(beta)
        if self.cfg.entropy_weight > 0 and self.epoch < self.cfg.entropy_epochs:
            target = dominant if self.cfg.entropy_on == "dominant" else (beta > 0).float()
            _, strength, _ = pmr_coefficients(scores, self.cfg.entropy_weight, self.cfg.coefficient)
            gamma = target * strength.max()
            per = torch.stack([prototypical_entropy(z) for z in logits.values()])
            loss = loss - (gamma * per).sum()
        self._state = {"ratio": rho, **{f"pce_coeff_{m}": b for m, b in zip(logits, beta)},
                       **{f"per_coeff_{m}": g for m, g in zip(logits, gamma)},
                       **{f"score_{m}": s for m, s in zip(logits, scores)}}
        return loss

    def state(self):
        return dict(self._state)

    def state_dict(self):
        return {"prototypes": None if self.prototypes is None else {m: p.cpu() for m, p in self.prototypes.items()}}

    def load_state_dict(self, state):
        protos = state.get("prototypes")
        self.prototypes = None if protos is None else {m: p.to(self.info.device) for m, p in protos.items()}
