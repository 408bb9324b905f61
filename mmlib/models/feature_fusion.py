"""Fusions on pooled modality features, for any number K of modalities: the traditional fusions AMSS compares
against (amss.md Table 5: Affine, ML-LSTM, Weight, ETMC), the public code's Gated fusion, and the MLP-Mixer
fusion of DGL Table 2.

Ownership rule (``modality_parameters``): a parameter that reads modality m's features alone (its prediction
head, its input projection) belongs to m; everything after the modalities meet is shared.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from .fusion import Fusion, ModelOutput


def _order(modalities: list[str], order: list[str] | None, name: str) -> list[str]:
    """A permutation of the modalities (the default keeps the model's order)."""
    if order is None:
        return list(modalities)
    if sorted(order) != sorted(modalities):
        raise ValueError(f"{name}: order {order} must list each modality {modalities} exactly once")
    return list(order)


def _positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{name}: {key} must be >= 1, got {value}")


@register("fusions", "weight")
class WeightFusion(Fusion):
    """Prediction weight fusion (amss.md §5, ref. [10]): a head per modality, and an attention network
    scoring each modality, score_m = v·tanh(W_m h_m); the prediction is sum_m softmax(score)_m · logits_m."""

    kind = "late"
    protocols = ("zero_feature", "own_head", "zero_input")

    def __init__(self, dims, num_classes, attention_dim: int = 128):
        super().__init__(dims, num_classes)
        _positive("weight fusion", attention_dim=attention_dim)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
        self.keys = nn.ModuleDict({m: nn.Linear(d, attention_dim) for m, d in dims.items()})
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def modality_weights(self, features) -> torch.Tensor:
        """(B, K) attention weights over the modalities, in ``self.modalities`` order."""
        scores = [self.score(torch.tanh(self.keys[m](features[m]))) for m in self.modalities]
        return torch.cat(scores, dim=1).softmax(dim=1)

    def forward(self, features):
        logits = torch.stack([self.heads[m](features[m]) for m in self.modalities], dim=1)  # (B, K, C)
        return (self.modality_weights(features).unsqueeze(-1) * logits).sum(dim=1)

    def unimodal(self, features, modality, protocol):
        if protocol == "own_head":
            return self.heads[modality](features[modality])
        return super().unimodal(features, modality, protocol)

    def modality_parameters(self, modality):
        return [*self.heads[modality].parameters(), *self.keys[modality].parameters()]


@register("fusions", "affine")
class AffineFusion(Fusion):
    """FiLM (Perez et al., amss.md ref. [9]): gamma, beta = split(Linear(x)); h = gamma * y + beta; logits =
    Linear(h). For K modalities the conditioning is chained along ``order``: h_1 = f_1 and
    h_k = gamma(h_{k-1}) * f_k + beta(h_{k-1}); the head reads h_K. K = 2 with the default order is the public
    code's ``x_film=True`` (the first modality conditions the second)."""

    kind = "early"
    protocols = ("zero_feature", "zero_input")

    def __init__(self, dims, num_classes, order: list[str] | None = None):
        super().__init__(dims, num_classes)
        if len(dims) < 2:
            raise ValueError("affine fusion needs at least two modalities (one conditions the other)")
        self.order = _order(self.modalities, order, "affine fusion")
        self.film = nn.ModuleList(
            nn.Linear(dims[prev], 2 * dims[cur]) for prev, cur in zip(self.order, self.order[1:]))
        self.head = nn.Linear(dims[self.order[-1]], num_classes)

    def forward(self, features):
        h = features[self.order[0]]
        for film, m in zip(self.film, self.order[1:]):
            gamma, beta = film(h).chunk(2, dim=-1)
            h = gamma * features[m] + beta
        return self.head(h)

    def modality_parameters(self, modality):
        # only the first FiLM generator reads a single modality (the first in the chain)
        return list(self.film[0].parameters()) if modality == self.order[0] else []


@register("fusions", "gated")
class GatedFusion(Fusion):
    """Gated fusion as in the public fusion modules: logits = Linear(sigmoid(W_x x) * W_y y). For K modalities
    the last one in ``order`` carries the content and every other one gates it:
    h = prod_{k<K} sigmoid(W_k f_k) * W_K f_K."""

    kind = "early"
    protocols = ("zero_feature", "zero_input")

    def __init__(self, dims, num_classes, hidden: int = 512, order: list[str] | None = None):
        super().__init__(dims, num_classes)
        if len(dims) < 2:
            raise ValueError("gated fusion needs at least two modalities (one gates the other)")
        _positive("gated fusion", hidden=hidden)
        self.order = _order(self.modalities, order, "gated fusion")
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, features):
        *gates, content = self.order
        h = self.proj[content](features[content])
        for m in gates:
            h = torch.sigmoid(self.proj[m](features[m])) * h
        return self.head(h)

    def modality_parameters(self, modality):
        return list(self.proj[modality].parameters())


@register("fusions", "ml_lstm")
class MultiLayerLSTMFusion(Fusion):
    """Multi-layer LSTM fusion (amss.md ref. [34]): each modality's feature is projected to ``hidden`` and
    the K projections, in ``order``, form a sequence read by a ``layers``-deep LSTM; the last hidden state of
    the top layer goes to a linear head."""

    kind = "early"
    protocols = ("zero_feature", "zero_input")

    def __init__(self, dims, num_classes, hidden: int = 256, layers: int = 2, order: list[str] | None = None):
        super().__init__(dims, num_classes)
        _positive("ml_lstm fusion", hidden=hidden, layers=layers)
        self.order = _order(self.modalities, order, "ml_lstm fusion")
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, features):
        sequence = torch.stack([self.proj[m](features[m]) for m in self.order], dim=1)  # (B, K, hidden)
        _, (h_n, _) = self.lstm(sequence)
        return self.head(h_n[-1])

    def modality_parameters(self, modality):
        return list(self.proj[modality].parameters())


