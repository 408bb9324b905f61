"""D&R: diagnosing and re-learning (Wei, Li, Feng & Hu, ECCV 2024, "Diagnosing and re-learning for balanced
multimodal learning").

Training is joint training on the fused cross-entropy. Every ``reinit_epoch`` epochs, at most ``reinit_num`` times,
each modality's learning state is diagnosed from its encoder's features and its encoder is partly re-initialised:
    purity(D) = 1/|D| sum_clusters max_y |{i in cluster : y_i = y}|   (KMeans with as many clusters as classes on
                                                                      the features of D, each scaled to [-1, 1])
    g_m       = |purity(train) - purity(val)|
    w_m       = tanh(lambda g_m)
    theta_m  <- w_m theta_m^init + (1 - w_m) theta_m                  (every parameter of encoder m)
theta^init are the encoders' parameters when the balancer is set up (kept in its state for resumption). As in the
original (``code/ours.py``), a re-initialisation follows the evaluation of epoch k reinit_epoch (0-based, k >= 1),
so it runs at the start of the next epoch; the features come in eval mode from the training loader (with its
augmentation) and from the validation loader.

Clustering is scikit-learn's (``MinMaxScaler(-1, 1)``, then ``KMeans`` with k-means++, ``n_init`` restarts and
``random_state=seed``), as in the original: scikit-learn is a runtime dependency of this balancer. It runs on the
CPU, a few times per run.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..registry import register
from .base import Balancer
from .common import require_modalities


@dataclass
class DnRConfig:
    reinit_epoch: int = 20  # epochs between diagnoses (original; BalanceMM: 15)
    reinit_num: int = 3  # diagnoses at most (original; BalanceMM: 2)
    move_lambda: float = 3.0  # lambda of w = tanh(lambda g)
    # KMeans restarts: 10, scikit-learn's default when the original ran (1 since scikit-learn 1.4, n_init="auto")
    n_init: int = 10
    seed: int = 0  # KMeans random_state (original: 0)


def purity(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose label is their cluster's most frequent label."""
    clusters, labels = clusters.long().cpu(), labels.long().cpu()
    classes = int(labels.max()) + 1
    counts = torch.bincount(clusters * classes + labels, minlength=(int(clusters.max()) + 1) * classes)
    return float(counts.view(-1, classes).amax(dim=1).sum()) / len(labels)


def cluster_purity(features: torch.Tensor, labels: torch.Tensor, n_clusters: int, n_init: int = 10,
                   seed: int = 0) -> float:
    """Purity of a KMeans clustering of ``features`` (N, D), each feature min-max scaled to [-1, 1] first."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features.float().cpu().numpy())
    clusters = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(x)
    return purity(torch.from_numpy(clusters.astype(np.int64)), labels)


def reinit_strength(gap: float, move_lambda: float) -> float:
    """w = tanh(lambda g)."""
    return math.tanh(move_lambda * gap)


@torch.no_grad()
def interpolate_(params: list[torch.Tensor], init: list[torch.Tensor], weight: float) -> None:
    """theta <- w theta_init + (1 - w) theta, in place."""
    for p, p0 in zip(params, init):
        p.mul_(1 - weight).add_(p0.to(p.device, p.dtype), alpha=weight)


@torch.no_grad()
def encoder_features(model, loader, autocast=contextlib.nullcontext) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({modality: (N, D) features}, (N,) labels) over ``loader`` in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    features: dict[str, list[torch.Tensor]] = {}
    labels = []
    try:
        for batch in loader:
            with autocast():
                out = model(batch.inputs)
            for m, h in out.features.items():
                features.setdefault(m, []).append(h.float().flatten(1).cpu())
            labels.append(batch.label.cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("dnr: the loader gave no batches")
    return {m: torch.cat(f) for m, f in features.items()}, torch.cat(labels)


@register("balancers", "dnr")
class DiagnosingRelearning(Balancer):
    Config = DnRConfig

    def __init__(self, **params):
        super().__init__(**params)
        c = self.cfg
        if c.reinit_epoch < 1 or c.reinit_num < 0 or c.n_init < 1 or c.move_lambda < 0:
            raise ValueError(f"dnr: reinit_epoch and n_init must be >= 1, reinit_num and move_lambda >= 0; got "
                             f"{c.reinit_epoch}, {c.n_init}, {c.reinit_num}, {c.move_lambda}")

    def setup(self, model, optimizer, info):
        super().setup(model, optimizer, info)
        require_modalities("dnr", model.modalities)
        self.params = {m: model.encoder_parameters(m) for m in model.modalities}
        self.init = {m: [p.detach().clone() for p in ps] for m, ps in self.params.items()}
        self.gaps = {m: 0.0 for m in model.modalities}
        self.weights = {m: 0.0 for m in model.modalities}

    def due(self, epoch: int) -> bool:
        """Whether a re-initialisation runs at the start of ``epoch``: after epoch k reinit_epoch, 1 <= k <= num."""
        done = epoch - 1
        return done > 0 and done % self.cfg.reinit_epoch == 0 and done // self.cfg.reinit_epoch <= self.cfg.reinit_num

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        if self.due(epoch):
            self.relearn(trainer)

    def relearn(self, trainer) -> None:
        """Diagnose every modality on the train and val loaders, then re-initialise its encoder by w_m."""
        train, train_labels = encoder_features(trainer.model, trainer.loaders["train"], trainer.autocast)
        val, val_labels = encoder_features(trainer.model, trainer.loaders["val"], trainer.autocast)
        c = self.cfg
        for m in self.params:
            gap = abs(cluster_purity(train[m], train_labels, self.info.num_classes, c.n_init, c.seed)
                      - cluster_purity(val[m], val_labels, self.info.num_classes, c.n_init, c.seed))
            self.gaps[m], self.weights[m] = gap, reinit_strength(gap, c.move_lambda)
            interpolate_(self.params[m], self.init[m], self.weights[m])

    def state(self):
        return {**{f"purity_gap_{m}": torch.tensor(g) for m, g in self.gaps.items()},
                **{f"reinit_weight_{m}": torch.tensor(w) for m, w in self.weights.items()}}

    def state_dict(self):
        return {"init": {m: [p.cpu() for p in ps] for m, ps in self.init.items()}, "gaps": dict(self.gaps),
                "weights": dict(self.weights)}

    def load_state_dict(self, state):
        self.init = {m: [p.to(self.info.device) for p in ps] for m, ps in state["init"].items()}
        self.gaps, self.weights = dict(state["gaps"]), dict(state["weights"])
