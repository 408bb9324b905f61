"""Balanced multi-modal learning (Wu et al., ICML 2022, greedy.md §5.2, Algorithm 1), guided and random (§6.4),
on an MMTM-style model (``mmlib.models.cnn_fusion``), with the vanilla loss sum_m CE(y, y_hat_m) (eq. 4) at every
step.

A *re-balancing step* accelerating modality m freezes m's excitation in every MMTM to its running average
w_bar_m, the mean over the samples of the previous regular steps (eq. 13-14): branch m then receives nothing from
the other modalities and has to learn from its own. Regular steps update w_bar; re-balancing steps do not.

``greedy`` (guided, the paper's default): one warm-up epoch of regular steps accumulating
    M_theta_m += mu(theta_m; i),  M_theta'_m += mu(theta'_m; i)      (mu as in mmlib.utilization, eq. 11-12)
then at every regular step d_speed = log(M_theta'_0 / M_theta_0) - log(M_theta'_1 / M_theta_1); when
|d_speed| > alpha the next Q steps re-balance, accelerating m0 if d_speed > 0 else m1, and the M's are not
accumulated during them. Algorithm 1 as printed (q <- 1, then re-balance while q < Q) gives Q - 1 steps; the text
("we take Q re-balancing steps") and the public code's window give Q, which is what runs here. K > 2 (§6.4): with
s_m = log(M_theta'_m / M_theta_m), d_speed is the difference of the two most different s (in modality order) and
the modality with the larger s is accelerated, one at a time (for K = 2 this is Algorithm 1).

``greedy_random``: after the warm-up, each step is drawn uniformly from {regular, re-balance m_0, ..., m_K-1}
by a generator seeded from the run's torch generator (reproducible, resumable).

The public code's choices (reference/implementations.md §1.4) are named options: ``log: log10`` (its BDR),
``warmup_epochs: 2`` (its ``starting_epoch``), ``running_average: every_step`` (its gate average also moves
during re-balancing steps), ``parameter_norm: before_step`` (it reads ||theta|| at backward end, before the
step); ``alpha`` is its ``epsilon``. Its skeleton-gate average updated from the visual gate is a bug, not
reproduced. Where the public code averages the sigmoid gate sigma(w) and gates by it without the factor 2,
here the excitation w is averaged and the gate is 2 sigma(w_bar), as eq. 2 and 13 print.

Logged per step (0-d tensors): ``rebalancing`` (1 for a re-balancing step), ``accelerated`` (the accelerated
modality's index, -1 for a regular step) and, for the guided version, ``d_speed`` (its value after the last regular
step). Only the guided version reads a value back from the device: once per regular step after the warm-up,
where Algorithm 1 branches on |d_speed| > alpha.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..registry import register
from ..utilization import SquaredNorms, has_bypass, speed_groups
from .common import check_choice, require_modalities
from .vanilla import Vanilla

LOGS = ("ln", "log10")
RUNNING_AVERAGES = ("regular_steps", "every_step")
PARAMETER_NORMS = ("after_step", "before_step")


@dataclass
class RandomConfig:
    warmup_epochs: int = 1  # regular steps only (public code: starting_epoch = 2)
    running_average: str = "regular_steps"  # w_bar over regular steps (eq. 13) | every_step (public code)


@dataclass
class GuidedConfig(RandomConfig):
    # imbalance tolerance (public code: epsilon); the paper: 0.1 Colored MNIST and NVGesture, 0.01 ModelNet40
    alpha: float = 0.01
    window: int = 5  # Q, re-balancing steps per switch (paper: 5)
    log: str = "ln"  # ln (paper) | log10 (public code's BDR)
    parameter_norm: str = "after_step"  # ||theta_(i)|| after step i (eq. 11) | before_step (public code)


class BalancedMultimodal(Vanilla):
    """Regular and re-balancing steps on an MMTM-style model; subclasses choose the next step's mode."""

    Config = RandomConfig

    def __init__(self, **params):
        super().__init__(**params)
        check_choice(f"{self.method}.running_average", self.cfg.running_average, RUNNING_AVERAGES)
        if self.cfg.warmup_epochs < 0:
            raise ValueError(f"{self.method}.warmup_epochs must be >= 0, got {self.cfg.warmup_epochs}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities(self.method, model.modalities)
        fusion = model.fusion
        if not (hasattr(fusion, "frozen_gate") and has_bypass(fusion)):
            raise ValueError(f"{self.method} re-balances through the MMTM gates (greedy.md eq. 13-14); fusion "
                             f"{type(fusion).__name__} has none (model.fusion.name: mmtm)")
        self.modalities = list(model.modalities)
        self.warmup_steps = self.cfg.warmup_epochs * info.steps_per_epoch
        self.steps_done = 0
        self.accelerated = -1  # modality index the coming step accelerates; -1: a regular step

    def next_mode(self) -> int:
        """The modality index the coming step accelerates, -1 for a regular step."""
        raise NotImplementedError

    @contextlib.contextmanager
    def switches(self, model, accelerated: int):
        """The gate switches of a step: m's excitation frozen when accelerating m (eq. 13-14)."""
        with contextlib.ExitStack() as stack:
            if accelerated >= 0:
                stack.enter_context(model.fusion.frozen_gate(self.modalities[accelerated]))
                if self.cfg.running_average == "every_step":
                    stack.enter_context(model.fusion.recording())
            yield

    def training_step(self, model, batch, optimizer):
        accelerated = self.next_mode()
        with self.switches(model, accelerated), self.info.autocast():
            out = model(batch.inputs)
            loss = self.loss(model, out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_step(accelerated)
        optimizer.step()
        state = self.after_step(accelerated)
        self.steps_done += 1
        return {"loss": loss.detach(), "rebalancing": torch.tensor(float(accelerated >= 0)),
                "accelerated": torch.tensor(float(accelerated)), **state}

    def before_step(self, accelerated: int) -> None:
        pass

    def after_step(self, accelerated: int) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self):
        return {"steps_done": self.steps_done, "accelerated": self.accelerated}

    def load_state_dict(self, state):
        self.steps_done, self.accelerated = int(state["steps_done"]), int(state["accelerated"])


@register("balancers", "greedy")
class Guided(BalancedMultimodal):
    """Algorithm 1: re-balance for Q steps whenever the conditional learning speeds differ by more than alpha."""

    Config = GuidedConfig
    method = "greedy"

    def __init__(self, **params):
        super().__init__(**params)
        check_choice("greedy.log", self.cfg.log, LOGS)
        check_choice("greedy.parameter_norm", self.cfg.parameter_norm, PARAMETER_NORMS)
        if self.cfg.alpha < 0 or self.cfg.window < 1:
            raise ValueError(f"greedy: alpha must be >= 0 and window >= 1, got {self.cfg.alpha}, "
                             f"{self.cfg.window}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        self.norms = SquaredNorms(speed_groups(model))  # branch/<m>, then bypass/<m>
        k = len(self.modalities)
        self.sums = torch.zeros(2, k, device=self.norms.membership.device)  # rows: M_theta, M_theta'
        self.d_speed = torch.zeros((), device=self.sums.device)
        self.remaining = 0  # re-balancing steps left in the current window
        self._values: torch.Tensor | None = None

    def next_mode(self):
        return self.accelerated if self.remaining > 0 else -1

    def before_step(self, accelerated):
        if accelerated < 0 and self.cfg.parameter_norm == "before_step":
            self._values = self.norms.values()

    def speeds(self) -> torch.Tensor:
        """(K,) s_m = log(M_theta'_m / M_theta_m), in the configured base."""
        s = torch.log(self.sums[1] / self.sums[0])
        return s / math.log(10) if self.cfg.log == "log10" else s

    def after_step(self, accelerated):
        if accelerated >= 0:  # a re-balancing step: the M's wait
            self.remaining -= 1
            return {"d_speed": self.d_speed}
        values = self._values if self._values is not None else self.norms.values()
        self._values = None
        self.sums += (self.norms.gradients() / values).view(2, -1)
        s = self.speeds()
        high, low = s.argmax(), s.argmin()
        gap = s[high] - s[low]
        self.d_speed = torch.where(high < low, gap, -gap)  # s[a] - s[b] for the pair (a, b) in modality order
        if self.steps_done >= self.warmup_steps:
            gap_value, index = torch.stack([gap, high.to(gap.dtype)]).tolist()  # Algorithm 1 branches here
            if gap_value > self.cfg.alpha:
                self.remaining, self.accelerated = self.cfg.window, int(index)
        return {"d_speed": self.d_speed}

    def state_dict(self):
        return {**super().state_dict(), "sums": self.sums.clone(), "d_speed": self.d_speed.clone(),
                "remaining": self.remaining}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.sums = state["sums"].to(self.sums.device)
        self.d_speed = state["d_speed"].to(self.sums.device)
        self.remaining = int(state["remaining"])


@register("balancers", "greedy_random")
class Random(BalancedMultimodal):
    """§6.4's random version: after the warm-up, each step is regular or re-balances one modality, uniformly."""

    method = "greedy_random"

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        seed = int(torch.randint(2**62, ()))  # from the run's generator: reproducible under train.seed
        self.generator = torch.Generator().manual_seed(seed)

    def next_mode(self):
        if self.steps_done < self.warmup_steps:
            return -1
        self.accelerated = int(torch.randint(len(self.modalities) + 1, (), generator=self.generator)) - 1
        return self.accelerated

    def state_dict(self):
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.generator.set_state(state["generator"].cpu())
