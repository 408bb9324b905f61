"""Paper tables as grids of runs, ours beside the paper's.

A table section of params.yaml names the paper file (``paper``), its seeds, and how each paper row and column
becomes a run:

- ``columns``: paper column (or the part before its last ``/``, e.g. ``KS`` in ``KS/acc``) -> a column spec
  ``{setup, set, params}``, or just a setup name. ``setups`` (params.yaml) are the embedded stand-ins of the
  paper's datasets, each an overlay on ``base`` plus per-dataset balancer defaults.
- ``rows``: paper row -> a row spec ``{balancer, params, set}`` (an integer ``params.modality`` of the unimodal
  balancer means the setup's i-th modality), or ``{pending: reason}`` for a row not run yet.
- the metric of a cell is the last part of its column name (``acc``, ``map``, ``macf1``, ``overhead_min``,
  ``mean_rho1``...; see ``METRICS``) or ``metric`` in the column spec; default ``acc``.

A cell is ``row spec + column spec`` (their ``params`` and ``set`` merged); cells are made for every
(row, column) where the paper prints a number (every row x column with ``grid: true``, for figures that print
none), plus ``extra_cells``. Cells that resolve to one configuration
share its runs, and the run store caches by hash, so a baseline trained for one table is reused by the next.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from .config import ExperimentConfig, deep_merge, experiment_config
from .experiments import RunRecord, sweep
from .paper import PaperTable, load_paper_table


@dataclass
class Cell:
    setup: str
    balancer: str = "naive"
    params: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)  # dotted key -> value
    metric: str = "acc"
    pending: str = ""  # why this cell is not run (e.g. its method lands with a later paper)


def _mean_rho(index: int) -> Callable[[RunRecord], float]:
    def value(record: RunRecord) -> float:
        modality = record.config["data"]["modalities"][index]
        key = f"rho_{modality}"
        if key not in record.steps:
            raise KeyError(f"run {record.hash} logged no {key} (balancer {record.config['balancer']['name']})")
        return float(np.mean(record.steps[key]))
    return value


# metric name -> value of one run; percentages for classification metrics
METRICS: dict[str, Callable[[RunRecord], float]] = {
    "acc": lambda r: 100 * r.final["test"]["acc"],
    "map": lambda r: 100 * r.final["test"]["map"],
    "macf1": lambda r: 100 * r.final["test"]["f1"],
    "f1": lambda r: 100 * r.final["test"]["f1"],
    "overhead_min": lambda r: r.train_seconds / 60,  # total training time, minutes
    "epoch_s": lambda r: r.train_seconds / max(1, r.config["train"]["epochs"]),
    "mean_rho1": _mean_rho(0),
    "mean_rho2": _mean_rho(1),
    "mean_rho3": _mean_rho(2),
}


def _column_spec(section: dict, column: str) -> tuple[dict, str]:
    """(column spec, metric) of a paper column."""
    columns = section.get("columns", {})
    if column in columns:
        spec, metric = columns[column], None
    else:
        prefix, _, metric = column.rpartition("/")
        if prefix not in columns:
            raise KeyError(f"column {column!r}: neither it nor {prefix!r} is in the section's columns "
                           f"({list(columns)})")
        spec = columns[prefix]
    spec = {"setup": spec} if isinstance(spec, str) else dict(spec)
    metric = spec.pop("metric", None) or metric or "acc"
    if metric not in METRICS:
        raise KeyError(f"column {column!r}: unknown metric {metric!r}; metrics are {sorted(METRICS)}")
    return spec, metric


def make_cell(section: dict, row: str, column: str) -> Cell:
    rows = section.get("rows", {})
    if row not in rows:
        raise KeyError(f"row {row!r} is not in the section's rows ({list(rows)})")
    rspec = dict(rows[row] or {})
    cspec, metric = _column_spec(section, column)
    setup = cspec.pop("setup", None) or section.get("setup")
    if setup is None:
        raise KeyError(f"cell ({row!r}, {column!r}) has no setup: give the column one or the section a `setup`")
    unknown = (set(rspec) - {"balancer", "params", "set", "pending"}) | \
              (set(cspec) - {"params", "set", "balancer"})
    if unknown:
        raise KeyError(f"cell ({row!r}, {column!r}): unknown key(s) {sorted(unknown)}")
    return Cell(setup=setup, balancer=rspec.get("balancer") or cspec.get("balancer") or "naive",
                params=deep_merge(rspec.get("params") or {}, cspec.get("params") or {}),
                overrides={**(cspec.get("set") or {}), **(rspec.get("set") or {})},
                metric=metric, pending=rspec.get("pending", ""))


def paper_table(params: dict, section_name: str) -> PaperTable:
    """The paper's numbers named by the section's ``paper: <paper>/<artifact>`` (data/paper/...)."""
    return load_paper_table(*params[section_name]["paper"].split("/"), root=params["root"])


def table_cells(params: dict, section_name: str, paper: PaperTable | None = None) -> dict[tuple[str, str], Cell]:
    """Every (row, column) of the paper's table that holds a number, plus the section's ``extra_cells``."""
    section = params[section_name]
    paper = paper or paper_table(params, section_name)
    cells = {}
    if section.get("grid"):  # a figure without printed numbers: every row x column is a cell
        for row in section["rows"]:
            for column in section["columns"]:
                cells[(row, column)] = make_cell(section, row, column)
    for r in paper.rows:
        for column in paper.columns:
            if r["values"].get(column) is not None:
                cells[(r["method"], column)] = make_cell(section, r["method"], column)
    for row, column in section.get("extra_cells", []):
        cells[(row, column)] = make_cell(section, row, column)
    return cells


def setup_label(params: dict, setup: str) -> str:
    """e.g. ``synth_ks (embedded data)`` for the setup's dataset."""
    from .registry import get

    cfg = cell_config(params, Cell(setup=setup), seed=0)
    embedded = getattr(get("datasets", cfg.data.dataset), "embedded", False)
    return f"{cfg.data.dataset} ({'embedded' if embedded else 'real'} data)"


