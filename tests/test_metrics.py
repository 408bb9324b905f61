"""mAP and macro-F1 equal scikit-learn's on random and on tied scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from mmlib.metrics import accuracy, macro_f1, mean_average_precision


def _sklearn_map(logits: torch.Tensor, labels: torch.Tensor) -> float:
    probs = torch.softmax(logits.float(), 1).numpy()
    y = labels.numpy()
    present = np.unique(y)
    return float(np.mean([average_precision_score(y == c, probs[:, c]) for c in present]))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tied", [False, True])
def test_map_and_macro_f1_equal_sklearn(seed, tied):
    gen = torch.Generator().manual_seed(seed)
    n, classes = 97, 6
    logits = torch.randn(n, classes, generator=gen)
    if tied:  # few distinct scores: many ties within each class column
        logits = torch.randint(0, 3, (n, classes), generator=gen).float()
    labels = torch.randint(0, classes - 1, (n,), generator=gen)  # the last class never occurs
    assert mean_average_precision(logits, labels) == pytest.approx(_sklearn_map(logits, labels), abs=1e-6)
    expected_f1 = f1_score(labels.numpy(), logits.argmax(1).numpy(), average="macro", zero_division=0)
    assert macro_f1(logits, labels) == pytest.approx(expected_f1, abs=1e-9)
    assert accuracy(logits, labels) == pytest.approx(float((logits.argmax(1) == labels).float().mean()))


def test_all_tied_scores_give_the_positive_rate():
    labels = torch.tensor([0, 1, 1, 0, 1])
    logits = torch.zeros(5, 2)
    assert mean_average_precision(logits, labels) == pytest.approx(0.5 * (2 / 5 + 3 / 5))
