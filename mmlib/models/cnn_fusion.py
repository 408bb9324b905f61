"""Hybrid fusions between K >= 2 CNN streams, acting between the encoders' stages through multimodal transfer
modules (MMTM, Joze et al. 2020); with a single stream (K = 1) each MMTM is a squeeze-and-excitation block, the
Greedy paper's uni-modal baseline "comparable to the multi-modal DNNs with MMTMs" (greedy.md §6.4):

- ``mmtm``: the Greedy paper's intermediate-fusion model (greedy.md §3, Fig. 1): an MMTM after each of the
  fused stages, a linear head per branch, prediction = mean of the branch logits, per-branch logits in
  ``extras["branch_logits"]`` (eq. 4 sums their losses). ``frozen_gate`` / ``averaged_squeeze`` give the
  re-balancing step (eq. 13-14) and the uni-modal branches f'_m of the conditional utilization rate (eq. 7-8);
- ``channel``: the AMSS "Channel" fusion (amss.md §5): the same squeeze and multimodal excitation between the
  streams, with a concatenation head on the pooled features.

The encoders are staged CNNs (``mmlib.models.stages``: ResNet, I3D, convnet4); ``stages`` names the stages every
encoder has after which an MMTM sits (default: the encoders' ``fusion_stages``, the paper's positions: a ResNet's
last three residual stages, an I3D's six final inception modules, convnet4's conv2..conv4). Built by
``build_model`` (``from_encoders``), the fusion reads each encoder's channels per stage; built from feature widths
alone (``dims``) it assumes ResNet encoders (stage k of a ResNet has out_dim / 2^(4-k) channels). The channels are
checked on every forward pass. The MMTM modules mix the modalities and are shared parameters.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..registry import register
from .fusion import AveragedHeadsFusion, ConcatFusion, Fusion, ModelOutput
from .resnet import ResNet
from .stages import STAGED_ATTRIBUTES, global_mean, is_staged

RESNET_STAGES = ResNet.stage_names


def resnet_stage_channels(out_dim: int, stage: str) -> int:
    """Channels after ``stage`` of a ResNet with ``out_dim`` output channels (widths double per stage)."""
    divisor = 2 ** (len(RESNET_STAGES) - 1 - RESNET_STAGES.index(stage))
    if out_dim % divisor:
        raise ValueError(f"out_dim {out_dim} is not a ResNet output width (not divisible by {divisor})")
    return out_dim // divisor


class MMTM(nn.Module):
    """Multimodal transfer module (greedy.md eq. 1-2): squeeze h_m = mean of A_m over frames, time and space;
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
        """``maps[m]``: (B*T_m, C_m, ...) (2-D maps of T_m frames folded into the batch, or 3-D maps
        (B, C_m, T, H, W) with T_m = 1). ``frozen_gate``: modalities whose excitation is replaced by its
        running average (eq. 13-14). ``averaged_squeeze``: modalities whose excitation sees the other
        modalities' running-average squeezes instead of theirs (eq. 7). ``record``: update the running
        averages."""
        squeezes = {}
        for m, fmap in maps.items():
            if fmap.shape[1] != self.channels[m]:
                raise ValueError(f"MMTM after {stage}: the {m!r} encoder gives {fmap.shape[1]} channels, "
                                 f"expected {self.channels[m]}; build the fusion from its encoders "
                                 f"(build_model, {type(self).__name__} from_encoders) or give ResNet out_dims")
            squeezes[m] = global_mean(fmap, frames[m])
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
            gate = gate.to(fmap.dtype).view(batch, 1, -1, *(1,) * (fmap.dim() - 2))
            out[m] = (shaped * gate).flatten(0, 1)
        return out


