"""The Greedy paper's measures (Wu et al., ICML 2022), for any run of any balancer on an MMTM-style model
(``mmlib.models.cnn_fusion``), and the L1 study's sparsity R(f).

- Conditional utilization rate (greedy.md §4.1, eq. 5-10). h_bar = the mean squeeze of every MMTM over the training
  set (eq. 6), from one recording pass in eval mode (batch-norm statistics untouched); f_m = branch m's own head,
  f'_m = the same branch with every other modality's squeeze replaced by h_bar (eq. 7-8); on the test set
      u[m] = u(others | m) = (A(f_m) - A(f'_m)) / A(f_m)        (eq. 10: u(m1|m0) = u[m0]; eq. 9: u(m0|m1) = u[m1])
      d_util = u[a] - u[b]                                       (K = 2: u(m1|m0) - u(m0|m1))
- Conditional learning speed (§5.1, eq. 11-12). mu(theta; i) = ||G||^2 / ||theta_(i)||^2, G the gradient used at
  step i and theta_(i) the value after it; theta_m = branch m's encoder and head (``parameter_groups()[m]``),
  theta'_m = the fusion parameters on m's path (``bypass_parameters(m)``: every MMTM's shared squeeze, and m's
  excitation); over the steps i <= t
      s[m] = s(others | m; t) = log(sum mu(theta'_m) / sum mu(theta_m))   (eq. 11: s(m1|m0) = s[m0])
      d_speed = s[a] - s[b]                                       (K = 2: s(m1|m0) - s(m0|m1))
  reported at T = the last step of the selected (best validation) epoch.
- K > 2 (§6.4): f'_m sees the averaged squeezes of all other modalities; (a, b) is the pair of modalities whose
  u (or s) differ most, in modality order, so for K = 2 it is (m0, m1).
- The L1 study (§6.3): ``add_l1_penalty`` trains any balancer on L' = L + lambda ||theta||_1 (``optim.l1``), and
  R(f) is the fraction of the model's parameters with |theta| < 1e-7.

``StepMonitor`` is what the Trainer calls after each balancer step (0-d tensors, no host synchronisation);
``record_measures`` is its final-evaluation block. Where they sit in a RunRecord: ``steps["mu_branch/<m>"]``,
``steps["mu_bypass/<m>"]``, ``steps["grad_sq/<m>"]`` (per step), ``history[e]["speed"]`` (per epoch),
``final["speed"]``, ``final["test"]["utilization"]``, ``final["sparsity"]``.
"""
from __future__ import annotations

import contextlib
import itertools
import math

import torch
from torch import nn

SPARSITY_THRESHOLD = 1e-7  # R(f) counts parameters below this magnitude (greedy.md §6.3)
GRADIENT_NORMS = ("auto", "on", "off")


# ---------------------------------------------------------------------------------------------- formulas
def most_different(values: dict[str, float]) -> tuple[str, str] | None:
    """The two modalities whose values differ most, in modality order (K = 2: both); None for fewer than two."""
    names = list(values)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return max(pairs, key=lambda p: abs(values[p[0]] - values[p[1]])) if pairs else None


def _difference(values: dict[str, float | None], key: str) -> dict:
    """``{key: values[a] - values[b], "pair": [a, b]}`` for the two most different defined values."""
    defined = {m: v for m, v in values.items() if v is not None}
    pair = most_different(defined)
    return {"pair": list(pair) if pair else None, key: defined[pair[0]] - defined[pair[1]] if pair else None}


def utilization_rates(acc_branch: dict[str, float], acc_cut: dict[str, float]) -> dict:
    """u[m] = (A(f_m) - A(f'_m)) / A(f_m) (None when A(f_m) = 0) and d_util (eq. 9-10) from the test accuracies of
    the branches f_m and of their cut versions f'_m."""
    u = {m: (acc_branch[m] - acc_cut[m]) / acc_branch[m] if acc_branch[m] > 0 else None for m in acc_branch}
    return {"acc_branch": dict(acc_branch), "acc_cut": dict(acc_cut), "u": u, **_difference(u, "d_util")}


