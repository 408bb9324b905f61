"""Mask units, their importance, and per-layer sampling without replacement, vectorised across layers.

A modality's subnetwork is a list of parameter tensors; each tensor is one *layer* l holding C_l mask units
(amss.md §3.2 "mask unit", supplement C.2):

- the weight of a convolution (``nn.Conv1d/2d/3d``): one unit per output channel (dim 0);
- a tensor tagged ``p.mask_unit = ("head", num_heads, dim)``: split along ``dim`` into num_heads equal slices;
- anything else: one unit per element.

All units of a modality live in one flat vector, grouped by layer, so importance, sampling and scaling are a
handful of tensor operations whatever the number of layers (no host synchronisation).

Sampling schemes (each layer draws exactly n_l = ceil(rho * C_l) distinct units):

- ``importance``: successive sampling without replacement with probabilities proportional to the weights (what
  ``torch.multinomial(w, n, replacement=False)`` does), drawn as Gumbel-top-k on log-weights per layer;
- ``systematic``: randomised systematic pi-ps sampling (Madow's systematic sampling in a random order): unit j is
  drawn with inclusion probability exactly pi_j = min(1, c * w_j) (the capped proportional allocation with
  sum_j pi_j = n_l), so 1/pi_j rescaling is exactly unbiased;
- ``random``: uniform sampling without replacement, pi_j = n_l / C_l.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SAMPLING = ("importance", "systematic", "random")
UNIFORM_MIX = 1e-6  # share of the uniform distribution mixed into every layer's weights (all pi_j > 0)


@dataclass
class UnitLayout:
    """Where each parameter's mask units sit in the flat unit vector of one subnetwork."""

    params: list[nn.Parameter]
    kinds: list[tuple]  # ("channel",) | ("element",) | ("head", num_heads, dim)
    offsets: list[int]  # first unit of each parameter (= layer)
    layer_of_unit: torch.Tensor  # (U,) int64
    layer_size: torch.Tensor  # (L,) C_l, float64
    layer_start: torch.Tensor  # (L,) int64, first unit of each layer

    @property
    def num_units(self) -> int:
        return int(self.layer_of_unit.numel())


def conv_weights(module: nn.Module) -> set[int]:
    """ids of the convolution weights inside ``module`` (their mask unit is the output channel)."""
    return {id(m.weight) for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)}


def build_layout(params: list[nn.Parameter], channel_params: set[int], device) -> UnitLayout:
    """Layout of ``params``; ``channel_params`` holds the ids of tensors masked per output channel."""
    if not params:
        raise ValueError("a masked subnetwork needs at least one parameter")
    kinds, sizes = [], []
    for p in params:
        tag = getattr(p, "mask_unit", None)
        if tag is not None:
            if len(tag) != 3 or tag[0] != "head":
                raise ValueError(f"mask_unit must be ('head', num_heads, dim), got {tag!r} on a "
                                 f"{tuple(p.shape)} tensor")
            _, heads, dim = tag
            if heads < 1 or p.shape[dim] % heads:
                raise ValueError(f"mask_unit {tag!r}: dim {dim} of size {p.shape[dim]} does not split into "
                                 f"{heads} heads")
            kinds.append(("head", heads, dim % p.dim()))
            sizes.append(heads)
        elif id(p) in channel_params:
            kinds.append(("channel",))
            sizes.append(p.shape[0])
        else:
            kinds.append(("element",))
            sizes.append(p.numel())
    size = torch.tensor(sizes, dtype=torch.int64)
    start = torch.cumsum(size, 0) - size
    return UnitLayout(params=list(params), kinds=kinds, offsets=start.tolist(),
                      layer_of_unit=torch.repeat_interleave(torch.arange(len(sizes)), size).to(device),
                      layer_size=size.to(device, torch.float64), layer_start=start.to(device))


