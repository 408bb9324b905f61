"""Calibration of an embedded stand-in against the papers' baseline rows (never a method's row).

A stand-in's ``calibration`` block (params.yaml, per setup and in the quickstart's section) names the paper cells
its baseline rows are calibrated on, each as ``"<paper>/<artifact> | <row> | <column>"`` (data/paper/):

- ``only``: each modality's unimodal model (``uncalibrated``: modality -> why no usable paper number exists);
- ``tolerance``: this stand-in's own tolerance where the measured trade-off between its rows is wider than the
  default (the reason in params.yaml and LOG.md);
- ``naive``: naive joint training (Concat; ``naive_balancer`` names the paper's own joint baseline where it is
  another balancer, e.g. ``vanilla`` for the Greedy paper's sum of branch losses);
- ``inside`` (where a paper reports it): each modality's accuracy inside the naive model and the unimodal accuracy
  it is compared with, ``[inside, only]``, plus ``paper_classes``, the paper's class count.

The checks, on our test accuracy (%, mean over seeds): every ``only`` and ``naive`` value within ``points`` of the
paper's; and for ``inside``, the *retention* r = (inside - chance) / (only - chance), the share of its own
above-chance accuracy a modality keeps inside the joint model: where the paper's modality is under-trained
(r < 1) ours is too, and ours is within ``retention`` of the paper's (roughly the size).
"""
from __future__ import annotations

import pandas as pd

from .paper import load_paper_table

DEFAULT_TOLERANCE = {"points": 5.0, "retention": 0.45}


def paper_value(ref: str, root) -> float:
    """The number a ``"<paper>/<artifact> | <row> | <column>"`` reference names."""
    parts = [p.strip() for p in ref.split("|")]
    if len(parts) != 3 or "/" not in parts[0]:
        raise ValueError(f"calibration reference {ref!r} must read '<paper>/<artifact> | <row> | <column>'")
    table = load_paper_table(*parts[0].split("/", 1), root=root)
    value = table.value(parts[1], parts[2])
    if value is None:
        raise ValueError(f"calibration reference {ref!r}: the paper prints no number there")
    return float(value)


def retention(inside: float, only: float, classes: int) -> float:
    """(inside - chance) / (only - chance), chance = 100 / classes (accuracies in %); NaN for a modality that
    learned nothing alone (within a point of chance)."""
    chance = 100.0 / classes
    return (inside - chance) / (only - chance) if only - chance >= 1.0 else float("nan")


def calibration_checks(ours: dict, spec: dict, classes: int, root, tolerance: dict | None = None) -> pd.DataFrame:
    """One row per calibrated quantity: ours, the paper's, the difference and whether it holds.

    ``ours``: ``{"only": {modality: acc}, "naive": acc, "inside": {modality: acc}}`` (test %, mean over seeds).
    """
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    unit = f"{spec.get('metric', 'acc')} %"
    rows = []
    for m, ref in spec.get("only", {}).items():
        paper = paper_value(ref, root)
        rows.append({"quantity": f"{m} only ({unit})", "ours": ours["only"][m], "paper": paper,
                     "difference": ours["only"][m] - paper, "holds": abs(ours["only"][m] - paper) <= tol["points"],
                     "source": ref})
    if "naive" in spec:
        paper = paper_value(spec["naive"], root)
        rows.append({"quantity": f"naive ({unit})", "ours": ours["naive"], "paper": paper,
                     "difference": ours["naive"] - paper, "holds": abs(ours["naive"] - paper) <= tol["points"],
                     "source": spec["naive"]})
    inside = dict(spec.get("inside") or {})
    paper_classes = inside.pop("paper_classes", classes)
    for m, (inside_ref, only_ref) in inside.items():
        theirs = retention(paper_value(inside_ref, root), paper_value(only_ref, root), paper_classes)
        mine = retention(ours["inside"][m], ours["only"][m], classes)
        direction = mine < 1 if theirs < 1 else True  # False for NaN: nothing learned, nothing retained
        rows.append({"quantity": f"{m} retention inside naive", "ours": mine, "paper": theirs,
                     "difference": mine - theirs, "holds": bool(direction and abs(mine - theirs) <= tol["retention"]),
                     "source": f"{inside_ref} / {only_ref}"})
    return pd.DataFrame(rows).set_index("quantity") if rows else pd.DataFrame()


def failed(checks: pd.DataFrame) -> list[str]:
    """The quantities whose calibration does not hold."""
    return [] if checks.empty else [q for q, holds in checks["holds"].items() if not holds]