def cell_config(params: dict, cell: Cell, seed: int, section: str | None = None) -> ExperimentConfig:
    """base <- setups[cell.setup].experiment <- section.experiment <- the cell's balancer and overrides."""
    setups = params.get("setups", {})
    if cell.setup not in setups:
        raise KeyError(f"unknown setup {cell.setup!r}; params.yaml setups: {sorted(setups)}")
    setup = setups[cell.setup]
    merged = copy.deepcopy(params)
    base = copy.deepcopy(params["base"])
    if "generator" in setup.get("experiment", {}).get("data", {}):  # another dataset's generator: replace it
        base["data"]["generator"] = {}
    merged["base"] = deep_merge(base, setup.get("experiment", {}))
    probe = experiment_config(merged, section)
    bparams = deep_merge((setup.get("balancers") or {}).get(cell.balancer, {}), cell.params)
    if cell.balancer == "unimodal" and isinstance(bparams.get("modality"), int):
        bparams["modality"] = probe.data.modalities[bparams["modality"]]
    return experiment_config(merged, section, **{"balancer.name": cell.balancer, "balancer.params": bparams,
                                                 "train.seed": seed, **cell.overrides})


def section_seeds(params: dict, section_name: str) -> list[int]:
    return list(params[section_name].get("seeds") or params.get("replication", {}).get("seeds") or [0])


def run_cells(params: dict, section_name: str, cells: dict, seeds: list[int] | None = None,
              workers: int | None = None) -> dict[tuple[str, str], list[RunRecord]]:
    """Run every cell (not pending) for every seed; identical configurations run once."""
    seeds = seeds if seeds is not None else section_seeds(params, section_name)
    workers = workers or params.get("replication", {}).get("workers", 1)
    configs = {key: [cell_config(params, cell, s, section_name) for s in seeds]
               for key, cell in cells.items() if not cell.pending}
    records = iter(sweep([c for cs in configs.values() for c in cs], workers=workers))
    return {key: [next(records) for _ in cs] for key, cs in configs.items()}


