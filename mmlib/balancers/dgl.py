"""DGL: disentangled gradient learning (Wei, Luo & Luo, ICCV 2025, "Boosting multimodal learning via disentangled
gradient learning"; dgl.md §3.2 and Algorithm 1).

The encoders learn only from the unimodal losses and the fusion module and head only from the multimodal loss:
    L^d   = CE(W phi_tau(theta_tau, z^1.detach(), ..., z^K.detach()) + b, y)       (Eq. 9-10)
    L^m   = CE(W phi_tau(theta_tau, 0, ..., z^m, ..., 0) + b, y)                   (Eq. 11-14: ``zero_feature``, the
                                                                                   shared fusion and head, full bias)
    L_DGL = [L^d, alpha sum_m L^m]                                                 (Eq. 15)
A step (Algorithm 1) is one forward pass, then alpha sum_m L^m back-propagated into the encoders only (its
gradient on the fusion module and head is never accumulated: Algorithm 1 clears it before the multimodal
backward), then L^d back-propagated into the fusion module and head only (``backward(inputs=...)``), then the
optimizer step. Under late fusion (concat, sum, MLP-Mixer on pooled features) the gradient of L^d restricted to
the fusion parameters is the gradient of the loss on detached features: the forward values are the same, the
detach only cuts the path into the encoders, and autograd never walks into the encoders for it. Under dense
fusion (MMTM between CNN stages) the fusion parameters sit between encoder stages; L^d reaches them through the
later stages' activations and no encoder parameter receives any of it, which is what the detach of Eq. 9 means
there (the encoders are then trained by the unimodal losses alone, through the MMTM gates as well).

Table 3's ablation (``truncation``):
- ``both`` (DGL): as above;
- ``multimodal`` (+MT): L^d is truncated from the encoders; the unimodal losses reach every parameter;
- ``unimodal`` (+UT): the unimodal losses are removed from the fusion module and head; L^d reaches every parameter.
Table 3's "Baseline" is plain joint training (``naive``).

Public code (shicaiwei123/ICCV2025-GDL, ``main_dgl.py``) choices as named options: ``clip_grad_norm: 40`` (L2
norm over all parameters before the step) and ``scheduler_at_epoch_start: true`` (it steps the scheduler before
each epoch's training, so every epoch runs at the learning rate the Trainer would give the next one: the 0.1 decay
of a 70-epoch StepLR comes at epoch 69, 0-based). Its unimodal logits go through the same head with the full bias,
which is ``zero_feature``; its ``fc_auxi`` head is unused and has no counterpart here.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Balancer
from .common import check_choice, require_modalities, resolve_protocol

TRUNCATIONS = ("both", "multimodal", "unimodal")


@dataclass
class DGLConfig:
    # unimodal losses' weight (Table 4: CREMA-D peaks at 4, the 77.48 of Tables 1 and 3; the public scripts use
    # 4-5 for CREMA-D, 2-3 for Kinetics-Sounds, 2 for VGGSound)
    alpha: float = 4.0
    truncation: str = "both"  # both (DGL) | multimodal (+MT only) | unimodal (+UT only): Table 3
    protocol: str = "zero_feature"  # unimodal logits: the other features set to 0, shared fusion and head
    clip_grad_norm: float = 0.0  # 0: no clipping (paper); public code: 40
    scheduler_at_epoch_start: bool = False  # public code: the scheduler is stepped before each epoch


@register("balancers", "dgl")
class DGL(Balancer):
    Config = DGLConfig

    def __init__(self, **params):
        super().__init__(**params)
        check_choice("dgl.truncation", self.cfg.truncation, TRUNCATIONS)
        if self.cfg.alpha < 0 or self.cfg.clip_grad_norm < 0:
            raise ValueError(f"dgl: alpha and clip_grad_norm must be >= 0, got {self.cfg.alpha}, "
                             f"{self.cfg.clip_grad_norm}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("dgl", model.modalities)
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        encoders = [p for m in model.modalities for p in model.encoder_parameters(m) if p.requires_grad]
        fusion = [p for p in model.fusion.parameters() if p.requires_grad]
        truncation = self.cfg.truncation
        self.unimodal_targets = encoders + (fusion if truncation == "multimodal" else [])
        self.multimodal_targets = fusion + (encoders if truncation == "unimodal" else [])

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        if self.cfg.scheduler_at_epoch_start and epoch == 0:  # one step ahead from the start = stepped before
            scheduler = getattr(trainer, "scheduler", None)  # each epoch instead of after it
            if scheduler is None:
                raise ValueError("dgl.scheduler_at_epoch_start needs the loop's learning-rate scheduler: pass it "
                                 "as LoopContext(..., scheduler=...)")
            with warnings.catch_warnings():  # stepped before the first optimizer step, as the public code does
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
                scheduler.step()

    def training_step(self, model, batch, optimizer):
        with self.info.autocast():
            out = model(batch.inputs)
            uni = model.unimodal_logits(batch.inputs, out, self.protocol)
        fused = F.cross_entropy(out.logits.float(), batch.label)
        unimodal = {m: F.cross_entropy(z.float(), batch.label) for m, z in uni.items()}
        weighted = self.cfg.alpha * torch.stack(list(unimodal.values())).sum()
        optimizer.zero_grad(set_to_none=True)
        weighted.backward(inputs=self.unimodal_targets, retain_graph=True)
        fused.backward(inputs=self.multimodal_targets)
        if self.cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.clip_grad_norm)
        optimizer.step()
        return {"loss": (fused + weighted).detach(), "loss_fused": fused.detach(),
                **{f"loss_{m}": v.detach() for m, v in unimodal.items()}}
