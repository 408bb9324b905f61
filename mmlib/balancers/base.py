"""The balancer interface: a training strategy plugged into the Trainer, or into a plain PyTorch loop.

The Trainer owns epochs, devices, precision, evaluation, checkpoints and logging; a balancer owns what differs
between methods: the loss, gradient edits, per-epoch updates and the modalities the model is built with.
``training_step`` returns a dict of 0-d tensors (logged per step, read back to the host once per epoch), so a
step needs no host synchronisation unless a method does.

What a balancer needs from the model (``mmlib.models.MultimodalModel(encoders, fusion)`` provides all of it, for
any encoders that map a modality's input to features and expose ``out_dim``):

- ``model(inputs: {modality: tensor}) -> ModelOutput`` with ``logits`` (B, classes) and ``features`` per modality;
- ``model.modalities`` (names, in order), ``model.encoders`` ({modality: module});
- ``model.fusion``: ``kind``, ``protocols``, ``modality_parameters(m)`` (its head part for modality m);
- ``model.unimodal_logits(inputs, out, protocol)`` and ``model.parameter_groups()``.

From a plain loop: ``balancer.attach(model, optimizer, epochs=..., steps_per_epoch=..., num_classes=...)``, then per
batch ``balancer.training_step(model, Batch(inputs, label), optimizer)``; the epoch hooks take a ``LoopContext``
(the model and the train / val batches) where the Trainer passes itself. The optimizer's parameter groups must be
``named_param_groups(model)`` for methods that set per-modality learning rates.
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


class Batches:
    """A user's DataLoader seen as mmlib ``Batch``es: ``Batches(loader, lambda a, v, y: Batch({"audio": a,
    "visual": v}, y))``; each item of ``loader`` (a tuple is unpacked) goes through ``to_batch``."""

    def __init__(self, loader, to_batch: Callable[..., Any]):
        self.loader, self.to_batch = loader, to_batch

    def __iter__(self):
        for item in self.loader:
            yield self.to_batch(*item) if isinstance(item, (tuple, list)) else self.to_batch(item)

    def __len__(self) -> int:
        return len(self.loader)


@dataclass
class LoopContext:
    """What the epoch hooks of a balancer read from the loop that drives it (the Trainer is one): the model, the
    ``train`` and ``val`` batches (``Batches``), the autocast context, and the learning-rate scheduler (only for
    methods that step it themselves, e.g. ``dgl`` with ``scheduler_at_epoch_start``)."""

    model: Any
    loaders: dict = field(default_factory=dict)
    autocast: Callable[[], Any] = contextlib.nullcontext
    scheduler: Any = None


def named_param_groups(model) -> list[dict]:
    """Optimizer parameter groups, one per modality (its encoder and head part) and one ``shared``, named so that a
    balancer can set per-modality learning rates (what ``mmlib.train.build_optimizer`` uses)."""
    return [{"params": ps, "name": name} for name, ps in model.parameter_groups().items() if ps]


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

    def attach(self, model, optimizer, *, epochs: int, steps_per_epoch: int, num_classes: int,
               device: torch.device | str | None = None, autocast: Callable[[], Any] = contextlib.nullcontext,
               val_loader=None) -> "Balancer":
        """``setup`` for a plain PyTorch loop: the run's facts given directly instead of by the Trainer."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.setup(model, optimizer, TrainInfo(epochs=epochs, steps_per_epoch=steps_per_epoch, num_classes=num_classes,
                                               modalities=list(model.modalities), device=device, autocast=autocast,
                                               extras={"val_loader": val_loader} if val_loader is not None else {}))
        return self

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
