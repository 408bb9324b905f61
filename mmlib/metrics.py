"""Classification metrics on logits: accuracy, mAP (mean per-class AP on softmax scores), macro-F1; segmentation
metrics (mIoU, pixel accuracy) from an accumulated confusion matrix."""
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


# ----------------------------------------------------------------------------------------------- segmentation
IGNORE_INDEX = -100  # label of void pixels: F.cross_entropy's default ignore_index, so every loss skips them


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(C, C) int64 counts, rows = true class, columns = predicted class, of per-pixel predictions
    ``logits.argmax(1)`` (B, C, H, W) against ``labels`` (B, H, W); pixels labelled ``ignore_index`` are left
    out. Stays on the logits' device, so batches accumulate without a host transfer."""
    pred = logits.argmax(1).flatten()
    true = labels.flatten().to(pred.device)
    keep = true != ignore_index
    index = true[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor) -> dict:
    """From a confusion matrix (rows true, columns predicted): ``miou`` the mean over classes of
    IoU_c = TP_c / (TP_c + FP_c + FN_c), over the classes that occur in the labels or the predictions (a class
    absent from both has no IoU and is left out; one predicted but never true has IoU 0); ``pixel_acc`` the
    fraction of labelled pixels predicted right; ``mean_class_acc`` the mean recall over the classes present in
    the labels; ``iou`` per class (None where undefined)."""
    cm = confusion.double().cpu()
    tp = cm.diag()
    true, pred = cm.sum(1), cm.sum(0)
    union = true + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = true > 0
    total = float(cm.sum())
    return {"miou": float(iou[union > 0].mean()) if bool((union > 0).any()) else float("nan"),
            "pixel_acc": float(tp.sum()) / total if total else float("nan"),
            "mean_class_acc": float((tp[present] / true[present]).mean()) if bool(present.any()) else float("nan"),
            "iou": [None if v != v else round(float(v), 6) for v in iou.tolist()]}
