"""Tables, figures and metrics files for the notebooks: ours (mean ± std over seeds) beside the paper's.

Everything written here carries the data name and profile that produced it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .data.cache import atomic_write_bytes
from .experiments import RunRecord


def data_label(params: dict) -> str:
    """e.g. ``synth_av (embedded, CREMA-D layout)`` or ``crema_d (real)``."""
    from .registry import get

    name = params["base"]["data"]["dataset"]
    embedded = getattr(get("datasets", name), "embedded", False)
    return f"{name} (embedded data)" if embedded else f"{name} (real data)"


def banner(params: dict, seeds: list[int] | None = None) -> str:
    seeds_txt = f" · seeds {', '.join(map(str, seeds))}" if seeds else ""
    return f"Ours: {data_label(params)} · profile {params['profile']}{seeds_txt}"


def stage_dir(params: dict, stage: str, reports_dir: str = "reports") -> Path:
    """``<project>/<reports_dir>/<stage>``. DVC runs write to ``reports/``; interactive and nbval runs of a
    notebook default to ``results/notebooks/`` so they never overwrite the pipeline's reports."""
    path = Path(params["root"]) / reports_dir / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summary_table(records: Mapping[str, list[RunRecord]],
                  columns: Mapping[str, Callable[[RunRecord], float | None]], scale: float = 100.0) -> pd.DataFrame:
    """One row per label, one column per metric: ``mean ± std`` over the label's runs (in percent)."""
    rows = {}
    for label, recs in records.items():
        row = {}
        for col, fn in columns.items():
            vals = [fn(r) for r in recs]
            vals = [v for v in vals if v is not None]
            if not vals:
                row[col] = "–"
                continue
            m, s = mean_std([v * scale for v in vals])
            row[col] = f"{m:.1f} ± {s:.1f}" if len(vals) > 1 else f"{m:.1f}"
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def modality_acc(modality: str, protocol: str = "zero_feature", split: str = "test"):
    """Column function: a modality's accuracy inside a multimodal run (under ``protocol``), or a unimodal
    run's own accuracy for its modality; None when the run has no such number."""
    def value(record: RunRecord) -> float | None:
        uni = record.final[split]["unimodal"]
        table = uni.get(protocol) or uni.get("model") or {}
        return table[modality]["acc"] if modality in table else None
    return value


def save_table(df: pd.DataFrame, out_dir: Path, caption: str, name: str = "table") -> None:
    """``<name>.md`` (caption line + markdown table) and ``<name>.csv``."""
    md = f"{caption}\n\n{df.to_markdown()}\n"
    atomic_write_bytes(out_dir / f"{name}.md", lambda tmp: tmp.write_text(md))
    atomic_write_bytes(out_dir / f"{name}.csv", lambda tmp: df.to_csv(tmp))


def _clean(obj):
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    path = out_dir / "metrics.json"
    blob = json.dumps(_clean(metrics), indent=1, sort_keys=True)
    atomic_write_bytes(path, lambda tmp: tmp.write_text(blob + "\n"))
    return path


def curve(record: RunRecord, split: str, key: Callable[[dict], float]) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key(history_entry[split])`` over training."""
    xs, ys = [], []
    for entry in record.history:
        if split in entry:
            xs.append(entry["epoch"] + 1)
            ys.append(key(entry[split]))
    return xs, ys


def mean_curve(records: list[RunRecord], split: str, key: Callable[[dict], float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    curves = [curve(r, split, key) for r in records]
    n = min(len(c[0]) for c in curves)
    ys = np.array([c[1][:n] for c in curves])
    return np.asarray(curves[0][0][:n]), ys.mean(0), ys.std(0)


def save_figure(fig, out_dir: Path, name: str = "figure") -> Path:
    path = out_dir / f"{name}.png"
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    return path


def curve_panel(ax, records: Mapping[str, list[RunRecord]], split: str, key: Callable[[dict], float],
                ylabel: str, scale: float = 1.0) -> dict[str, float]:
    """Mean ± std over seeds of ``key(history[split])`` per label on ``ax``; returns each label's mean over
    epochs (of the mean curve)."""
    means = {}
    for i, (label, recs) in enumerate(records.items()):
        x, mean, std = mean_curve(recs, split, key)
        ax.plot(x, scale * mean, label=label, color=f"C{i}")
        ax.fill_between(x, scale * (mean - std), scale * (mean + std), alpha=0.2, color=f"C{i}")
        means[label] = float(scale * mean.mean())
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.legend(fontsize=7)
    return means
