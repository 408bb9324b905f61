"""AMSS / AMSS+ (Yang et al., TPAMI, "Learning to Rebalance Multi-Modal Optimization by Adaptively Masking
Subnetworks") and the two modulations of its Table 1.

Per step, after the fused loss's backward (amss.md §3.2-3.3):
    u_hat^(k) = I(X^(k); Y) / H(X^(k)),  I >= H(Y) + 1/B sum_i log q(y_i | x_i^(k))    (significance, Eq. 2)
    u^(k)     <- lambda u^(k) + (1 - lambda) u_hat^(k)                                 (momentum, Eq. 3)
    rho^(k)   = 1 - softmax(u / tau)_k                                                  (update ratio, Eq. 4)
    F_j       = g_j^2 (per_sample: 1/B sum_i g_ij^2),  p_j = F_j / sum_{j in k} F_j       (importance, §3.2.2)
    in every layer l of modality k, draw ceil(rho^(k) C_l) of its C_l mask units without replacement
    AMSS:  g <- g * m,      m_j = 1 on drawn units, 0 elsewhere                         (Eq. 1)
    AMSS+: g <- g * m_hat,  m_hat_j = 1 / (p_j + C_l) on drawn units                    (after Eq. 5)
The other AMSS+ scalings: ``exact``, 1 / pi_j with pi_j the exact inclusion probability (Eq. 5; needs
``systematic`` or ``random`` sampling, whose pi_j is known), and ``official_code``, 1 / (pi_j + 1 / C_l) with pi_j
the unit's importance normalised within its layer (the public code).

q(y | x^(k)) is the modality's own head under late fusion (``own_head``, else ``head_split``) and the fused head
with the other features zeroed (``zero_feature``) under early / hybrid fusion. H(X^(k)) is estimated as in the
public code, by the mean entropy of the softmax over the modality's pooled feature vector (the paper is silent).

The subnetwork of modality k is its encoder, plus its part of the head under late fusion (supplement C.2); mask
units are output channels of convolutions, attention heads of tensors tagged ``mask_unit``, single elements
otherwise (``mmlib.balancers.masking``).

``variant="official_code"`` switches to the public code's formulas (reference/implementations.md §1.3): no
momentum, rate (-CE + H_code(Y) + 0.5) / H(feature softmax) with H_code(Y) the cross-entropy of the label
frequencies with their own softmax, temperature 0.2, ratios clamped to [0.1, 0.9] (0.5 for all when a numerator
is <= 0 or a ratio is NaN), ``head_split`` logits, only convolution kernels masked, AMSS+ scaling 1 / (pi + 1/C_l).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..registry import register
from .base import Balancer
from .common import check_choice, per_modality, require_modalities, resolve_protocol
from .masking import (
    SAMPLING,
    UnitLayout,
    apply_unit_multipliers,
    build_layout,
    conv_weights,
    layer_distribution,
    sample_units,
    unit_importance,
    units_per_layer,
)

SCOPES = ("auto", "backbone", "classifier", "both", "conv_kernels")
VARIANTS = ("paper", "official_code")
SCALINGS = ("paper", "exact", "official_code")
RATIOS = ("significance", "one")
FISHER = ("batch", "per_sample")


# ------------------------------------------------------------------------------------------------ formulas
def label_entropy(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """H(Y) = -sum_c p(y_c) log p(y_c) with p(y_c) the batch label frequencies (Eq. 2), in nats."""
    freq = torch.bincount(labels, minlength=num_classes).float() / labels.numel()
    return -(freq * torch.log(freq.clamp_min(1e-30))).sum()


def official_label_entropy(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The public code's H(Y): cross-entropy of the label frequencies with the softmax of those same frequencies
    (the frequencies are fed as logits), -sum_c p_c log softmax(p)_c."""
    freq = torch.bincount(labels, minlength=num_classes).float() / labels.numel()
    return -(freq * torch.log_softmax(freq, dim=0)).sum()


