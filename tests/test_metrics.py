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


def test_miou_against_a_hand_computed_confusion_matrix():
    """4 classes; class 3 never occurs nor is predicted (no IoU); class 2 is predicted but never true (IoU 0);
    void pixels (-100) count nowhere, whatever is predicted there."""
    from mmlib.metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics

    truth = torch.tensor([[[0, 0, 0, 1], [1, 1, IGNORE_INDEX, IGNORE_INDEX]]])  # (1, 2, 4)
    pred = torch.tensor([[[0, 0, 1, 1], [1, 2, 0, 3]]])
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()  # (1, 4, 2, 4)
    cm = confusion_matrix(logits, truth, 4)
    # rows = true, columns = predicted: class 0: 2 right, 1 as class 1; class 1: 2 right, 1 as class 2
    expected = torch.tensor([[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    m = segmentation_metrics(cm + cm)  # accumulating batches: the same ratios
    # IoU_0 = 2 / (3 + 2 - 2) = 2/3; IoU_1 = 2 / (3 + 3 - 2) = 1/2; IoU_2 = 0 / (0 + 1 - 0) = 0; class 3: none
    assert m["iou"][:3] == pytest.approx([2 / 3, 1 / 2, 0.0]) and m["iou"][3] is None
    assert m["miou"] == pytest.approx((2 / 3 + 1 / 2 + 0.0) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 6)
    assert m["mean_class_acc"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    ignored_elsewhere = confusion_matrix(logits, truth.masked_fill(truth == 1, IGNORE_INDEX), 4)
    assert int(ignored_elsewhere.sum()) == 3  # only class 0's pixels remain


def test_per_pixel_cross_entropy_skips_void_pixels():
    """Balancers call F.cross_entropy(logits, label) as for classification: with (B, C, H, W) logits and
    (B, H, W) labels, void pixels (IGNORE_INDEX, its default ignore_index) add nothing."""
    from mmlib.metrics import IGNORE_INDEX

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=gen)
    labels = torch.randint(0, 5, (2, 3, 4), generator=gen)
    labels[0, 0] = IGNORE_INDEX
    keep = labels != IGNORE_INDEX
    per_pixel = -torch.log_softmax(logits, 1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
    loss = torch.nn.functional.cross_entropy(logits, labels)
    assert float(loss) == pytest.approx(float(per_pixel[keep].mean()), rel=1e-6)
