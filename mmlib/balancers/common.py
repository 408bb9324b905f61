"""Helpers shared by several balancers: unimodal-logit protocol choice, argument checks, a per-head evaluation
pass, and optimizer steps with per-modality learning-rate factors."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .base import Balancer


def default_protocol(fusion) -> str:
    """Unimodal logits from the modality's own head under late fusion, zero-padding of the other features
    otherwise (amss.md §3.2.1); ``zero_input`` when a fusion offers neither."""
    if fusion.kind == "late":
        for p in ("own_head", "head_split"):
            if p in fusion.protocols:
                return p
    return "zero_feature" if "zero_feature" in fusion.protocols else "zero_input"


def resolve_protocol(fusion, protocol: str) -> str:
    """``auto`` -> ``default_protocol``; otherwise check that the fusion supports ``protocol``."""
    if protocol == "auto":
        return default_protocol(fusion)
    if protocol != "zero_input" and protocol not in fusion.protocols:
        raise ValueError(f"protocol {protocol!r} is not supported by fusion {type(fusion).__name__} "
                         f"(it supports {', '.join(dict.fromkeys([*fusion.protocols, 'zero_input']))})")
    return protocol


def check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def require_modalities(name: str, modalities: list[str], minimum: int = 2) -> None:
    if len(modalities) < minimum:
        raise ValueError(f"{name} needs at least {minimum} modalities, got {modalities}")


def per_modality(values: dict, modalities: list[str], name: str, low: float, high: float,
                 default: float = 1.0) -> dict[str, float]:
    """``{modality: value}`` for every modality (unlisted ones get ``default``); unknown names and values outside
    [low, high] raise."""
    unknown = sorted(set(values) - set(modalities))
    if unknown:
        raise ValueError(f"{name}: unknown modalities {unknown}; the model has {modalities}")
    out = {m: float(values.get(m, default)) for m in modalities}
    for m, v in out.items():
        if not low <= v <= high:
            raise ValueError(f"{name}[{m!r}] must be in [{low}, {high}], got {v}")
    return out


@torch.no_grad()
def evaluate_heads(model, loader, protocol: str, autocast=contextlib.nullcontext,
                   max_batches: int | None = None) -> dict[str, dict[str, float]]:
    """Mean cross-entropy and accuracy of the fused logits (``"fused"``) and of each modality's unimodal logits
    under ``protocol``, over ``loader`` (at most ``max_batches`` batches), in eval mode; the model's mode is
    restored. One host transfer at the end."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    try:
        for k, batch in enumerate(loader):
            if max_batches is not None and k >= max_batches:
                break
            with autocast():
                out = model(batch.inputs)
                heads = {"fused": out.logits, **model.unimodal_logits(batch.inputs, out, protocol)}
            for name, z in heads.items():
                z = z.float()
                loss = F.cross_entropy(z, batch.label, reduction="sum")
                correct = (z.argmax(1) == batch.label).sum().float()
                sums[name] = sums.get(name, 0) + torch.stack([loss, correct])
            count += len(batch.label)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_heads: the loader gave no batches")
    return {name: {"loss": float(v[0]) / count, "acc": float(v[1]) / count} for name, v in
            ((n, s.cpu()) for n, s in sums.items())}


def scaled_lr_step(optimizer, factors: dict[str, float]) -> None:
    """``optimizer.step()`` with the learning rate of each param group named in ``factors`` multiplied by its
    factor for this step only (groups are named per modality by ``mmlib.train.build_optimizer``); the stored
    learning rates, and so any scheduler, are left untouched."""
    saved = []
    for group in optimizer.param_groups:
        factor = factors.get(group.get("name"))
        if factor is not None and factor != 1.0:
            saved.append((group, group["lr"]))
            group["lr"] = group["lr"] * factor
    try:
        optimizer.step()
    finally:
        for group, lr in saved:
            group["lr"] = lr


class LearningRateControl(Balancer):
    """A balancer that sets per-modality learning-rate factors (``self.lr_factors``) applied at every step."""

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        names = {g.get("name") for g in optimizer.param_groups}
        missing = [m for m in model.modalities if m not in names]
        if missing:
            raise ValueError(f"{type(self).__name__} needs optimizer param groups named per modality; none for "
                             f"{missing} (groups: {sorted(n for n in names if n)}). Build the optimizer with "
                             "mmlib.train.build_optimizer")
        self.lr_factors = {m: 1.0 for m in model.modalities}

    def training_step(self, model, batch, optimizer):
        with self.info.autocast():
            out = model(batch.inputs)
            loss = self.loss(model, out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        scaled_lr_step(optimizer, self.lr_factors)
        return {"loss": loss.detach(), **self.state()}

    def state(self):
        return {f"lr_factor_{m}": torch.tensor(f) for m, f in self.lr_factors.items()}


