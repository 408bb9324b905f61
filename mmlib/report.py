"""Tables, figures and metrics files for the notebooks: ours (mean ± std over seeds) beside the paper's.

Everything written here carries the data name and profile that produced it, and the machine (numbers move a
little between CPU models and thread counts; the claims, not the digits, are what reproduce). ``metrics.json``
has flat keys (``"<row> | <column>"``...), so ``dvc metrics show`` / ``dvc metrics diff`` read it as it is.
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
    """``<project>/<reports_dir>/<profile>/[<paper>/]<stage>``: one folder per profile, so profiles never
    overwrite each other; ``<paper>`` is the notebook's folder, the stage name's prefix (``dgl_08_cross_paper``
    lives in ``dgl/`` though its paper table is ``cross/methods``); a stage without a paper table (the quickstart)
    has none. DVC runs write to ``reports/``; interactive and nbval runs default to ``results/notebooks/`` so
    they never overwrite the pipeline's reports."""
    group = stage.split("_")[0] if (params.get(stage) or {}).get("paper") else ""
    path = Path(params["root"]) / reports_dir / params["profile"] / group / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summary_numbers(records: Mapping[str, list[RunRecord]],
                    columns: Mapping[str, Callable[[RunRecord], float | None]], scale: float = 100.0) -> pd.DataFrame:
    """One row per label: each column's mean over the label's runs and ``<column> std`` (in percent; NaN where
    a run has no such number)."""
    rows = {}
    for label, recs in records.items():
        row = {}
        for col, fn in columns.items():
            vals = [v * scale for v in (fn(r) for r in recs) if v is not None]
            row[col], row[f"{col} std"] = mean_std(vals) if vals else (np.nan, np.nan)
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def summary_table(records: Mapping[str, list[RunRecord]],
                  columns: Mapping[str, Callable[[RunRecord], float | None]], scale: float = 100.0) -> pd.DataFrame:
    """One row per label, one column per metric: ``mean ± std`` over the label's runs (in percent)."""
    numbers = summary_numbers(records, columns, scale)
    counts = {label: len(recs) for label, recs in records.items()}
    text = {col: [("–" if np.isnan(m) else f"{m:.1f} ± {s:.1f}" if counts[label] > 1 else f"{m:.1f}")
                  for label, m, s in zip(numbers.index, numbers[col], numbers[f"{col} std"])] for col in columns}
    return pd.DataFrame(text, index=numbers.index)


def modality_acc(modality: str, protocol: str = "zero_feature", split: str = "test"):
    """Column function: a modality's accuracy inside a multimodal run (under ``protocol``), or a unimodal
    run's own accuracy for its modality; None when the run has no such number."""
    def value(record: RunRecord) -> float | None:
        uni = record.final[split]["unimodal"]
        table = uni.get(protocol) or uni.get("model") or {}
        return table[modality]["acc"] if modality in table else None
    return value


def save_table(df: pd.DataFrame, out_dir: Path, caption: str, name: str = "table", csv: bool = True) -> None:
    """``<name>.md`` (caption line + markdown table) and, with ``csv``, ``<name>.csv``."""
    md = f"{caption}\n\n{df.to_markdown()}\n"
    atomic_write_bytes(out_dir / f"{name}.md", lambda tmp: tmp.write_text(md))
    if csv:
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


def flatten(nested: Mapping, prefix: str = "", sep: str = " | ") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a | b": 1}``; lists of scalars become one space-separated string."""
    out = {}
    for key, value in nested.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        elif isinstance(value, (list, tuple)):
            out[name] = " ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def provenance() -> dict:
    """``machine | ...`` and ``code`` entries: where and by which code a report was produced."""
    from .identity import code_version, machine

    return {"code": code_version(), **flatten({"machine": machine()})}


def write_json(out_dir: Path, name: str, content: dict) -> Path:
    path = out_dir / name
    blob = json.dumps(_clean(content), indent=1, sort_keys=True)
    atomic_write_bytes(path, lambda tmp: tmp.write_text(blob + "\n"))
    return path


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    """``metrics.json``: ``metrics`` flattened to ``"a | b"`` keys, with the machine and code version."""
    return write_json(out_dir, "metrics.json", {**flatten(metrics), **provenance()})


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


# axis label (with its unit) of each table metric
METRIC_LABELS = {"acc": "test accuracy (%)", "map": "test mAP (%)", "macf1": "test macro-F1 (%)",
                 "f1": "test macro-F1 (%)", "overhead_min": "training time (minutes)",
                 "epoch_s": "training time per epoch (s)", "mean_rho1": "mean update ratio ρ of modality 1",
                 "mean_rho2": "mean update ratio ρ of modality 2", "mean_rho3": "mean update ratio ρ of modality 3",
                 "d_util": "d_util = u(m1|m0) − u(m0|m1)", "abs_d_util": "|d_util|",
                 "d_speed": "d_speed = s(m1|m0) − s(m0|m1)", "abs_d_speed": "|d_speed|",
                 "sparsity": "R(f): fraction of parameters < 1e-7", "miou": "test mIoU (%)"}