def feature_softmax_entropy(features: torch.Tensor) -> torch.Tensor:
    """Estimate of H(X^(k)): batch mean of the entropy of softmax over each sample's feature vector."""
    logp = torch.log_softmax(features.flatten(1).float(), dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def mutual_information_bound(logits: torch.Tensor, labels: torch.Tensor, h_y: torch.Tensor) -> torch.Tensor:
    """Barber-Agakov bound I(X;Y) >= H(Y) + 1/B sum_i log q(y_i | x_i) (Eq. 2)."""
    return h_y - F.cross_entropy(logits.float(), labels)


def significance(unimodal_logits: dict[str, torch.Tensor], features: dict[str, torch.Tensor], labels: torch.Tensor,
                 num_classes: int) -> torch.Tensor:
    """u_hat^(k) = I(X^(k); Y) / H(X^(k)) for the modalities in order, (K,)."""
    h_y = label_entropy(labels, num_classes)
    return torch.stack([mutual_information_bound(z, labels, h_y) / feature_softmax_entropy(features[m])
                        for m, z in unimodal_logits.items()])


def update_ratios(u: torch.Tensor, tau: float) -> torch.Tensor:
    """rho^(k) = 1 - exp(u^(k)/tau) / sum_n exp(u^(n)/tau) (Eq. 4), (K,)."""
    if u.numel() < 2:
        raise ValueError(f"update ratios need at least two modalities, got {u.numel()}")
    return 1 - torch.softmax(u.double() / tau, dim=0)


def official_code_ratios(unimodal_logits: dict[str, torch.Tensor], features: dict[str, torch.Tensor],
                         labels: torch.Tensor, num_classes: int,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The public code's rates and ratios: rate_k = (-CE_k + H_code(Y) + 0.5) / H(features_k);
    rho = clamp(1 - softmax(rate / T), 0.1, 0.9); all 0.5 if a numerator is <= 0; NaN -> 0.5. (For K = 2,
    1 - softmax(t)_a = e^{t_v} / (e^{t_a} + e^{t_v}), the code's coefficient.)"""
    h_y = official_label_entropy(labels, num_classes)
    numerators = torch.stack([mutual_information_bound(z, labels, h_y) + 0.5 for z in unimodal_logits.values()])
    rates = numerators / torch.stack([feature_softmax_entropy(features[m]) for m in unimodal_logits])
    rho = 1 - torch.softmax(rates / temperature, dim=0)
    rho = torch.where(torch.isnan(rho), torch.full_like(rho, 0.5), rho).clamp(0.1, 0.9)
    rho = torch.where((numerators <= 0).any(), torch.full_like(rho, 0.5), rho)
    return rates, rho


# ------------------------------------------------------------------------------------------------ subnetworks
def subnetwork(model, modality: str, scope: str) -> tuple[list, set[int]]:
    """Parameters of modality ``modality``'s subnetwork and the ids of its convolution weights.

    ``auto``: the encoder, plus the modality's part of the head under late fusion (supplement C.2); ``backbone``:
    the encoder; ``classifier``: the modality's part of the head; ``both``: encoder and head part (Table 7 treats a
    concat head as decoupled); ``conv_kernels``: the encoder's convolution weights (public code)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    encoder = model.encoders[modality]
    convs = conv_weights(encoder)
    head = list(model.fusion.modality_parameters(modality))
    if scope == "auto":
        scope = "both" if model.fusion.kind == "late" else "backbone"
    if scope == "conv_kernels":
        params = [p for p in encoder.parameters() if id(p) in convs]
    elif scope == "backbone":
        params = list(encoder.parameters())
    elif scope == "classifier":
        params = head
    else:
        params = list(encoder.parameters()) + head
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(f"the {scope!r} subnetwork of modality {modality!r} is empty with fusion "
                         f"{type(model.fusion).__name__}")
    return params, convs


# ------------------------------------------------------------------------------------------------ AMSS / AMSS+
@dataclass
class AMSSConfig:
    tau: float = 0.25  # Eq. 4 temperature (supplement C.1: 0.25 audio-visual, 0.5 text-image and NVGesture)
    momentum: float = 0.9  # lambda of Eq. 3 (no value in the paper; see LOG.md)
    protocol: str = "auto"  # q(y|x^(k)): auto (own_head/head_split for late fusion, else zero_feature) or a protocol
    scope: str = "auto"  # auto | backbone | classifier | both | conv_kernels (Table 7 ablations)
    sampling: str = "importance"  # importance (without replacement, by Fisher) | systematic | random (Table 6)
    ratio: str = "significance"  # significance (Eq. 4) | one (rho = 1 for all: AMSS+ scaling only, §4.6)
    fisher: str = "batch"  # batch: squared mini-batch gradient | per_sample: mean of per-sample squares (B backwards)
    variant: str = "paper"  # paper | official_code (the public code's formulas, module docstring)


@dataclass
class AMSSPlusConfig(AMSSConfig):
    # exact: 1/pi_j, the only form with the property §3.3 states (the rescaled masked gradient is unbiased); it
    # needs inclusion probabilities in closed form, so units are drawn by importance-proportional systematic
    # sampling. Named variants: paper: 1/(p_j + C_l) as printed (a mean multiplier of about 0.07: a 14x cut of
    # the learning rate, LOG.md) | official_code: 1/(pi_j + 1/C_l), the public code's form.
    scaling: str = "exact"
    sampling: str = "systematic"


OFFICIAL_CODE = {"tau": 0.2, "momentum": 0.0, "protocol": "head_split", "scope": "conv_kernels"}


@register("balancers", "amss")
class AMSS(Balancer):
    """AMSS: 0/1 masks on subnetworks sized by modal significance (amss.md §3.2)."""

    Config = AMSSConfig
    official_code_overrides: ClassVar[dict] = OFFICIAL_CODE

    def __init__(self, **params):
        if params.get("variant") == "official_code":
            params = {**self.official_code_overrides, **params}  # the code's values unless given explicitly
        super().__init__(**params)
        c = self.cfg
        check_choice("amss.variant", c.variant, VARIANTS)
        check_choice("amss.sampling", c.sampling, SAMPLING)
        check_choice("amss.ratio", c.ratio, RATIOS)
        check_choice("amss.scope", c.scope, SCOPES)
        check_choice("amss.fisher", c.fisher, FISHER)
        if c.tau <= 0:
            raise ValueError(f"amss.tau must be > 0, got {c.tau}")
        if not 0 <= c.momentum < 1:
            raise ValueError(f"amss.momentum must be in [0, 1), got {c.momentum}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities(type(self).__name__, model.modalities)
        self.protocol = resolve_protocol(model.fusion, self.cfg.protocol)
        self.layouts: dict[str, UnitLayout] = {}
        for m in model.modalities:
            params, convs = subnetwork(model, m, self.cfg.scope)
            self.layouts[m] = build_layout(params, convs, info.device)
        self.u: torch.Tensor | None = None
        self._state: dict[str, torch.Tensor] = {}
        self._fisher: dict[str, list[torch.Tensor]] | None = None

    def training_step(self, model, batch, optimizer):
        """With ``fisher="per_sample"``: F_j = 1/B sum_i (d loss_i / d w_j)^2 (the paper's empirical Fisher, §3.2.2),
        from one extra backward pass per sample, before the usual step."""
        if self.cfg.fisher == "batch":
            return super().training_step(model, batch, optimizer)
        with self.info.autocast():
            out = model(batch.inputs)
            per_sample = F.cross_entropy(out.logits.float(), batch.label, reduction="none")
        params = [p for layout in self.layouts.values() for p in layout.params]
        squares = [torch.zeros(p.shape, device=p.device) for p in params]
        for loss_i in per_sample:
            for sq, g in zip(squares, torch.autograd.grad(loss_i, params, retain_graph=True, allow_unused=True)):
                if g is not None:
                    sq.add_(g.float().square())
        torch._foreach_div_(squares, float(len(per_sample)))
        self._fisher, start = {}, 0
        for m, layout in self.layouts.items():
            self._fisher[m], start = squares[start:start + len(layout.params)], start + len(layout.params)
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.adjust_gradients(model, out, batch)
        self._fisher = None
        optimizer.step()
        return {"loss": loss.detach(), **self.state()}

    # --- Eq. 2-4
    def ratios(self, model, out, batch) -> torch.Tensor:
        with self.info.autocast():  # the features may be bf16
            uni = model.unimodal_logits(batch.inputs, out, self.protocol)
        feats = {m: out.features[m].detach() for m in uni}
        if self.cfg.variant == "official_code":
            u_hat, rho = official_code_ratios(uni, feats, batch.label, self.info.num_classes, self.cfg.tau)
            self.u = u_hat
        else:
            u_hat = significance(uni, feats, batch.label, self.info.num_classes)
            self.u = u_hat if self.u is None else self.cfg.momentum * self.u + (1 - self.cfg.momentum) * u_hat
            rho = update_ratios(self.u, self.cfg.tau)
        for k, m in enumerate(uni):
            self._state[f"uhat_{m}"], self._state[f"u_{m}"], self._state[f"rho_{m}"] = u_hat[k], self.u[k], rho[k]
        if self.cfg.ratio == "one":
            rho = torch.ones_like(rho)
        return rho

    def multipliers(self, selected, inclusion, importance, weights, layout, modality) -> torch.Tensor:
        """Per-unit gradient multipliers: AMSS's 0/1 mask."""
        return selected.double()

    @torch.no_grad()
    def adjust_gradients(self, model, out, batch):
        rho = self.ratios(model, out, batch)
        for k, (m, layout) in enumerate(self.layouts.items()):
            importance = unit_importance(layout, self._fisher[m] if self._fisher else None)
            weights = layer_distribution(importance, layout)
            if self.cfg.sampling == "random":
                weights = torch.ones_like(weights) / layout.layer_size[layout.layer_of_unit]
            count = units_per_layer(rho[k], layout)
            selected, inclusion = sample_units(weights, count, layout, self.cfg.sampling)
            apply_unit_multipliers(layout, self.multipliers(selected, inclusion, importance, weights, layout, m))

    def state(self):
        return dict(self._state)

    def state_dict(self):
        return {"u": None if self.u is None else self.u.detach().cpu()}

    def load_state_dict(self, state):
        u = state.get("u")
        self.u = None if u is None else u.to(self.info.device)


@register("balancers", "amss_plus")
class AMSSPlus(AMSS):
    """AMSS+: drawn units rescaled towards an unbiased masked gradient (amss.md §3.3, Eq. 5 and after)."""

    Config = AMSSPlusConfig
    official_code_overrides: ClassVar[dict] = {**OFFICIAL_CODE, "scaling": "official_code", "sampling": "importance"}

    def __init__(self, **params):
        super().__init__(**params)
        check_choice("amss_plus.scaling", self.cfg.scaling, SCALINGS)
        if self.cfg.scaling == "exact" and self.cfg.sampling == "importance":
            raise ValueError("amss_plus.scaling='exact' needs inclusion probabilities in closed form: use "
                             "sampling='systematic' (importance-proportional) or 'random'")

    def multipliers(self, selected, inclusion, importance, weights, layout, modality):
        size = layout.layer_size[layout.layer_of_unit]
        if self.cfg.scaling == "exact":
            scale = 1 / inclusion
        elif self.cfg.scaling == "official_code":
            scale = 1 / (weights + 1 / size)
        else:  # 1 / (p_j + C_l), p_j normalised within the modality
            total = importance.sum()
            p = torch.where(total > 0, importance / total.clamp_min(1e-300), 1.0 / importance.numel())
            scale = 1 / (p + size)
        m = torch.where(selected, scale, torch.zeros_like(scale))
        self._state[f"scale_{modality}"] = (m.sum() / selected.sum().clamp_min(1)).float()
        return m


# ------------------------------------------------------------------------------------------------ Table 1
@dataclass
class GlobalWiseConfig:
    coefficients: dict = field(default_factory=dict)  # {modality: v^(k)}; unlisted modalities keep 1.0
    scope: str = "auto"  # subnetwork scaled, as for amss


@register("balancers", "global_wise")
class GlobalWise(Balancer):
    """Table 1, global-wise: every gradient of modality k's subnetwork scaled by a fixed v^(k) (amss.md §3.1)."""

    Config = GlobalWiseConfig

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        coeffs = per_modality(self.cfg.coefficients, model.modalities, "global_wise.coefficients", 0.0, float("inf"))
        self.params = {m: subnetwork(model, m, self.cfg.scope)[0] for m in model.modalities}
        self.coeffs = {m: torch.tensor(v, device=info.device) for m, v in coeffs.items()}

    @torch.no_grad()
    def adjust_gradients(self, model, out, batch):
        for m, params in self.params.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, self.coeffs[m])

    def state(self):
        return {f"coeff_{m}": v for m, v in self.coeffs.items()}


@dataclass
class ElementwiseUniformConfig:
    ratios: dict = field(default_factory=dict)  # {modality: rho^(k) in (0, 1]}; unlisted modalities keep 1.0
    scope: str = "auto"


@register("balancers", "elementwise_uniform")
class ElementwiseUniform(Balancer):
    """Table 1, element-wise: in every layer of modality k, ceil(rho^(k) C_l) mask units drawn uniformly without
    replacement keep their gradient; the rest get 0 (Eq. 1 with uniform sampling)."""

    Config = ElementwiseUniformConfig

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        ratios = per_modality(self.cfg.ratios, model.modalities, "elementwise_uniform.ratios", 1e-9, 1.0)
        self.layouts = {m: build_layout(*subnetwork(model, m, self.cfg.scope), info.device) for m in model.modalities}
        self.rho = {m: torch.tensor(v, device=info.device, dtype=torch.float64) for m, v in ratios.items()}

    @torch.no_grad()
    def adjust_gradients(self, model, out, batch):
        for m, layout in self.layouts.items():
            uniform = 1 / layout.layer_size[layout.layer_of_unit]
            selected, _ = sample_units(uniform, units_per_layer(self.rho[m], layout), layout, "random")
            apply_unit_multipliers(layout, selected.double())

    def state(self):
        return {f"rho_{m}": v for m, v in self.rho.items()}