class CNNStreamsFusion(Fusion):
    """Base of the MMTM-joined CNN streams: runs the staged encoders stage by stage with an MMTM after each of
    ``stages``, then hands the pooled features to ``output``."""

    kind = "hybrid"

    def __init__(self, dims, num_classes, stages: tuple[str, ...] | None = None, ratio: float = 4.0,
                 running_momentum: float | None = None, stage_channels: dict[str, dict[str, int]] | None = None):
        super().__init__(dims, num_classes)
        if stage_channels is None:  # built from the feature widths alone: ResNet encoders
            stage_channels = {m: {s: resnet_stage_channels(d, s) for s in RESNET_STAGES} for m, d in dims.items()}
            stages = ResNet.fusion_stages if stages is None else stages
        if stages is None:
            raise ValueError(f"{type(self).__name__}: stages must be given with stage_channels")
        order = list(stage_channels[self.modalities[0]])
        stages = tuple(stages)
        unknown = {m: [s for s in stages if s not in stage_channels[m]] for m in self.modalities}
        unknown = {m: names for m, names in unknown.items() if names}
        if unknown or not stages or len(set(stages)) != len(stages):
            raise ValueError(f"stages must be distinct names of stages every encoder has (the first has "
                             f"{order}), got {list(stages)}" + (f"; unknown: {unknown}" if unknown else ""))
        self.stages = tuple(s for s in order if s in stages)
        self.mmtm = nn.ModuleDict({
            s: MMTM({m: stage_channels[m][s] for m in self.modalities}, ratio, running_momentum)
            for s in self.stages})
        self._frozen_gate: frozenset[str] = frozenset()
        self._averaged_squeeze: frozenset[str] = frozenset()
        self._recording = False

    @classmethod
    def from_encoders(cls, encoders, num_classes, **params):
        """The fusion for staged ``encoders``: their channels after each stage, and by default MMTMs after their
        ``fusion_stages`` (which must then agree)."""
        unstaged = [m for m, e in encoders.items() if not is_staged(e)]
        if unstaged:
            raise TypeError(f"{cls.__name__} needs staged CNN encoders (resnet18/50, i3d, convnet4: "
                            f"{', '.join(STAGED_ATTRIBUTES)}); {unstaged} are not")
        if params.get("stages") is None:
            defaults = {m: tuple(e.fusion_stages) for m, e in encoders.items()}
            if len(set(defaults.values())) > 1:
                raise ValueError(f"the encoders' default fusion stages differ ({defaults}); "
                                 f"set model.fusion.stages")
            params["stages"] = next(iter(defaults.values()))
        channels = {m: dict(e.stage_channels) for m, e in encoders.items()}
        return cls({m: e.out_dim for m, e in encoders.items()}, num_classes, stage_channels=channels, **params)

    # -------------------------------------------------------------------------- Greedy switches (eq. 7, 13)
    def _check(self, modalities) -> frozenset[str]:
        unknown = [m for m in modalities if m not in self.dims]
        if unknown:
            raise KeyError(f"unknown modalities {unknown}; the fusion has {self.modalities}")
        return frozenset(modalities)

    @contextlib.contextmanager
    def frozen_gate(self, *modalities: str):
        """Re-balancing step (greedy.md eq. 13-14): inside the block, each named modality's excitation in
        every MMTM is its running average w_bar, so its branch receives nothing from the other modalities and
        that branch's output depends on its own input only. Running averages are not updated inside the
        block (unless ``recording``)."""
        previous, self._frozen_gate = self._frozen_gate, self._check(modalities)
        try:
            yield self
        finally:
            self._frozen_gate = previous

    @contextlib.contextmanager
    def averaged_squeeze(self, *modalities: str):
        """Conditional utilization (greedy.md eq. 7-8, §6.4 for K > 2): inside the block, each named modality's
        excitation is computed from its own squeeze and every other modality's running-average squeeze h_bar,
        giving the branch f'_m that relies on its own modality only (naming every modality gives every f'_m in
        one pass). Running averages are not updated inside the block (unless ``recording``)."""
        previous, self._averaged_squeeze = self._averaged_squeeze, self._check(modalities)
        try:
            yield self
        finally:
            self._averaged_squeeze = previous

    @contextlib.contextmanager
    def recording(self):
        """Update the running averages in any mode: in eval mode (e.g. one pass over the training set for
        eq. 6, without touching batch-norm statistics), or inside a switch (the public code's running average
        over every step)."""
        previous, self._recording = self._recording, True
        try:
            yield self
        finally:
            self._recording = previous

    def reset_running_averages(self) -> None:
        for module in self.mmtm.values():
            module.reset_running_averages()

    def bypass_parameters(self, modality: str) -> list[nn.Parameter]:
        """theta'_m of greedy.md §5.1: the fusion parameters carrying the other modalities into branch m (every
        MMTM's shared squeeze layer and m's excitation layer)."""
        self._check([modality])
        return [p for module in self.mmtm.values()
                for p in (*module.squeeze.parameters(), *module.excite[modality].parameters())]

    # ---------------------------------------------------------------------------------------------- forward
    def run(self, encoders, inputs):
        x, frames, todo = {}, {}, {}
        for m in self.modalities:
            encoder = encoders[m]
            if not is_staged(encoder):
                raise TypeError(f"{type(self).__name__} needs staged CNN encoders; the {m!r} encoder "
                                f"({type(encoder).__name__}) lacks "
                                f"{[a for a in STAGED_ATTRIBUTES if not hasattr(encoder, a)]}")
            x[m], frames[m] = encoder.enter(inputs[m])
            todo[m] = iter(encoder.stage_names)
        switched = bool(self._frozen_gate or self._averaged_squeeze)
        record = self._recording or (self.training and not switched)
        for fused in self.stages:  # each encoder runs up to and through the fused stage, then the MMTM
            for m in self.modalities:
                for name in todo[m]:
                    x[m] = encoders[m].stage(name, x[m])
                    if name == fused:
                        break
            x = self.mmtm[fused](x, frames, fused, self._frozen_gate, self._averaged_squeeze, record)
        for m in self.modalities:  # the stages after the last MMTM
            for name in todo[m]:
                x[m] = encoders[m].stage(name, x[m])
        return self.output({m: global_mean(x[m], frames[m]) for m in self.modalities})

    def output(self, features: dict[str, torch.Tensor]) -> ModelOutput:
        return ModelOutput(self(features), features)


