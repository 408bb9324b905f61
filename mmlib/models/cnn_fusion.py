"""Hybrid fusions between two ResNet streams, acting inside the residual stages through multimodal transfer
modules (MMTM, Joze et al. 2020):

- ``mmtm``: the Greedy paper's intermediate-fusion model (greedy.md §3, Fig. 1): MMTM after the last residual
  stages, a linear head per branch, prediction = mean of the branch logits, per-branch logits in
  ``extras["branch_logits"]`` (eq. 4 sums their losses). ``frozen_gate`` / ``averaged_squeeze`` give the
  re-balancing step (eq. 13-14) and the uni-modal branches f'_m of the conditional utilization rate (eq. 7-8);
- ``channel``: the AMSS "Channel" fusion (amss.md §5): the same squeeze and multimodal excitation between the
  streams, with a concatenation head on the pooled features.

The encoders must be ``mmlib.models.resnet.ResNet`` (stem, layer1..layer4). The number of channels after each
stage is derived from the encoder's ``out_dim`` (stage k of a ResNet has out_dim / 2^(4-k) channels) and is
checked on every forward pass. The MMTM modules mix the modalities and are shared parameters.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..registry import register
from .fusion import AveragedHeadsFusion, ConcatFusion, Fusion, ModelOutput

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet_stage_channels(out_dim: int, stage: str) -> int:
    """Channels after ``stage`` of a ResNet with ``out_dim`` output channels (widths double per stage)."""
    divisor = 2 ** (len(RESNET_STAGES) - 1 - RESNET_STAGES.index(stage))
    if out_dim % divisor:
        raise ValueError(f"out_dim {out_dim} is not a ResNet output width (not divisible by {divisor})")
    return out_dim // divisor


class MMTM(nn.Module):
    """Multimodal transfer module (greedy.md eq. 1-2): squeeze h_m = mean of A_m over frames and space;
    w = g([h_1, ..., h_K]) with g = Linear -> ReLU -> one Linear per modality; A_m <- 2 sigmoid(w_m) * A_m.

    It keeps running averages of the squeezes h_m (eq. 6) and excitations w_m (eq. 13) in buffers: a mean over
    all samples recorded since the last reset (``momentum=None``, as in the paper) or an exponential moving
    average. Before anything is recorded the averages are 0, i.e. an averaged gate is the identity.
    """

    def __init__(self, channels: dict[str, int], ratio: float = 4.0, momentum: float | None = None):
        super().__init__()
        if ratio <= 0:
            raise ValueError(f"MMTM ratio must be > 0, got {ratio}")
        if momentum is not None and not 0 < momentum <= 1:
            raise ValueError(f"MMTM running_momentum must be in (0, 1] or None, got {momentum}")
        self.channels, self.momentum = dict(channels), momentum
        total = sum(channels.values())
        hidden = max(1, int(2 * total / ratio))
        self.squeeze = nn.Linear(total, hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, c) for m, c in channels.items()})
        for i, c in enumerate(channels.values()):
            self.register_buffer(f"squeeze_mean_{i}", torch.zeros(c))
            self.register_buffer(f"excite_mean_{i}", torch.zeros(c))
        self.register_buffer("samples_seen", torch.zeros(()))

    def running_squeeze(self, modality: str) -> torch.Tensor:
        return getattr(self, f"squeeze_mean_{list(self.channels).index(modality)}")

    def running_excitation(self, modality: str) -> torch.Tensor:
        return getattr(self, f"excite_mean_{list(self.channels).index(modality)}")

    def reset_running_averages(self) -> None:
        for buffer in self.buffers():
            buffer.zero_()

    def _excite(self, squeezes: list[torch.Tensor], modality: str) -> torch.Tensor:
        return self.excite[modality](torch.relu(self.squeeze(torch.cat(squeezes, dim=1))))

    @torch.no_grad()
    def _record(self, squeezes: dict[str, torch.Tensor], excitations: dict[str, torch.Tensor]) -> None:
        batch = next(iter(squeezes.values())).shape[0]
        seen = self.samples_seen
        rate = self.momentum if self.momentum is not None else batch / (seen + batch)
        for m in self.channels:
            for mean, value in ((self.running_squeeze(m), squeezes[m]),
                                (self.running_excitation(m), excitations[m])):
                mean.add_(rate * (value.float().mean(0) - mean))
        seen.add_(batch)

    def forward(self, maps: dict[str, torch.Tensor], frames: dict[str, int], stage: str,
                frozen_gate: frozenset[str] = frozenset(), averaged_squeeze: frozenset[str] = frozenset(),
                record: bool = False) -> dict[str, torch.Tensor]:
        """``maps[m]``: (B*T_m, C_m, H, W). ``frozen_gate``: modalities whose excitation is replaced by its
        running average (eq. 13-14). ``averaged_squeeze``: modalities whose excitation sees the other
        modalities' running-average squeezes instead of theirs (eq. 7). ``record``: update the running
        averages."""
        squeezes = {}
        for m, fmap in maps.items():
            if fmap.shape[1] != self.channels[m]:
                raise ValueError(f"MMTM after {stage}: the {m!r} encoder gives {fmap.shape[1]} channels, "
                                 f"expected {self.channels[m]}; the fusion's dims must be the ResNet "
                                 f"encoders' out_dim")
            squeezes[m] = fmap.mean(dim=(2, 3)).view(-1, frames[m], fmap.shape[1]).mean(dim=1)
        batches = {m: h.shape[0] for m, h in squeezes.items()}
        if len(set(batches.values())) != 1:
            raise ValueError(f"MMTM after {stage}: modalities have different batch sizes {batches}")
        batch = next(iter(batches.values()))
        joint = [squeezes[m] for m in self.channels]
        excitations = {m: self._excite(joint, m) for m in self.channels}
        if record:
            self._record(squeezes, excitations)
        out = {}
        for m, fmap in maps.items():
            w = excitations[m]
            if m in averaged_squeeze:
                cut = [squeezes[k] if k == m else self.running_squeeze(k).to(fmap.dtype).expand(batch, -1)
                       for k in self.channels]
                w = self._excite(cut, m)
            if m in frozen_gate:
                w = self.running_excitation(m).to(fmap.dtype).expand(batch, -1)
            gate = 2 * torch.sigmoid(w)  # (B, C)
            shaped = fmap.view(batch, frames[m], *fmap.shape[1:])
            out[m] = (shaped * gate.to(fmap.dtype)[:, None, :, None, None]).flatten(0, 1)
        return out


class ResNetStreamsFusion(Fusion):
    """Base of the MMTM-joined ResNet streams: runs the encoders stage by stage (frames folded into the batch,
    as ResNet.forward does) with an MMTM after each of ``stages``, then hands the pooled features to
    ``forward``."""

    kind = "hybrid"
    max_modalities = 2

    def __init__(self, dims, num_classes, stages: tuple[str, ...] = ("layer2", "layer3", "layer4"),
                 ratio: float = 4.0, running_momentum: float | None = None):
        super().__init__(dims, num_classes)
        if len(dims) != 2:
            raise ValueError(f"{type(self).__name__} joins exactly two CNN streams, got {len(dims)}")
        stages = tuple(stages)
        unknown = [s for s in stages if s not in RESNET_STAGES]
        if unknown or not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct names among {RESNET_STAGES}, got {list(stages)}")
        self.stages = tuple(s for s in RESNET_STAGES if s in stages)
        self.mmtm = nn.ModuleDict({
            s: MMTM({m: resnet_stage_channels(d, s) for m, d in dims.items()}, ratio, running_momentum)
            for s in self.stages})
        self._frozen_gate: frozenset[str] = frozenset()
        self._averaged_squeeze: frozenset[str] = frozenset()
        self._recording = False

    # -------------------------------------------------------------------------- Greedy switches (eq. 7, 13)
    def _check(self, modalities) -> frozenset[str]:
        unknown = [m for m in modalities if m not in self.dims]
        if unknown:
            raise KeyError(f"unknown modalities {unknown}; the fusion has {self.modalities}")
        return frozenset(modalities)

    @contextlib.contextmanager
    def frozen_gate(self, *modalities: str):
        """Re-balancing step (greedy.md eq. 13-14): inside the block, each named modality's excitation in
        every MMTM is its running average w_bar, so its branch receives nothing from the other modality and
        that branch's output depends on its own input only. Running averages are not updated inside the
        block."""
        previous, self._frozen_gate = self._frozen_gate, self._check(modalities)
        try:
            yield self
        finally:
            self._frozen_gate = previous

    @contextlib.contextmanager
    def averaged_squeeze(self, *modalities: str):
        """Conditional utilization (greedy.md eq. 7-8): inside the block, each named modality's excitation is
        computed from its own squeeze and the other modalities' running-average squeezes h_bar, giving the
        branch f'_m that relies on its own modality only. Running averages are not updated inside the
        block."""
        previous, self._averaged_squeeze = self._averaged_squeeze, self._check(modalities)
        try:
            yield self
        finally:
            self._averaged_squeeze = previous

    @contextlib.contextmanager
    def recording(self):
        """Update the running averages even in eval mode (e.g. one pass over the training set for eq. 6,
        without touching batch-norm statistics)."""
        previous, self._recording = self._recording, True
        try:
            yield self
        finally:
            self._recording = previous

    def reset_running_averages(self) -> None:
        for module in self.mmtm.values():
            module.reset_running_averages()

    def bypass_parameters(self, modality: str) -> list[nn.Parameter]:
        """theta'_m of greedy.md §5.1: the fusion parameters carrying the other modality into branch m (every
        MMTM's shared squeeze layer and m's excitation layer)."""
        self._check([modality])
        return [p for module in self.mmtm.values()
                for p in (*module.squeeze.parameters(), *module.excite[modality].parameters())]

    # ---------------------------------------------------------------------------------------------- forward
    def run(self, encoders, inputs):
        x, frames = {}, {}
        for m in self.modalities:
            encoder = encoders[m]
            missing = [name for name in ("stem", *RESNET_STAGES) if not hasattr(encoder, name)]
            if missing:
                raise TypeError(f"{type(self).__name__} needs ResNet encoders; the {m!r} encoder "
                                f"({type(encoder).__name__}) lacks {missing}")
            xm = inputs[m]
            frames[m] = xm.shape[1] if xm.dim() == 5 else 1
            xm = xm.flatten(0, 1) if xm.dim() == 5 else xm
            if encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last):
                xm = xm.contiguous(memory_format=torch.channels_last)
            x[m] = encoder.stem(xm)
        switched = bool(self._frozen_gate or self._averaged_squeeze)
        record = (self.training or self._recording) and not switched
        for stage in RESNET_STAGES:
            x = {m: getattr(encoders[m], stage)(x[m]) for m in self.modalities}
            if stage in self.mmtm:
                x = self.mmtm[stage](x, frames, stage, self._frozen_gate, self._averaged_squeeze, record)
        features = {m: x[m].mean(dim=(2, 3)).view(-1, frames[m], x[m].shape[1]).mean(dim=1)
                    for m in self.modalities}
        return self.output(features)

    def output(self, features: dict[str, torch.Tensor]) -> ModelOutput:
        return ModelOutput(self(features), features)


@register("fusions", "mmtm")
class MMTMFusion(AveragedHeadsFusion, ResNetStreamsFusion):
    """Greedy paper model (greedy.md §3): two ResNet branches joined by MMTMs after ``stages`` (default the
    three final residual stages), a linear head per branch; y_hat = (y_hat_0 + y_hat_1) / 2 and the branch
    logits y_hat_m in ``extras["branch_logits"]``. ``own_head`` gives y_hat_m (= f_m of eq. 5)."""

    protocols = ("own_head", "zero_feature", "zero_input")

    def __init__(self, dims, num_classes, stages=("layer2", "layer3", "layer4"), ratio: float = 4.0,
                 running_momentum: float | None = None):
        super().__init__(dims, num_classes, stages, ratio, running_momentum)
        self.make_heads()

    def output(self, features):
        return self.averaged_output(features)


@register("fusions", "channel")
class ChannelFusion(ResNetStreamsFusion):
    """AMSS "Channel" fusion (amss.md §5, ref. [14]): squeeze and multimodal excitation between the CNN
    streams after ``stages``, then a concatenation head on the pooled features (so ``head_split`` is
    available)."""

    protocols = ("zero_feature", "head_split", "zero_input")

    def __init__(self, dims, num_classes, stages=("layer2", "layer3", "layer4"), ratio: float = 4.0,
                 running_momentum: float | None = None):
        super().__init__(dims, num_classes, stages, ratio, running_momentum)
        self.head = ConcatFusion(dims, num_classes)

    def forward(self, features):
        return self.head(features)

    def unimodal(self, features, modality, protocol):
        if protocol == "head_split":
            return self.head.unimodal(features, modality, protocol)
        return super().unimodal(features, modality, protocol)

    def modality_parameters(self, modality):
        return self.head.modality_parameters(modality)
