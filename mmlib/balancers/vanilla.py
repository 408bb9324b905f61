"""Vanilla training of the Greedy paper's model (greedy.md §3, eq. 4): the sum of the modality-specific losses,
L = sum_m CE(y, y_hat_m), over the branch logits of a fusion with a head per branch (``mmtm``; its prediction is
their mean). ``naive`` (cross-entropy of the fused logits) is left as it is."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Balancer


def branch_logits(out, fusion, method: str) -> dict[str, torch.Tensor]:
    """``out.extras["branch_logits"]``, or one clear error naming the method and the fusion."""
    branches = out.extras.get("branch_logits")
    if branches is None:
        raise ValueError(f"{method} trains on the sum of the branch losses (greedy.md eq. 4), which needs a "
                         f"fusion with a head per branch that returns extras['branch_logits'] "
                         f"(model.fusion.name: mmtm); {type(fusion).__name__} returns none")
    return branches


def branch_loss(branches: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Eq. 4: sum_m CE(y, y_hat_m)."""
    return sum(F.cross_entropy(z.float(), labels) for z in branches.values())


@register("balancers", "vanilla")
class Vanilla(Balancer):
    """Greedy's baseline: the summed branch losses, no re-balancing."""

    method = "vanilla"

    def loss(self, model, out, batch):
        return branch_loss(branch_logits(out, model.fusion, self.method), batch.label)
