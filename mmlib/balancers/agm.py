"""AGM: adaptive gradient modulation (Li et al., ICCV 2023, "Boosting multi-modal model performance with adaptive
gradient modulation").

Per step, f(S) are the logits with only the modalities in S present (the others zero-padded at the input): for the
full set, the training forward pass itself (train mode, batch statistics), as the public code does; for the other
non-empty subsets, extra passes without gradients, with batch statistics and the running statistics left untouched
(``subsets="train"``; the public code runs them in eval mode, ``subsets="eval"``); f(empty) = 0. Eval-mode passes
read running statistics that an untrained model has not learned: scores far from the model's, which the running
target keeps, and k up to e^15 (``outputs="eval"``) or swinging between 0 and 14 (``subsets="eval"``). Then:
    r^m_i   = sum_{S not containing m} |S|! (M - |S| - 1)! / M! (f(S + m) - f(S))      (Shapley unimodal response)
    s^m     = 1/B sum_i log softmax(r^m_i)[y_i]                                          (mono score, floor 1e-8)
    ratio^m = exp(M / (M - 1) (s^m - mean_k s^k))                                        (imbalance ratio)
    target^m: the same ratio from the running means of the scores since training began
    k^m     = exp(alpha min(target^m - ratio^m, cap))
and the gradients of modality m's encoder are multiplied by k^m: a modality running ahead of its usual share is
slowed, one falling behind is sped up.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..registry import register
from .base import Balancer
from .common import check_choice, require_modalities


@dataclass
class AGMConfig:
    alpha: float = 1.5  # modulation strength (the authors' CREMA-D value, lihongcs/AGM issues)
    cap: float = 10.0  # upper bound on target - ratio in the exponent (original code; BalanceMM uses 7)
    outputs: str = "train"  # train: the full set from the training pass (public code) | eval: every subset in eval
    # the other subsets' passes: train (batch statistics, running statistics untouched) | eval (public code; on
    # the KS stand-in, seed 0, k swung between 0 and 14 and the run collapsed to chance: LOG.md)
    subsets: str = "train"


def subsets_without(modalities: list[str], m: str) -> list[frozenset]:
    others = [k for k in modalities if k != m]
    return [frozenset(c) for r in range(len(others) + 1) for c in itertools.combinations(others, r)]


def shapley_responses(outputs: dict[frozenset, torch.Tensor], modalities: list[str]) -> dict[str, torch.Tensor]:
    """r^m = sum_S w(|S|) (f(S + m) - f(S)) over subsets S of the other modalities, w(s) = s! (M-s-1)! / M!;
    ``outputs[S]`` are the logits with only S present; the empty set contributes f = 0."""
    n = len(modalities)
    responses = {}
    for m in modalities:
        total = 0
        for s in subsets_without(modalities, m):
            weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
            without = outputs[s] if s else 0
            total = total + weight * (outputs[s | {m}] - without)
        responses[m] = total
    return responses


def mono_scores(responses: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """s^m = mean_i log max(softmax(r^m_i)[y_i], 1e-8), (K,)."""
    return torch.stack([torch.softmax(r.float(), dim=1).gather(1, labels[:, None]).clamp_min(1e-8).log().mean()
                        for r in responses.values()])


def imbalance_ratios(scores: torch.Tensor) -> torch.Tensor:
    """ratio^m = exp(M/(M-1) (s^m - mean_k s^k)), (K,)."""
    n = scores.numel()
    return torch.exp(n / (n - 1) * (scores - scores.mean()))


def agm_coefficients(scores: torch.Tensor, running_scores: torch.Tensor, alpha: float,
                     cap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ratio, target ratio, k = exp(alpha min(target - ratio, cap))), each (K,)."""
    ratio, target = imbalance_ratios(scores), imbalance_ratios(running_scores)
    return ratio, target, torch.exp(alpha * torch.clamp(target - ratio, max=cap))


@register("balancers", "agm")
class AGM(Balancer):
    Config = AGMConfig

    def __init__(self, **params):
        super().__init__(**params)
        check_choice("agm.outputs", self.cfg.outputs, ("train", "eval"))
        check_choice("agm.subsets", self.cfg.subsets, ("train", "eval"))

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("agm", model.modalities)
        self.params = {m: model.encoder_parameters(m) for m in model.modalities}
        self.running = torch.zeros(len(model.modalities), device=info.device)
        self.steps = 0
        self._state: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def subset_outputs(self, model, inputs, full: torch.Tensor | None = None) -> dict[frozenset, torch.Tensor]:
        """f(S) for every non-empty subset S: in train mode with batch statistics and the running statistics left
        as they are (``subsets: train``, the default), or in eval mode (``subsets: eval``, the public code);
        ``full`` (the training pass's logits), when given, stands for the set of all modalities."""
        was_training = model.training
        model.train(self.cfg.subsets == "train")
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:  # batch statistics for the extra passes, running statistics left as they are
            m.momentum = 0.0
        try:
            outputs = {} if full is None else {frozenset(model.modalities): full.detach().float()}
            for r in range(1, len(model.modalities) + 1):
                for present in itertools.combinations(model.modalities, r):
                    if frozenset(present) in outputs:
                        continue
                    padded = {k: x if k in present else torch.zeros_like(x) for k, x in inputs.items()}
                    with self.info.autocast():
                        outputs[frozenset(present)] = model(padded).logits.float()
        finally:
            model.train(was_training)
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
        return outputs

    @torch.no_grad()
    def adjust_gradients(self, model, out, batch):
        full = out.logits if self.cfg.outputs == "train" else None
        responses = shapley_responses(self.subset_outputs(model, batch.inputs, full), model.modalities)
        scores = mono_scores(responses, batch.label)
        self.steps += 1
        self.running += (scores - self.running) / self.steps
        ratio, target, coeffs = agm_coefficients(scores, self.running, self.cfg.alpha, self.cfg.cap)
        for k, (m, params) in enumerate(self.params.items()):
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, coeffs[k])
        self._state = {**{f"score_{m}": s for m, s in zip(self.params, scores)},
                       **{f"ratio_{m}": r for m, r in zip(self.params, ratio)},
                       **{f"target_{m}": t for m, t in zip(self.params, target)},
                       **{f"coeff_{m}": c for m, c in zip(self.params, coeffs)}}

    def state(self):
        return dict(self._state)

    def state_dict(self):
        return {"running": self.running.cpu(), "steps": self.steps}

    def load_state_dict(self, state):
        self.running, self.steps = state["running"].to(self.info.device), int(state["steps"])
