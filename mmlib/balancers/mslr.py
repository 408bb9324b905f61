"""MSLR: modality-specific learning rates (Yao & Mihalcea, Findings of ACL 2022, "Modality-specific Learning Rates
for Effective Multimodal Additive Late-fusion").

Each modality's param group (its encoder and its part of the head) trains with lr * f_m; shared parameters keep the
global lr. Three strategies for f_m, as we read the paper (LOG.md):
- ``keep``: f_m = s_m, fixed (s_m: the ratio of modality m's best unimodal lr to the global lr, ``lr_scales``);
- ``smooth``: f_m moves linearly from s_m at the first epoch to 1 at the last;
- ``dynamic``: f_m starts at s_m; after every epoch in which modality m's unimodal validation accuracy did not
  improve on its best, f_m <- f_m * ``decay``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import register
from .common import (LearningRateControl, check_choice, evaluate_heads, per_modality, require_modalities,
                     resolve_protocol)

STRATEGIES = ("keep", "smooth", "dynamic")


@dataclass
class MSLRConfig:
    strategy: str = "keep"  # keep | smooth | dynamic
    lr_scales: dict = field(default_factory=dict)  # {modality: s_m}; unlisted modalities 1.0
    decay: float = 0.5  # dynamic: factor applied after an epoch without a better unimodal validation accuracy
    protocol: str = "auto"  # dynamic: unimodal heads evaluated (auto = own_head/head_split under late fusion)


def smooth_factor(scale: float, epoch: int, epochs: int) -> float:
    """Linear path from ``scale`` at epoch 0 to 1 at the last epoch."""
    if epochs <= 1:
        return scale
    t = min(max(epoch / (epochs - 1), 0.0), 1.0)
    return scale + (1.0 - scale) * t


@register("balancers", "mslr")
class MSLR(LearningRateControl):
    Config = MSLRConfig

    def __init__(self, **params):
        super().__init__(**params)
        check_choice("mslr.strategy", self.cfg.strategy, STRATEGIES)
        if not 0 < self.cfg.decay <= 1:
            raise ValueError(f"mslr.decay must be in (0, 1], got {self.cfg.decay}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("mslr", model.modalities)
        self.scales = per_modality(self.cfg.lr_scales, model.modalities, "mslr.lr_scales", 0.0, float("inf"))
        self.lr_factors = dict(self.scales)
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        self.best = {m: -1.0 for m in model.modalities}

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        if self.cfg.strategy == "smooth":
            self.lr_factors = {m: smooth_factor(s, epoch, self.info.epochs) for m, s in self.scales.items()}

    def on_epoch_end(self, trainer, epoch):
        if self.cfg.strategy != "dynamic":
            return
        val = evaluate_heads(trainer.model, trainer.loaders["val"], self.protocol, trainer.autocast)
        for m in self.lr_factors:
            if val[m]["acc"] > self.best[m]:
                self.best[m] = val[m]["acc"]
            else:
                self.lr_factors[m] *= self.cfg.decay

    def state_dict(self):
        return {"lr_factors": dict(self.lr_factors), "best": dict(self.best)}

    def load_state_dict(self, state):
        self.lr_factors, self.best = dict(state["lr_factors"]), dict(state["best"])