@register("fusions", "mmtm")
class MMTMFusion(AveragedHeadsFusion, CNNStreamsFusion):
    """Greedy paper model (greedy.md §3): K >= 2 CNN branches joined by MMTMs after ``stages`` (default the
    encoders' fusion stages), a linear head per branch; y_hat = mean of the branch logits y_hat_m, which are in
    ``extras["branch_logits"]``. ``own_head`` gives y_hat_m (= f_m of eq. 5)."""

    protocols = ("own_head", "zero_feature", "zero_input")

    def __init__(self, dims, num_classes, stages=None, ratio: float = 4.0, running_momentum: float | None = None,
                 stage_channels=None):
        super().__init__(dims, num_classes, stages, ratio, running_momentum, stage_channels)
        self.make_heads()

    def output(self, features):
        return self.averaged_output(features)


@register("fusions", "channel")
class ChannelFusion(CNNStreamsFusion):
    """AMSS "Channel" fusion (amss.md §5, ref. [14]): squeeze and multimodal excitation between the CNN
    streams after ``stages``, then a concatenation head on the pooled features (so ``head_split`` is
    available)."""

    protocols = ("zero_feature", "head_split", "zero_input")

    def __init__(self, dims, num_classes, stages=None, ratio: float = 4.0, running_momentum: float | None = None,
                 stage_channels=None):
        super().__init__(dims, num_classes, stages, ratio, running_momentum, stage_channels)
        self.head = ConcatFusion(dims, num_classes)

    def forward(self, features):
        return self.head(features)

    def unimodal(self, features, modality, protocol):
        if protocol == "head_split":
            return self.head.unimodal(features, modality, protocol)
        return super().unimodal(features, modality, protocol)

    def modality_parameters(self, modality):
        return self.head.modality_parameters(modality)
