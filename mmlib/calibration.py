"""Checks that an embedded dataset shows the phenomenon the papers study.

- a dominant modality: best unimodal accuracy >= worst unimodal accuracy + ``dominance_margin`` points;
- an under-trained weak modality: in the naive joint model, the weak modality's accuracy under ``protocol``
  <= its unimodal accuracy - ``undertrained_margin`` points;
- complementary modalities: naive multimodal accuracy >= the best unimodal accuracy;
- rebalancing helps: the rebalanced model's accuracy >= naive + ``gain`` points.
All accuracies are test means over seeds, in percent.
"""
from __future__ import annotations

import numpy as np

from .experiments import RunRecord


def _mean(values) -> float:
    return round(float(np.mean(list(values)) * 100), 2)


def imbalance_checks(unimodal: dict[str, list[RunRecord]], naive: list[RunRecord], rebalanced: list[RunRecord],
                     dominance_margin: float, undertrained_margin: float, gain: float,
                     protocol: str = "zero_feature") -> dict:
    if len(unimodal) < 2:
        raise ValueError("imbalance checks need unimodal runs of at least two modalities")
    uni = {m: _mean(r.test_acc for r in recs) for m, recs in unimodal.items()}
    dominant, weak = max(uni, key=uni.get), min(uni, key=uni.get)
    naive_acc = _mean(r.test_acc for r in naive)
    naive_weak = _mean(r.unimodal_acc(weak, protocol) for r in naive)
    rebalanced_acc = _mean(r.test_acc for r in rebalanced)
    return {
        "unimodal_acc": uni, "dominant": dominant, "weak": weak, "protocol": protocol,
        "dominant_modality": {"dominant_only": uni[dominant], "weak_only": uni[weak], "margin": dominance_margin,
                              "pass": uni[dominant] >= uni[weak] + dominance_margin},
        "weak_undertrained": {"naive_weak": naive_weak, "weak_only": uni[weak], "margin": undertrained_margin,
                              "pass": naive_weak <= uni[weak] - undertrained_margin},
        "complementary": {"naive": naive_acc, "best_unimodal": uni[dominant], "pass": naive_acc >= uni[dominant]},
        "rebalancing_helps": {"rebalanced": rebalanced_acc, "naive": naive_acc, "gain": gain,
                              "pass": rebalanced_acc >= naive_acc + gain},
    }
