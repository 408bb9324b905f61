"""Classification metrics on logits: accuracy, mAP (mean per-class AP on softmax scores), macro-F1."""
from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """AP of one class: sum over distinct score thresholds (descending) of precision x recall increment, so tied
    scores form one threshold (scikit-learn's ``average_precision_score``)."""
    positives = positives.bool()
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, hits = scores[order], positives[order].double()
    last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_tie[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tp = hits.cumsum(0)[last_of_tie]
    ranked = torch.nonzero(last_of_tie).flatten().double() + 1
    recall_gain = torch.diff(tp, prepend=tp.new_zeros(1)) / n_pos
    return float((recall_gain * tp / ranked).sum())


def mean_average_precision(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """mAP over the classes present in ``labels``."""
    probs = torch.softmax(logits.float(), dim=1)
    aps = [average_precision(probs[:, c], labels == c) for c in range(logits.shape[1]) if (labels == c).any()]
    return float(sum(aps) / len(aps))


def macro_f1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean F1 over the classes present in the labels or the predictions."""
    pred = logits.argmax(1)
    f1s = []
    for c in torch.unique(torch.cat([labels, pred])).tolist():
        tp = float(((pred == c) & (labels == c)).sum())
        fp = float(((pred == c) & (labels != c)).sum())
        fn = float(((pred != c) & (labels == c)).sum())
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(sum(f1s) / len(f1s))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    logits, labels = logits.float().cpu(), labels.cpu()
    return {"acc": accuracy(logits, labels), "map": mean_average_precision(logits, labels),
            "f1": macro_f1(logits, labels)}
