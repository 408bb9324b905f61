"""MSES: modality-specific early stopping (Fujimori et al., ACPR 2020, "Modality-specific learning rate control for
multimodal classification").

After every epoch, each modality's unimodal head is evaluated on the validation split (cross-entropy under the
balancer's protocol). When a modality's validation loss has not improved on its best for ``patience`` epochs, the
learning rate of that modality's param group (its encoder and its part of the head) is multiplied by ``decay``
(0: that modality stops learning while the others go on); its counter then restarts. Shared parameters keep the
global learning rate.

The method stops the modality that has converged first, so that the others go on learning. A branch that has not
learned anything yet has a flat validation loss too: inside a naively trained joint model the weak modality's
unimodal logits sit at chance, and read plainly the rule would stop it. So a plateau counts only once the branch's
best validation loss is below chance level, ``(1 - converged_gain) ln C`` (``converged_gain=0``: the plain rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..registry import register
from .common import LearningRateControl, evaluate_heads, require_modalities, resolve_protocol


@dataclass
class MSESConfig:
    patience: int = 3  # epochs without a better unimodal validation loss before the modality's lr is decayed
    decay: float = 0.0  # lr factor applied at each stop (0: early stopping of that modality)
    protocol: str = "auto"  # unimodal heads: auto = own_head/head_split under late fusion, else zero_feature
    converged_gain: float = 0.1  # a plateau counts once the best loss is below (1 - gain) ln C (0: plain rule)


def plateau_update(best: float, value: float, waited: int, patience: int,
                   converged_below: float = float("inf")) -> tuple[float, int, bool]:
    """One epoch of plateau tracking: (new best, epochs waited, whether patience just ran out); epochs without
    improvement count only once ``best`` is below ``converged_below``."""
    if value < best:
        return value, 0, False
    if best >= converged_below:
        return best, 0, False
    waited += 1
    if waited >= patience:
        return best, 0, True
    return best, waited, False


@register("balancers", "mses")
class MSES(LearningRateControl):
    Config = MSESConfig

    def __init__(self, **params):
        super().__init__(**params)
        if self.cfg.patience < 1 or not 0 <= self.cfg.decay <= 1 or not 0 <= self.cfg.converged_gain < 1:
            raise ValueError(f"mses: patience must be >= 1, decay in [0, 1] and converged_gain in [0, 1), got "
                             f"{self.cfg.patience}, {self.cfg.decay}, {self.cfg.converged_gain}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("mses", model.modalities)
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        self.best = {m: float("inf") for m in model.modalities}
        self.waited = {m: 0 for m in model.modalities}

    def on_epoch_end(self, trainer, epoch):
        val = evaluate_heads(trainer.model, trainer.loaders["val"], self.protocol, trainer.autocast)
        chance = (1 - self.cfg.converged_gain) * math.log(self.info.num_classes) if self.cfg.converged_gain else \
            float("inf")
        for m in self.lr_factors:
            self.best[m], self.waited[m], stop = plateau_update(self.best[m], val[m]["loss"], self.waited[m],
                                                                self.cfg.patience, chance)
            if stop:
                self.lr_factors[m] *= self.cfg.decay

    def state_dict(self):
        return {"lr_factors": dict(self.lr_factors), "best": dict(self.best), "waited": dict(self.waited)}

    def load_state_dict(self, state):
        self.lr_factors, self.best, self.waited = (dict(state[k]) for k in ("lr_factors", "best", "waited"))
