"""Per-epoch probes of a model on a split, logged in a run's history (``train.probes``).

- ``suppression`` (DGL Fig. 3(a), Eq. 3-6): for each modality m, s^m = exp((W_k^m - W_{y_i}^m) z_i^m), averaged
  over the samples i and the classes k != y_i, where the fused logits are sum_m W^m z^m + b: W^m is the modality's
  block of a concat head (``concat``, the head of ``channel``), its head under prediction summation (``sum``), its
  head / K when the branch logits are averaged (``mmtm``, ``mbt``); z_i^m its features. In Eq. 3 the other
  modalities' s multiplies the softmax denominator of modality m's gradient: s < 1 shrinks it, the more so as
  s -> 0 (the gradient suppression that DGL removes).
"""
from __future__ import annotations

import contextlib

import torch

from .models.fusion import AveragedHeadsFusion, ConcatFusion, SumFusion

PROBES = ("suppression",)


def modality_head_weights(fusion) -> dict[str, torch.Tensor]:
    """{modality: W^m (classes, D_m)} with fused logits sum_m W^m z^m + b; a clear error for other fusions."""
    if isinstance(getattr(fusion, "head", None), ConcatFusion):  # a concat head after a hybrid fusion (channel)
        fusion = fusion.head
    if isinstance(fusion, ConcatFusion):
        return {m: fusion.blocks[m].weight for m in fusion.modalities}
    if isinstance(fusion, SumFusion):
        return {m: fusion.heads[m].weight for m in fusion.modalities}
    if isinstance(fusion, AveragedHeadsFusion):
        return {m: fusion.heads[m].weight / len(fusion.modalities) for m in fusion.modalities}
    raise ValueError(f"the suppression probe needs fused logits that are a sum of linear terms, one per modality "
                     f"(concat, sum, channel, mmtm, mbt); fusion {type(fusion).__name__} has none")


def suppression_sums(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum over samples i and classes k != y_i of exp((W_k - W_{y_i}) z_i), in float64 (a 0-d tensor)."""
    logits = features.double() @ weight.double().T  # (B, C)
    margins = logits - logits.gather(1, labels[:, None])
    return margins.exp().sum() - len(labels)  # the k = y_i terms are exp(0) = 1


def check_probes(names: list, fusion) -> None:
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"train.probes: unknown probes {unknown}; known: {', '.join(PROBES)}")
    if "suppression" in names:
        modality_head_weights(fusion)


@torch.no_grad()
def evaluate_probes(model, loader, names: list, autocast=contextlib.nullcontext) -> dict[str, dict[str, float]]:
    """{probe: {modality: value}} over ``loader`` in eval mode (the model's mode is restored); one host transfer."""
    check_probes(names, model.fusion)
    if not names:
        return {}
    weights = modality_head_weights(model.fusion)
    was_training = model.training
    model.eval()
    sums, count = {}, 0
    try:
        for batch in loader:
            with autocast():
                out = model(batch.inputs)
            for m, w in weights.items():
                s = suppression_sums(out.features[m].flatten(1), batch.label, w)
                sums[m] = sums.get(m, 0) + s
            count += len(batch.label)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_probes: the loader gave no batches")
    pairs = count * (model.fusion.num_classes - 1)
    values = torch.stack([sums[m] for m in weights]).cpu()
    return {"suppression": {m: float(v) / pairs for m, v in zip(weights, values)}}
