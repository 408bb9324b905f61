"""The balancer interface: a training strategy plugged into the Trainer.

The Trainer owns epochs, devices, precision, evaluation, checkpoints and logging; a balancer owns what differs
between methods: the loss, gradient edits, per-epoch updates and the modalities the model is built with.
``training_step`` returns a dict of 0-d tensors (logged per step, read back to the host once per epoch), so a
step needs no host synchronisation unless a method does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..config import from_dict


@dataclass
class TrainInfo:
    """What a balancer may know about the run when it is set up."""

    epochs: int
    steps_per_epoch: int
    num_classes: int
    modalities: list[str]
    device: torch.device
    autocast: Callable[[], Any] = contextlib.nullcontext
    protocol: str = "zero_feature"  # unimodal-logit protocol a balancer uses unless its own config says otherwise
    extras: dict = field(default_factory=dict)  # e.g. the validation loader, for methods that need one


@dataclass
class NoParams:
    pass


class Balancer:
    Config: type = NoParams

    def __init__(self, **params: Any):
        self.cfg = from_dict(self.Config, params, f"balancer.params ({type(self).__name__})")
        self.epoch = 0

    def modalities(self, available: list[str]) -> list[str]:
        """Modalities the model is built with (unimodal baselines keep one)."""
        return list(available)

    def setup(self, model, optimizer, info: TrainInfo) -> None:
        self.info = info

    def training_step(self, model, batch, optimizer) -> dict[str, torch.Tensor]:
        with self.info.autocast():
            out = model(batch.inputs)
            loss = self.loss(model, out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.adjust_gradients(model, out, batch)
        optimizer.step()
        return {"loss": loss.detach(), **self.state()}

    def loss(self, model, out, batch) -> torch.Tensor:
        return F.cross_entropy(out.logits.float(), batch.label)

    def adjust_gradients(self, model, out, batch) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        """Per-step quantities to log (coefficients, ratios, ...), as 0-d tensors."""
        return {}

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        """Running state needed to resume (tensors / plain values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