def learning_speeds(bypass_sums: dict[str, float], branch_sums: dict[str, float], log=math.log) -> dict:
    """s[m] = log(sum mu(theta'_m) / sum mu(theta_m)) (None when a sum is 0) and d_speed (eq. 11-12)."""
    s = {m: log(bypass_sums[m] / branch_sums[m]) if bypass_sums[m] > 0 and branch_sums[m] > 0 else None
         for m in branch_sums}
    return {"s": s, **_difference(s, "d_speed")}


def speeds_at(steps: dict[str, list[float]], modalities: list[str], boundaries: list[int]) -> list[dict]:
    """The conditional learning speeds after the first t steps, for each t in ``boundaries``, from the per-step
    ``mu_branch/<m>`` and ``mu_bypass/<m>`` a StepMonitor logged."""
    prefix = {key: [0.0, *itertools.accumulate(steps[key])]
              for key in (f"mu_{part}/{m}" for part in ("branch", "bypass") for m in modalities)}
    out = []
    for t in boundaries:
        t = min(t, len(prefix[f"mu_branch/{modalities[0]}"]) - 1)
        sums = {part: {m: prefix[f"mu_{part}/{m}"][t] for m in modalities} for part in ("branch", "bypass")}
        out.append({"steps": t, **learning_speeds(sums["bypass"], sums["branch"])})
    return out


@torch.no_grad()
def sparsity(model: nn.Module, threshold: float = SPARSITY_THRESHOLD) -> dict:
    """R(f): the fraction of the model's parameters (elements) with |theta| < ``threshold``."""
    params = [p.detach() for p in model.parameters()]
    small = torch.stack([(p.abs() < threshold).sum() for p in params]).sum()
    return {"threshold": threshold, "fraction": float(small) / sum(p.numel() for p in params)}