def cell_values(cells: dict, runs: dict) -> dict[tuple[str, str], list[float]]:
    return {key: [METRICS[cells[key].metric](r) for r in recs] for key, recs in runs.items()}


def _fmt(mean: float, std: float | None, n: int, metric: str) -> str:
    digits = 3 if metric.startswith("mean_rho") else (2 if metric in ("overhead_min", "epoch_s") else 1)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def compare(cells: dict, runs: dict, paper: PaperTable) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(wide table 'ours (paper)', long table, metrics) for the cells of one paper table.

    metrics: ``{row: {column: our mean, column + "_std": std over seeds, column + "_seeds": their number,
    "paper_" + column: the paper's value}}``; a pending cell holds None and ``"pending_" + column`` with the reason.
    """
    values = cell_values(cells, runs)
    rows_order = [r for r in paper.methods if any(k[0] == r for k in cells)]
    rows_order += [k[0] for k in cells if k[0] not in rows_order]
    cols_order = [c for c in paper.columns if any(k[1] == c for k in cells)]
    cols_order += [k[1] for k in cells if k[1] not in cols_order]
    wide = pd.DataFrame("", index=pd.Index(rows_order, name="method"), columns=cols_order)
    long_rows, metrics = [], {}
    for (row, col), cell in cells.items():
        paper_value = paper.value(row, col) if row in paper.methods and col in paper.columns else None
        entry = metrics.setdefault(row, {})
        entry[f"paper_{col}"] = paper_value
        paper_txt = "–" if paper_value is None else f"{paper_value:g}"
        if cell.pending:
            entry[col], entry[f"pending_{col}"] = None, cell.pending
            wide.loc[row, col] = f"pending ({paper_txt})"
            long_rows.append({"method": row, "column": col, "ours_mean": None, "ours_std": None, "seeds": 0,
                              "paper": paper_value, "note": f"pending: {cell.pending}"})
            continue
        vals = values[(row, col)]
        mean = float(np.mean(vals))
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        entry[col], entry[f"{col}_std"], entry[f"{col}_seeds"] = mean, std, len(vals)
        wide.loc[row, col] = f"{_fmt(mean, std, len(vals), cell.metric)} ({paper_txt})"
        long_rows.append({"method": row, "column": col, "ours_mean": mean, "ours_std": std, "seeds": len(vals),
                          "paper": paper_value, "note": ""})
    return wide, pd.DataFrame(long_rows), metrics


def missing_entries(metrics: dict, paper: PaperTable) -> list[str]:
    """Cells of the paper's table without our value (or a pending reason) or without the paper's value."""
    gaps = []
    for r in paper.rows:
        for col in paper.columns:
            if r["values"].get(col) is None:
                continue
            entry = metrics.get(r["method"], {})
            if f"paper_{col}" not in entry:
                gaps.append(f"{r['method']} / {col}: no paper value")
            if entry.get(col) is None and not entry.get(f"pending_{col}"):
                gaps.append(f"{r['method']} / {col}: no value of ours")
    return gaps


def ordering(metrics: dict, paper: PaperTable, columns: list[str] | None = None,
             higher_is_better: bool = True) -> pd.DataFrame:
    """Per column: the paper's best row and ours, and the rank correlation (Spearman) of ours with the paper's
    over the rows both have."""
    out = {}
    for col in columns or paper.columns:
        pairs = [(row, e[col], e.get(f"paper_{col}")) for row, e in metrics.items()
                 if e.get(col) is not None and e.get(f"paper_{col}") is not None]
        if len(pairs) < 2:
            continue
        rows, ours, theirs = zip(*pairs)
        sign = 1 if higher_is_better else -1
        best_ours, best_paper = rows[int(np.argmax(sign * np.array(ours)))], rows[int(np.argmax(sign * np.array(theirs)))]
        rho = pd.Series(ours).rank().corr(pd.Series(theirs).rank())
        out[col] = {"paper best": best_paper, "ours best": best_ours, "same best": best_ours == best_paper,
                    "rank corr.": None if np.isnan(rho) else round(float(rho), 2), "rows": len(pairs)}
    return pd.DataFrame.from_dict(out, orient="index")


def claims(metrics: dict, comparisons: list[tuple[str, str, str]]) -> pd.DataFrame:
    """The paper's qualitative claims ``better > worse`` on ``column``, checked on our means over seeds (and on
    the paper's numbers where it prints them). ``gap / s.e.`` is the gap of the means over its standard error
    (Welch); a claim holds clearly when that exceeds 2, which needs several seeds."""
    out = []
    for better, worse, column in comparisons:
        a, b = metrics[better], metrics[worse]
        pa, pb = a.get(f"paper_{column}"), b.get(f"paper_{column}")
        measured = a.get(column) is not None and b.get(column) is not None
        ratio = None
        if measured and a.get(f"{column}_seeds", 1) > 1 and b.get(f"{column}_seeds", 1) > 1:
            se = np.sqrt(a[f"{column}_std"] ** 2 / a[f"{column}_seeds"] + b[f"{column}_std"] ** 2 / b[f"{column}_seeds"])
            gap = a[column] - b[column]
            ratio = float(np.sign(gap) * np.inf) if se == 0 and gap else (0.0 if se == 0 else float(gap / se))
        out.append({"claim": f"{better} > {worse} ({column})",
                    "ours": "–" if not measured else
                    f"{a[column]:.2f} ± {a.get(f'{column}_std', 0):.2f} vs {b[column]:.2f} ± {b.get(f'{column}_std', 0):.2f}",
                    "holds in ours": None if not measured else bool(a[column] > b[column]),
                    "gap / s.e.": None if ratio is None else round(ratio, 1),
                    "clearly (> 2 s.e.)": None if ratio is None else bool(ratio > 2),
                    "paper": "–" if pa is None or pb is None else f"{pa:g} vs {pb:g}"})
    return pd.DataFrame(out).set_index("claim")


def claims_summary(checked: pd.DataFrame) -> str:
    """One line on a ``claims`` table: how many of the paper's claims hold in ours, how many clearly, which not."""
    failed = [c for c, holds in checked["holds in ours"].items() if holds is not None and not holds]
    measured = int(checked["holds in ours"].notna().sum())
    clear = int((checked["clearly (> 2 s.e.)"] == True).sum())  # noqa: E712 (None = single seed)
    return (f"{measured - len(failed)}/{measured} of the paper's claims hold in ours ({clear} clearly, by more than "
            f"2 standard errors over seeds)" + (": not " + "; ".join(failed) if failed else "") + ".")


def calibration(params: dict, setups: list[str], seeds: list[int], workers: int | None = None) -> pd.DataFrame:
    """Per setup: each modality's unimodal accuracy, naive joint accuracy and each modality's accuracy inside
    the naive model (zero_feature), test %, mean over seeds: the imbalance each embedded stand-in carries."""
    rows = {}
    for setup in setups:
        modalities = cell_config(params, Cell(setup=setup), 0).data.modalities
        cells = {("naive", setup): Cell(setup=setup)}
        cells.update({(m, setup): Cell(setup=setup, balancer="unimodal", params={"modality": m})
                      for m in modalities})
        configs = {k: [cell_config(params, c, s) for s in seeds] for k, c in cells.items()}
        records = iter(sweep([c for cs in configs.values() for c in cs],
                             workers=workers or params.get("replication", {}).get("workers", 1)))
        runs = {k: [next(records) for _ in cs] for k, cs in configs.items()}
        row = {f"{m} only": np.mean([100 * r.test_acc for r in runs[(m, setup)]]) for m in modalities}
        row["naive"] = np.mean([100 * r.test_acc for r in runs[("naive", setup)]])
        for m in modalities:
            row[f"{m} in naive"] = np.mean([100 * r.unimodal_acc(m) for r in runs[("naive", setup)]])
        rows[f"{setup}: {setup_label(params, setup)}"] = {k: round(float(v), 1) for k, v in row.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def banner(params: dict, section_name: str, cells: dict | None = None) -> str:
    """Which data and profile produced ours, and where the paper's numbers come from."""
    setups = sorted({c.setup for c in (cells or table_cells(params, section_name)).values()})
    data = ", ".join(f"{s} = {setup_label(params, s)}" for s in setups)
    seeds = ", ".join(map(str, section_seeds(params, section_name)))
    return (f"Ours: {data} · profile {params['profile']} · seeds {seeds}. "
            f"Paper's numbers ({paper_table(params, section_name).source}) in parentheses, never ours.")


def comparison_figure(metrics: dict, paper: PaperTable, title: str, columns: list[str] | None = None):
    """One panel per column: our mean ± std per row (bars) and the paper's value (black dots)."""
    import matplotlib.pyplot as plt

    columns = columns or [c for c in dict.fromkeys(k for e in metrics.values() for k in e
                                                   if not k.startswith(("paper_", "pending_")) and not k.endswith("_std"))]
    rows = list(metrics)
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 0.25 * len(rows) * nrows + 1.5 * nrows),
                             squeeze=False, sharey=True)
    y = np.arange(len(rows))
    for ax, col in zip(axes.flat, columns):
        ours = np.array([np.nan if metrics[r].get(col) is None else metrics[r][col] for r in rows], dtype=float)
        err = np.array([metrics[r].get(f"{col}_std") or 0.0 for r in rows], dtype=float)
        theirs = np.array([np.nan if metrics[r].get(f"paper_{col}") is None else metrics[r][f"paper_{col}"]
                           for r in rows], dtype=float)
        ax.barh(y, ours, xerr=err, color="C0", alpha=0.7, label="ours")
        ax.plot(theirs, y, "ko", ms=3, label="paper")
        finite = np.concatenate([ours[np.isfinite(ours)], theirs[np.isfinite(theirs)]])
        if finite.size:
            lo, hi = finite.min(), finite.max()
            ax.set_xlim(max(0.0, lo - 0.15 * (hi - lo + 1e-9) - 1e-3), hi + 0.15 * (hi - lo + 1e-9) + 1e-3)
        ax.set_title(col, fontsize=9)
    for ax in axes.flat[len(columns):]:
        ax.axis("off")
    axes[0, 0].set_yticks(y, rows, fontsize=7)
    axes[0, 0].invert_yaxis()
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def save_outputs(out_dir, params: dict, section_name: str, wide: pd.DataFrame, long: pd.DataFrame,
                 metrics: dict, runs: dict, caption: str, **extra) -> None:
    """table.md (ours (paper) per cell), table.csv (one row per cell), metrics.json."""
    from .data.cache import atomic_write_bytes
    from .report import write_metrics

    md = f"{caption}\n\n{wide.to_markdown()}\n"
    atomic_write_bytes(out_dir / "table.md", lambda tmp: tmp.write_text(md))
    atomic_write_bytes(out_dir / "table.csv", lambda tmp: long.to_csv(tmp, index=False))
    setups = sorted({r.config["data"]["dataset"] for recs in runs.values() for r in recs})
    write_metrics(out_dir, {
        "data": banner(params, section_name), "datasets": setups, "profile": params["profile"],
        "seeds": section_seeds(params, section_name), "paper": params[section_name]["paper"], "table": metrics,
        "runs": {f"{row} | {col}": [r.hash for r in recs] for (row, col), recs in runs.items()}, **extra})