def metric_label(metric: str) -> str:
    """The axis label (with its unit) of a table metric."""
    if metric.startswith("inside:"):
        return f"test accuracy of {metric.split(':', 1)[1]} inside the model (%)"
    return METRIC_LABELS.get(metric, metric)


def wrapped_title(fig, text: str, width: int = 150, fontsize: int = 8) -> None:
    """A figure title wrapped to ``width`` characters, laid out above the panels (constrained layout)."""
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=fontsize)


# metrics shown relative to the table's first row (ours on a CPU, the paper's on its GPUs: only ratios compare)
RELATIVE_METRICS = ("overhead_min", "epoch_s")


def comparison_figure(results: dict, title: str, columns: list[str] | None = None, per_row: int = 4):
    """One panel per column of ours (``tables.ours_columns``): our mean ± std over seeds per row (bars) and the
    paper's value (black diamonds; the scales differ: other data, other models), the axis in the metric's unit.
    A panel lists the rows that have a cell in its column (a pending one is marked); training times are drawn
    relative to the first row's (ours: CPU minutes, the paper's: GPU minutes)."""
    import matplotlib.pyplot as plt

    from .tables import ours_columns

    columns = columns or ours_columns(results)
    panel_rows = {col: [r for r in results if col in results[r]] for col in columns}
    shared = all(rows == panel_rows[columns[0]] for rows in panel_rows.values())
    longest = max(len(rows) for rows in panel_rows.values())
    ncols = min(per_row, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols, 0.24 * longest * nrows + 1.4 * nrows + 0.8),
                             squeeze=False, sharey=shared, layout="constrained")
    for k, (ax, col) in enumerate(zip(axes.flat, columns)):
        rows = panel_rows[col]
        y = np.arange(len(rows))
        cells = [results[r][col] for r in rows]
        ours = np.array([np.nan if c.get("mean") is None else c["mean"] for c in cells], dtype=float)
        err = np.array([c.get("std") or 0.0 for c in cells], dtype=float)
        theirs = np.array([np.nan if c.get("paper") is None else c["paper"] for c in cells], dtype=float)
        seeds = max((c.get("seeds") or 0 for c in cells), default=0)
        metric = next((c["metric"] for c in cells if c.get("metric")), "acc")
        xlabel = metric_label(metric)
        if metric in RELATIVE_METRICS:  # ratios to the first row, for ours and for the paper
            ours, err = ours / ours[0], err / ours[0]
            theirs = theirs / theirs[0]
            xlabel = f"{xlabel.split(' (')[0]} relative to {rows[0]}"
        ax.barh(y, ours, xerr=err, color="C0", alpha=0.75, label=f"ours (mean ± std, {seeds} seeds)")
        if np.isfinite(theirs).any():
            ax.plot(theirs, y, "kD", ms=4, label="paper (their data)")
        finite = np.concatenate([ours[np.isfinite(ours)] - err[np.isfinite(ours)], theirs[np.isfinite(theirs)],
                                 ours[np.isfinite(ours)] + err[np.isfinite(ours)]])
        if finite.size:
            lo, hi = finite.min(), finite.max()
            pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
            ax.set_xlim(0.0 if metric in RELATIVE_METRICS else (max(0.0, lo - pad) if lo >= 0 else lo - pad),
                        hi + pad)
        for i, c in enumerate(cells):
            if c.get("pending"):
                ax.annotate("pending", (0.02, i), xycoords=("axes fraction", "data"), va="center", fontsize=6,
                            color="grey")
        if not shared or k % ncols == 0:
            ax.set_yticks(y, rows)
        if not shared or k == 0:
            ax.invert_yaxis()
        ax.set_title(col, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(columns):]:
        ax.axis("off")
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=2, fontsize=7)
    wrapped_title(fig, title)
    return fig