# --------------------------------------------------------------------------------- per-step squared norms
class SquaredNorms:
    """||G||^2 and ||theta||^2 summed over named groups of parameters (a parameter may be in several groups),
    each from one fused norm over the distinct parameters and a product with the group-membership matrix."""

    def __init__(self, groups: dict[str, list[nn.Parameter]]):
        index: dict[int, int] = {}
        self.params: list[nn.Parameter] = []
        for p in itertools.chain.from_iterable(groups.values()):
            if id(p) not in index:
                index[id(p)] = len(self.params)
                self.params.append(p)
        if not self.params:
            raise ValueError(f"no parameters in the groups {list(groups)}")
        device = self.params[0].device
        self.names = list(groups)
        self.membership = torch.zeros(len(groups), len(self.params), device=device)
        for g, ps in enumerate(groups.values()):
            self.membership[g, [index[id(p)] for p in ps]] = 1.0
        self._zero = torch.zeros((), device=device)

    def _sums(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        norms = torch.stack(torch._foreach_norm(tensors)).float()
        return self.membership @ norms.square()

    @torch.no_grad()
    def gradients(self) -> torch.Tensor:
        """(groups,) ||G||^2 of the gradients now on the parameters (a parameter without one counts 0)."""
        return self._sums([self._zero if p.grad is None else p.grad for p in self.params])

    @torch.no_grad()
    def values(self) -> torch.Tensor:
        """(groups,) ||theta||^2."""
        return self._sums([p.detach() for p in self.params])


def has_bypass(fusion) -> bool:
    """An MMTM-style fusion: fusion parameters on each branch's path (theta'_m) and the Greedy gate switches."""
    return hasattr(fusion, "bypass_parameters")


def speed_groups(model) -> dict[str, list[nn.Parameter]]:
    """``branch/<m>``: theta_m (encoder and head of branch m); ``bypass/<m>``: theta'_m."""
    groups = model.parameter_groups()
    return {**{f"branch/{m}": groups[m] for m in model.modalities},
            **{f"bypass/{m}": model.fusion.bypass_parameters(m) for m in model.modalities}}


class StepMonitor:
    """Logged by the Trainer right after each balancer step, from the gradients still on the parameters (0-d
    tensors): ``mu_branch/<m>`` = mu(theta_m; i) and ``mu_bypass/<m>`` = mu(theta'_m; i) for MMTM-style fusions
    (``speed``), and ``grad_sq/<m>`` = ||G||^2 of modality m's encoder."""

    def __init__(self, model, speed: bool):
        self.modalities, self.speed = list(model.modalities), speed
        groups = speed_groups(model) if speed else {}
        groups.update({f"encoder/{m}": model.encoder_parameters(m) for m in self.modalities})
        self.norms = SquaredNorms(groups)
        self.keys = [f"mu_{name}" for name in groups if not name.startswith("encoder/")]
        self.keys += [f"grad_sq/{m}" for m in self.modalities]

    @classmethod
    def for_model(cls, model, mode: str) -> "StepMonitor | None":
        """``train.gradient_norms``: auto = on for MMTM-style fusions; on = also any other model's encoder gradient
        norms; off = nothing."""
        if mode not in GRADIENT_NORMS:
            raise ValueError(f"train.gradient_norms must be one of {', '.join(GRADIENT_NORMS)}, got {mode!r}")
        bypass = has_bypass(model.fusion)
        if mode == "off" or (mode == "auto" and not bypass):
            return None
        return cls(model, speed=bypass)

    def __call__(self) -> dict[str, torch.Tensor]:
        grads = self.norms.gradients()
        speeds = 2 * len(self.modalities) if self.speed else 0
        if speeds:
            grads = torch.cat([grads[:speeds] / self.norms.values()[:speeds], grads[speeds:]])
        return dict(zip(self.keys, grads.unbind()))


# ------------------------------------------------------------------------------ conditional utilization
def check_utilization_model(model) -> None:
    fusion = model.fusion
    if not (hasattr(fusion, "averaged_squeeze") and "own_head" in fusion.protocols):
        raise ValueError(f"the conditional utilization rate needs an MMTM-style fusion with a head per branch "
                         f"(model.fusion.name: mmtm); {type(fusion).__name__} has none")


@torch.no_grad()
def record_squeezes(model, batches, autocast=contextlib.nullcontext) -> None:
    """Eq. 6: every MMTM's running averages reset, then one recording pass over ``batches`` in eval mode (so
    batch-norm statistics are untouched); the model's mode is restored."""
    was_training = model.training
    model.eval()
    model.fusion.reset_running_averages()
    try:
        with model.fusion.recording():
            for batch in batches:
                with autocast():
                    model(batch.inputs)
    finally:
        model.train(was_training)


@torch.no_grad()
def conditional_utilization(model, train_batches, test_batches, autocast=contextlib.nullcontext) -> dict:
    """u, d_util (``utilization_rates``) of an MMTM model: h_bar from ``train_batches`` (eq. 6), the accuracies of
    f_m and f'_m on ``test_batches`` (f'_m for every m in one pass: every branch's excitation from its own squeeze
    and the others' h_bar). The MMTMs' running averages are left holding h_bar."""
    check_utilization_model(model)
    modalities = list(model.modalities)
    record_squeezes(model, train_batches, autocast)
    was_training = model.training
    model.eval()
    correct, count = 0, 0
    try:
        for batch in test_batches:
            with autocast():
                out = model(batch.inputs)
                branch = model.unimodal_logits(batch.inputs, out, "own_head")
                with model.fusion.averaged_squeeze(*modalities):
                    cut_out = model(batch.inputs)
                    cut = model.unimodal_logits(batch.inputs, cut_out, "own_head")
            hits = [(z.argmax(1) == batch.label).sum() for z in (*branch.values(), *cut.values())]
            correct = correct + torch.stack(hits)
            count += len(batch.label)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("conditional_utilization: the test batches are empty")
    acc = (correct.double() / count).tolist()  # one host transfer
    k = len(modalities)
    return utilization_rates(dict(zip(modalities, acc[:k])), dict(zip(modalities, acc[k:])))


# ------------------------------------------------------------------------------------------ L1 penalty
L1_STEPS = ("subgradient", "proximal")


def add_l1_penalty(optimizer: torch.optim.Optimizer, weight: float, step: str = "subgradient") -> None:
    """Train on L' = L + weight ||theta||_1 over every parameter the optimizer updates (greedy.md §6.3), whatever
    computes L's gradients (any balancer, a plain loop). ``subgradient`` (the paper's loss): a step pre-hook adds
    weight sign(theta) to each gradient (a parameter without one gets that alone), after any balancer's edits.
    ``proximal`` (a named variant): after each step, theta <- sign(theta) max(|theta| - lr weight, 0). Nothing is
    registered when ``weight`` is 0."""
    if weight < 0:
        raise ValueError(f"optim.l1 must be >= 0, got {weight}")
    if step not in L1_STEPS:
        raise ValueError(f"optim.l1_step must be one of {', '.join(L1_STEPS)}, got {step!r}")
    if weight == 0:
        return

    @torch.no_grad()
    def subgradient(opt, args, kwargs):
        for group in opt.param_groups:
            params = group["params"]
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            torch._foreach_add_([p.grad for p in params], torch._foreach_sign(params), alpha=weight)

    @torch.no_grad()
    def proximal(opt, args, kwargs):
        for group in opt.param_groups:
            params = group["params"]
            shrunk = torch._foreach_abs(params)
            torch._foreach_sub_(shrunk, group["lr"] * weight)
            torch._foreach_clamp_min_(shrunk, 0.0)
            torch._foreach_mul_(shrunk, torch._foreach_sign(params))
            torch._foreach_copy_(params, shrunk)

    if step == "subgradient":
        optimizer.register_step_pre_hook(subgradient)
    else:
        optimizer.register_step_post_hook(proximal)


# ------------------------------------------------------------------------------------ the Trainer's block
def training_pass_loader(trainer):
    """The training split in evaluation order, without augmentation (centre frames), for eq. 6's pass."""
    from .data.loader import DeviceLoader

    ref = trainer.loaders["val"]
    return DeviceLoader(tensors=ref.tensors, indices=trainer.cache.indices("train"), modalities=ref.modalities,
                        batch_size=ref.batch_size, frames=ref.frames, train=False, augment=False,
                        device=ref.device, seed=ref.seed, channels_last=ref.channels_last,
                        normalize=trainer.cache.meta.get("normalize"))


def record_measures(trainer, final: dict) -> None:
    """The Trainer's final-evaluation block (the selected checkpoint is loaded): ``final["sparsity"]`` (R(f))
    for every run; for MMTM-style models with a head per branch ``final["test"]["utilization"]``; with the
    per-step mu logged, ``history[e]["speed"]`` after each epoch and ``final["speed"]`` at the selected epoch's
    last step."""
    model = trainer.model
    final["sparsity"] = sparsity(model)
    if len(model.modalities) < 2:
        return
    fusion = model.fusion
    if hasattr(fusion, "averaged_squeeze") and "own_head" in fusion.protocols:
        final["test"]["utilization"] = conditional_utilization(model, training_pass_loader(trainer),
                                                               trainer.loaders["test"], trainer.autocast)
    monitor = getattr(trainer, "monitor", None)
    if monitor is not None and monitor.speed and trainer.history:
        per_epoch = len(trainer.loaders["train"])
        boundaries = [(entry["epoch"] + 1) * per_epoch for entry in trainer.history]
        for entry, speed in zip(trainer.history, speeds_at(trainer.steps, monitor.modalities, boundaries)):
            entry["speed"] = speed
        best = [entry["speed"] for entry in trainer.history if entry["epoch"] == trainer.best["epoch"]]
        final["speed"] = best[0] if best else None