def dempster_shafer(alpha_1: torch.Tensor, alpha_2: torch.Tensor) -> torch.Tensor:
    """Reduced Dempster-Shafer combination of two Dirichlet opinions (TMC/ETMC, amss.md ref. [47]).

    With S = sum(alpha), belief b = (alpha - 1) / S and uncertainty u = C / S (C classes):
    conflict c = sum_{i != j} b1_i b2_j, b = (b1 b2 + b1 u2 + b2 u1) / (1 - c), u = u1 u2 / (1 - c);
    the combined opinion is returned as alpha = b S + 1 with S = C / u.
    """
    classes = alpha_1.shape[-1]
    s_1, s_2 = alpha_1.sum(-1, keepdim=True), alpha_2.sum(-1, keepdim=True)
    b_1, b_2 = (alpha_1 - 1) / s_1, (alpha_2 - 1) / s_2
    u_1, u_2 = classes / s_1, classes / s_2
    agreement = (b_1 * b_2).sum(-1, keepdim=True)
    conflict = b_1.sum(-1, keepdim=True) * b_2.sum(-1, keepdim=True) - agreement
    belief = (b_1 * b_2 + b_1 * u_2 + b_2 * u_1) / (1 - conflict)
    uncertainty = u_1 * u_2 / (1 - conflict)
    strength = classes / uncertainty
    return belief * strength + 1


@register("fusions", "etmc")
class ETMCFusion(Fusion):
    """Enhanced trusted multi-view classification (ETMC, amss.md ref. [47]). Each modality's head gives
    evidence e_m = softplus(logits_m), a Dirichlet alpha_m = e_m + 1; opinions are combined with the reduced
    Dempster-Shafer rule (``dempster_shafer``), folded over the modalities in order. With ``pseudo_view`` (the
    "enhanced" part) a head on the concatenated features adds one more opinion. Returned logits are
    log(combined alpha), monotone in the combined evidence; ``extras["alphas"]`` holds every opinion's alpha
    (per modality, plus ``"pseudo"``) and ``extras["alpha"]`` the combined one, for the evidential loss."""

    kind = "late"
    protocols = ("zero_feature", "own_head", "zero_input")

    def __init__(self, dims, num_classes, pseudo_view: bool = True):
        super().__init__(dims, num_classes)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
        self.pseudo_head = nn.Linear(sum(dims.values()), num_classes) if pseudo_view else None

    def opinions(self, features) -> dict[str, torch.Tensor]:
        """alpha = softplus(logits) + 1 of every view (the modalities, then the pseudo view)."""
        alphas = {m: F.softplus(self.heads[m](features[m]).float()) + 1 for m in self.modalities}
        if self.pseudo_head is not None:
            joint = torch.cat([features[m] for m in self.modalities], dim=-1)
            alphas["pseudo"] = F.softplus(self.pseudo_head(joint).float()) + 1
        return alphas

    def combine(self, features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        alphas = self.opinions(features)
        views = list(alphas.values())
        combined = views[0]
        for alpha in views[1:]:
            combined = dempster_shafer(combined, alpha)
        return combined, alphas

    def run(self, encoders, inputs):
        features = {m: encoders[m](inputs[m]) for m in self.modalities}
        combined, alphas = self.combine(features)
        return ModelOutput(combined.log(), features, {"alphas": alphas, "alpha": combined})

    def forward(self, features):
        return self.combine(features)[0].log()

    def unimodal(self, features, modality, protocol):
        if protocol == "own_head":
            return (F.softplus(self.heads[modality](features[modality]).float()) + 1).log()
        return super().unimodal(features, modality, protocol)

    def modality_parameters(self, modality):
        return list(self.heads[modality].parameters())


class MixerLayer(nn.Module):
    """One MLP-Mixer layer (Tolstikhin et al.) over (B, tokens, dim): token mixing, then channel mixing."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int, dropout: float):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.mix_tokens = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Dropout(dropout),
                                        nn.Linear(token_hidden, tokens))
        self.norm_channels = nn.LayerNorm(dim)
        self.mix_channels = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Dropout(dropout),
                                          nn.Linear(channel_hidden, dim))

    def forward(self, x):
        x = x + self.mix_tokens(self.norm_tokens(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mix_channels(self.norm_channels(x))


@register("fusions", "mlp_mixer")
class MLPMixerFusion(Fusion):
    """MLP-Mixer fusion (DGL Table 2, MOSI): each modality's feature is projected to a ``dim``-d token; mixer
    layers mix across the K modality tokens and across channels; the mean token goes to a linear head."""

    kind = "early"
    protocols = ("zero_feature", "zero_input")

    def __init__(self, dims, num_classes, dim: int = 256, layers: int = 2, token_hidden: int = 64,
                 channel_hidden: int = 512, dropout: float = 0.0):
        super().__init__(dims, num_classes)
        _positive("mlp_mixer fusion", dim=dim, layers=layers, token_hidden=token_hidden,
                  channel_hidden=channel_hidden)
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in dims.items()})
        self.layers = nn.Sequential(*(MixerLayer(len(dims), dim, token_hidden, channel_hidden, dropout)
                                      for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, features):
        tokens = torch.stack([self.proj[m](features[m]) for m in self.modalities], dim=1)  # (B, K, dim)
        return self.head(self.norm(self.layers(tokens)).mean(dim=1))

    def modality_parameters(self, modality):
        return list(self.proj[modality].parameters())