def distribution_figure(results: dict, panels: Mapping[str, Mapping[str, tuple[str, str]]], title: str,
                        bins: int = 15, per_row: int = 3):
    """Histograms and Gaussian kernel density estimates of per-model values (the Greedy paper's Figs. 2, 5 and 7):
    ``panels = {panel title: {legend label: (row, column)}}``, each (row, column) a cell of ``results`` whose
    ``values`` are one per model. Zero, each distribution's mean (ours) and the paper's value, where it states one,
    are dashed / dotted lines; the legend gives each label's mean and model count."""
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    titles = list(panels)
    ncols = min(per_row, len(titles))
    nrows = -(-len(titles) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    for ax, panel in zip(axes.flat, titles):
        entries = {label: results[row][col] for label, (row, col) in panels[panel].items()}
        values = [np.asarray(e["values"], dtype=float) for e in entries.values()]
        everything = np.concatenate([v for v in values if v.size] or [np.zeros(1)])
        lo, hi = float(everything.min()), float(everything.max())
        pad = 0.1 * (hi - lo) if hi > lo else 0.1
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
        grid = np.linspace(lo - pad, hi + pad, 200)
        ax.axvline(0.0, color="grey", ls="--", lw=0.8)
        for i, ((label, entry), v) in enumerate(zip(entries.items(), values)):
            color = f"C{i}"
            ax.hist(v, bins=edges, density=True, alpha=0.35, color=color)
            if v.size > 2 and np.ptp(v) > 0:
                ax.plot(grid, gaussian_kde(v)(grid), color=color, lw=1.2)
            ax.axvline(float(v.mean()), color=color, ls="--", lw=1.2,
                       label=f"{label}: mean {v.mean():+.2f} ({v.size} models)")
            if entry.get("paper") is not None:
                ax.axvline(entry["paper"], color=color, ls=":", lw=1.5, label=f"{label}: paper ≈ {entry['paper']:+g}")
        metric = next(iter(entries.values()))["metric"]
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(metric_label(metric), fontsize=8)
        ax.set_ylabel("density (models)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(titles):]:
        ax.axis("off")
    wrapped_title(fig, title)
    return fig


def trend_figure(results: dict, series: Mapping[str, tuple[Mapping[str, float], bool]], columns: list[str],
                 title: str):
    """Ours (mean ± std over the models of each row) against a number each row stands for, one panel per
    (series, column): ``series = {x label: ({row: x}, log x axis)}``, e.g. lambda, Q, alpha (the hyper-parameter
    studies of Greedy Figs. 3, 4, 8, 9)."""
    import matplotlib.pyplot as plt

    panels = [(label, xs, logx, col) for label, (xs, logx) in series.items() for col in columns]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    for ax, (label, xs, logx, col) in zip(axes.flat, panels):
        rows = sorted(xs, key=xs.get)
        entries = [results[r][col] for r in rows]
        x = np.array([xs[r] for r in rows], dtype=float)
        mean = np.array([e["mean"] for e in entries], dtype=float)
        std = np.array([e["std"] or 0.0 for e in entries], dtype=float)
        models = max(e["seeds"] for e in entries)
        ax.errorbar(x, mean, yerr=std, marker="o", ms=4, capsize=3, label=f"ours (mean ± std, {models} models)")
        if logx:
            ax.set_xscale("log")
        ax.set_title(f"{col} vs {label}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(metric_label(entries[0]["metric"]), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    wrapped_title(fig, title)
    return fig


def examples_figure(examples: Mapping[str, Mapping[str, np.ndarray]], title: str):
    """Example inputs: ``{dataset label: {modality: (n, H, W) or (n, H, W, 3) images in [0, 1]}}``, one row per
    dataset and modality, one column per example (Greedy Fig. 6)."""
    import matplotlib.pyplot as plt

    rows = [(d, m, images) for d, mods in examples.items() for m, images in mods.items()]
    n = max(len(images) for _, _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n + 1.2, 1.45 * len(rows) + 0.8), squeeze=False,
                             layout="constrained")
    for i, (dataset, modality, images) in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(images[j], cmap="gray" if images[j].ndim == 2 else None, vmin=0.0, vmax=1.0)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(f"{dataset}\n{modality}", fontsize=7)
    wrapped_title(fig, title)
    return fig


def save_figure(fig, out_dir: Path, name: str = "figure") -> Path:
    path = out_dir / f"{name}.png"
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    return path


def epoch_curve(record: RunRecord, key: str, transform: Callable = np.sqrt) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, per-epoch mean of ``transform(step value)``) of a per-step log in ``record.steps`` (e.g.
    ``grad_sq/audio``, an encoder's squared gradient norm: its norm by default)."""
    if key not in record.steps:
        raise KeyError(f"run {record.hash} logged no {key!r} per step (train.gradient_norms: on logs grad_sq/<m>)")
    values, epochs = np.asarray(record.steps[key], dtype=float), len(record.history)
    per_epoch = len(values) // epochs
    return np.arange(1, epochs + 1), transform(values[:per_epoch * epochs]).reshape(epochs, per_epoch).mean(1)


def step_panel(ax, records: Mapping[str, list[RunRecord]], key: str, ylabel: str,
               transform: Callable = np.sqrt) -> dict[str, list[float]]:
    """Mean ± std over seeds of ``epoch_curve`` per label on ``ax``; returns each label's mean curve."""
    out = {}
    for i, (label, recs) in enumerate(records.items()):
        curves = [epoch_curve(r, key, transform) for r in recs]
        n = min(len(x) for x, _ in curves)
        ys = np.array([y[:n] for _, y in curves])
        ax.plot(curves[0][0][:n], ys.mean(0), label=label, color=f"C{i}")
        ax.fill_between(curves[0][0][:n], ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), alpha=0.2, color=f"C{i}")
        out[label] = [float(v) for v in ys.mean(0)]
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    return out


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
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    return means