def unit_importance(layout: UnitLayout, squares: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Importance of each unit, (U,) float64: the element importances summed over the unit's elements. Element
    importances are ``squares`` (one tensor per parameter, e.g. a per-sample empirical Fisher) or, by default, the
    squared gradient. Parameters without a gradient contribute zeros."""
    parts = []
    for i, (p, kind) in enumerate(zip(layout.params, layout.kinds)):
        if squares is not None:
            sq = squares[i].float()
        elif p.grad is not None:
            sq = p.grad.float().square()
        else:
            sq = torch.zeros(p.shape, device=p.device)
        if kind[0] == "channel":
            parts.append(sq.flatten(1).sum(1) if p.dim() > 1 else sq)
        elif kind[0] == "head":
            _, heads, dim = kind
            parts.append(sq.movedim(dim, 0).reshape(heads, -1).sum(1))
        else:
            parts.append(sq.flatten())
    return torch.cat(parts).double()


def segment_sum(values: torch.Tensor, layout: UnitLayout) -> torch.Tensor:
    """Per-layer sums of a unit vector, (L,)."""
    out = torch.zeros(layout.layer_size.shape, dtype=values.dtype, device=values.device)
    return out.index_add_(0, layout.layer_of_unit, values)


def layer_distribution(importance: torch.Tensor, layout: UnitLayout) -> torch.Tensor:
    """Importance normalised within each layer, mixed with a 1e-6 share of the uniform distribution so that every
    unit can be drawn (a layer without any gradient becomes uniform)."""
    total = segment_sum(importance, layout)[layout.layer_of_unit]
    size = layout.layer_size[layout.layer_of_unit]
    share = torch.where(total > 0, importance / total.clamp_min(torch.finfo(total.dtype).tiny), 1.0 / size)
    return (1 - UNIFORM_MIX) * share + UNIFORM_MIX / size


def units_per_layer(ratio: torch.Tensor, layout: UnitLayout) -> torch.Tensor:
    """n_l = ceil(rho * C_l), at least 1 and at most C_l, (L,) float64 (``ratio`` is a 0-d tensor)."""
    n = torch.ceil(ratio.double() * layout.layer_size - 1e-9)
    return torch.minimum(n.clamp_min(1.0), layout.layer_size)


def _rank_within_layer(keys: torch.Tensor, layout: UnitLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Units sorted by layer, then by ``keys`` descending within a layer: (order, rank of each sorted unit)."""
    by_key = torch.argsort(keys, descending=True)
    by_layer = torch.argsort(layout.layer_of_unit[by_key], stable=True)
    order = by_key[by_layer]
    rank = torch.arange(order.numel(), device=keys.device) - layout.layer_start[layout.layer_of_unit[order]]
    return order, rank


def inclusion_probabilities(weights: torch.Tensor, count: torch.Tensor, layout: UnitLayout) -> torch.Tensor:
    """pi_j = min(1, c_l * w_j) with sum_j pi_j = n_l in every layer (the capped proportional allocation):
    with the weights sorted in decreasing order, the t* largest units are certain (pi = 1), t* the smallest t
    with (n_l - t) * w_(t) <= sum_{r >= t} w_(r); the rest get (n_l - t*) w_j / sum_{r >= t*} w_(r)."""
    order, rank = _rank_within_layer(weights, layout)
    layer = layout.layer_of_unit[order]
    w_sorted = weights[order]
    before = torch.cumsum(w_sorted, 0) - w_sorted
    suffix = segment_sum(weights, layout)[layer] - (before - before[layout.layer_start[layer]])
    n = count[layer]
    fits = (n - rank) * w_sorted <= suffix * (1 + 1e-12)
    big = torch.full_like(layout.layer_size, float("inf"))
    first_fit = big.scatter_reduce(0, layer, torch.where(fits, rank.double(), big[layer]), reduce="amin")
    certain = torch.minimum(first_fit, count)  # t*, per layer
    t_star = certain[layer]
    at_t = (layout.layer_start[layer] + t_star.clamp_max(layout.layer_size[layer] - 1).long())
    suffix_at_t = suffix[at_t]  # sum of the weights ranked t* and below, in that layer
    pi_sorted = torch.where(rank < t_star, torch.ones_like(w_sorted),
                            (n - t_star) * w_sorted / suffix_at_t.clamp_min(torch.finfo(w_sorted.dtype).tiny))
    pi = torch.empty_like(pi_sorted)
    pi[order] = pi_sorted.clamp(0.0, 1.0)
    return pi


def sample_units(weights: torch.Tensor, count: torch.Tensor, layout: UnitLayout, method: str,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw exactly ``count[l]`` distinct units in every layer. Returns (selected bool (U,), inclusion
    probabilities (U,) float64, or None for ``importance`` sampling, whose inclusion probabilities have no closed
    form). ``weights`` are positive within-layer sampling weights (``layer_distribution``)."""
    device = weights.device
    if method not in SAMPLING:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {method!r}")
    n_units = layout.layer_of_unit.numel()
    if method in ("importance", "random"):
        uniform = torch.rand(n_units, device=device, dtype=torch.float64, generator=generator)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1 - 1e-16)))
        keys = gumbel if method == "random" else weights.log() + gumbel
        order, rank = _rank_within_layer(keys, layout)
        selected = torch.empty(n_units, dtype=torch.bool, device=device)
        selected[order] = rank < count[layout.layer_of_unit[order]]
        pi = None
        if method == "random":
            pi = (count / layout.layer_size)[layout.layer_of_unit]
        return selected, pi
    pi = inclusion_probabilities(weights, count, layout)
    # random order within each layer, then one uniform start per layer: points U, U+1, ..., U+n_l-1
    shuffle = torch.rand(n_units, device=device, generator=generator)
    order, _ = _rank_within_layer(shuffle, layout)
    layer = layout.layer_of_unit[order]
    pi_sorted = pi[order]
    csum = torch.cumsum(pi_sorted, 0)
    start = layout.layer_start[layer]
    upper = csum - (csum[start] - pi_sorted[start])  # cumulative inclusion within the layer, ends at n_l
    lower = upper - pi_sorted
    offset = torch.rand(layout.layer_size.shape, device=device, dtype=torch.float64, generator=generator)[layer]
    hits = torch.ceil(upper - offset) - torch.ceil(lower - offset)
    selected = torch.empty(n_units, dtype=torch.bool, device=device)
    selected[order] = hits > 0
    return selected, pi


def apply_unit_multipliers(layout: UnitLayout, multipliers: torch.Tensor) -> None:
    """grad <- grad * m (m broadcast from units to elements), for every parameter with a gradient."""
    grads, factors = [], []
    for p, kind, off in zip(layout.params, layout.kinds, layout.offsets):
        if p.grad is None:
            continue
        g = p.grad
        if kind[0] == "channel":
            m = multipliers[off:off + p.shape[0]].view(-1, *([1] * (p.dim() - 1)))
        elif kind[0] == "head":
            _, heads, dim = kind
            shape = [1] * p.dim()
            shape[dim] = p.shape[dim]
            m = multipliers[off:off + heads].repeat_interleave(p.shape[dim] // heads).view(shape)
        else:
            m = multipliers[off:off + p.numel()].view(p.shape)
        grads.append(g)
        factors.append(m.to(g.dtype))
    if grads:
        torch._foreach_mul_(grads, factors)
