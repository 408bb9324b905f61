"""RUBi (Cadene et al., NeurIPS 2019, "RUBi: Reducing Unimodal Biases for Visual Question Answering") as the Greedy
paper's baseline (greedy.md §6.4: chosen because it is model- and fusion-agnostic), for multimodal classification.

RUBi is defined for VQA's question-only bias and the Greedy paper gives no detail of its adaptation; our reading:
- for each bias modality b (``bias``; default every modality, symmetrically, since the paper names none), a
  modality-only classifier c_b: Linear(d_b -> C) on b's features h_b, detached so that nothing of RUBi's branch
  reaches the encoder, and an output layer c'_b: Linear(C -> C);
- during training, the logits the model is trained on are masked by M = prod_b sigmoid(c_b(h_b)): each branch's
  logits y_hat_m for a model with a head per branch (Greedy's model and its eq. 4 loss), else the fused logits;
      L = sum_m CE(y, y_hat_m * M) + sum_b CE(y, c'_b(c_b(h_b)))
  (the mask's classifier learns from both terms, c'_b from the bias-only term);
- at test time the plain prediction, without the mask.
The classifiers are the balancer's own parameters, added to the optimizer as the parameter group ``rubi``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from .base import Balancer
from .common import require_modalities


@dataclass
class RUBiConfig:
    bias: list = field(default_factory=list)  # bias modalities with a modality-only branch; [] = every modality


def rubi_loss(targets: dict[str, torch.Tensor], mask_logits: dict[str, torch.Tensor],
              bias_logits: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_m CE(y, z_m * prod_b sigmoid(mask_b)), sum_b CE(y, bias_b))."""
    mask = torch.stack([torch.sigmoid(z.float()) for z in mask_logits.values()]).prod(dim=0)
    main = sum(F.cross_entropy(z.float() * mask, labels) for z in targets.values())
    return main, sum(F.cross_entropy(z.float(), labels) for z in bias_logits.values())


@register("balancers", "rubi")
class RUBi(Balancer):
    Config = RUBiConfig

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("rubi", model.modalities)
        unknown = [m for m in self.cfg.bias if m not in model.modalities]
        if unknown:
            raise ValueError(f"rubi.bias: unknown modalities {unknown}; the model has {model.modalities}")
        bias = list(self.cfg.bias) or list(model.modalities)
        classes = info.num_classes
        self.branches = nn.ModuleDict({
            b: nn.ModuleDict({"mask": nn.Linear(model.fusion.dims[b], classes),
                              "out": nn.Linear(classes, classes)})
            for b in bias}).to(info.device)
        optimizer.add_param_group({"params": list(self.branches.parameters()), "name": "rubi"})
        self._state: dict[str, torch.Tensor] = {}

    def loss(self, model, out, batch):
        masks = {b: branch["mask"](out.features[b].detach().flatten(1)) for b, branch in self.branches.items()}
        biased = {b: self.branches[b]["out"](z) for b, z in masks.items()}
        targets = out.extras.get("branch_logits") or {"fused": out.logits}
        main, bias = rubi_loss(targets, masks, biased, batch.label)
        self._state = {"loss_main": main.detach(), "loss_bias": bias.detach()}
        return main + bias

    def state(self):
        return dict(self._state)

    def state_dict(self):
        return {"branches": self.branches.state_dict()}

    def load_state_dict(self, state):
        self.branches.load_state_dict(state["branches"])
