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

A cell is ``row spec + column spec`` (their ``params``, ``set`` and ``sweep`` merged); cells are made for every
(row, column) where the paper prints a number (every row x column with ``grid: true``, for figures that print
none), plus ``extra_cells``. Cells that resolve to one configuration
share its runs, and the run store caches by hash, so a baseline trained for one table is reused by the next.

A cell's values are one per *model*: every seed, times every member of its ``sweep`` (dotted key -> a list of
values, ``{log_uniform: [lo, hi], count: n, seed: s}`` drawn once, or ``{log_space: [lo, hi], count: n}``), e.g.
the Greedy paper's models at learning rates sampled from an interval. A row ``{best_of: [row, ...]}`` takes, in
each column, the entry of the named rows with the best mean (the paper's "uni-modal (best)").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from .config import ExperimentConfig, deep_merge, experiment_config, stable_hash
from .executors import executor_config
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
    sweep: dict = field(default_factory=dict)  # dotted key -> value spec: one model per member and seed
    best_of: list = field(default_factory=list)  # rows whose best entry in this column is this cell's
    duplicate: int | None = None  # the setup's i-th modality twice (m and m_copy: identical inputs, greedy.md §6.2)


def sweep_values(key: str, spec) -> list:
    """The values of one ``sweep`` key: a list as given, ``{log_uniform: [lo, hi], count, seed}`` (seeded draws,
    sorted) or ``{log_space: [lo, hi], count}`` (geometric grid)."""
    if isinstance(spec, list):
        return list(spec)
    if isinstance(spec, dict) and set(spec) <= {"log_uniform", "log_space", "count", "seed"} and "count" in spec \
            and len(set(spec) & {"log_uniform", "log_space"}) == 1:
        (kind,) = set(spec) & {"log_uniform", "log_space"}
        lo, hi = spec[kind]
        count = spec["count"]
        if not (0 < lo < hi) or not isinstance(count, int) or count < 1:
            raise ValueError(f"sweep {key}: {kind} needs 0 < lo < hi and count >= 1, got {spec}")
        if kind == "log_space":
            return [float(v) for v in np.geomspace(lo, hi, count)]
        draws = np.random.default_rng(spec.get("seed", 0)).uniform(np.log(lo), np.log(hi), count)
        return [float(v) for v in np.sort(np.exp(draws))]
    raise ValueError(f"sweep {key}: expected a list, {{log_uniform: [lo, hi], count: n}} or "
                     f"{{log_space: [lo, hi], count: n}}, got {spec!r}")


def members(cell: Cell) -> list[dict]:
    """The dotted overrides of each member of the cell's sweep (``[{}]`` without one), in a fixed order."""
    out = [{}]
    for key in sorted(cell.sweep):
        out = [{**m, key: v} for m in out for v in sweep_values(key, cell.sweep[key])]
    return out


def _mean_rho(index: int) -> Callable[[RunRecord], float]:
    def value(record: RunRecord) -> float:
        modality = record.config["data"]["modalities"][index]
        key = f"rho_{modality}"
        if key not in record.steps:
            raise KeyError(f"run {record.hash} logged no {key} (balancer {record.config['balancer']['name']})")
        return float(np.mean(record.steps[key]))
    return value


def _measure(record: RunRecord, path: tuple[str, ...]) -> float:
    """``record.final[path...]``, or an error naming the run and the missing measure (undefined: None)."""
    node = record.final
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None:
        raise KeyError(f"run {record.hash} has no {'.'.join(path)} (balancer {record.config['balancer']['name']}, "
                       f"fusion {record.config.get('model', {}).get('fusion', {}).get('name')}); it is defined for "
                       f"MMTM-style models (d_util, d_speed), every run (sparsity), segmentation (miou)")
    return float(node)


# metric name -> value of one run; percentages for classification metrics
METRICS: dict[str, Callable[[RunRecord], float]] = {  # "inside:<modality>" is metric_function's
    "acc": lambda r: 100 * r.final["test"]["acc"],
    "map": lambda r: 100 * r.final["test"]["map"],
    "macf1": lambda r: 100 * r.final["test"]["f1"],
    "f1": lambda r: 100 * r.final["test"]["f1"],
    "overhead_min": lambda r: r.train_seconds / 60,  # total training time, minutes
    "epoch_s": lambda r: r.train_seconds / max(1, r.config["train"]["epochs"]),
    "mean_rho1": _mean_rho(0),
    "mean_rho2": _mean_rho(1),
    "mean_rho3": _mean_rho(2),
    # the Greedy paper's measures (mmlib.utilization), for runs on MMTM-style models
    "d_util": lambda r: _measure(r, ("test", "utilization", "d_util")),
    "abs_d_util": lambda r: abs(_measure(r, ("test", "utilization", "d_util"))),
    "d_speed": lambda r: _measure(r, ("speed", "d_speed")),
    "abs_d_speed": lambda r: abs(_measure(r, ("speed", "d_speed"))),
    "sparsity": lambda r: _measure(r, ("sparsity", "fraction")),  # R(f)
    "miou": lambda r: 100 * _measure(r, ("test", "miou")),  # segmentation
}


INSIDE = "inside:"  # inside:<modality>: the modality's accuracy inside the model (its first unimodal protocol)


def metric_function(metric: str) -> Callable[[RunRecord], float]:
    """``METRICS[metric]``, or for ``inside:<modality>`` the modality's test accuracy (%) inside the model (a
    unimodal run's own accuracy)."""
    if metric in METRICS:
        return METRICS[metric]
    if metric.startswith(INSIDE) and len(metric) > len(INSIDE):
        modality = metric[len(INSIDE):]

        def inside(record: RunRecord) -> float:
            return 100 * record.unimodal_acc(modality)
        return inside
    raise KeyError(f"unknown metric {metric!r}; metrics are {sorted(METRICS)} and {INSIDE}<modality>")


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
    try:
        metric_function(metric)
    except KeyError as err:
        raise KeyError(f"column {column!r}: {err.args[0]}") from None
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
    unknown = (set(rspec) - {"balancer", "params", "set", "pending", "sweep", "best_of", "duplicate"}) | \
              (set(cspec) - {"params", "set", "balancer", "sweep"})
    if unknown:
        raise KeyError(f"cell ({row!r}, {column!r}): unknown key(s) {sorted(unknown)}")
    best_of = list(rspec.get("best_of") or [])
    missing = [r for r in best_of if r not in rows]
    if missing:
        raise KeyError(f"row {row!r}: best_of names rows {missing} that are not in the section's rows")
    return Cell(setup=setup, balancer=rspec.get("balancer") or cspec.get("balancer") or "naive",
                params=deep_merge(rspec.get("params") or {}, cspec.get("params") or {}),
                overrides={**(cspec.get("set") or {}), **(rspec.get("set") or {})},
                metric=metric, pending=rspec.get("pending", ""),
                sweep={**(cspec.get("sweep") or {}), **(rspec.get("sweep") or {})}, best_of=best_of,
                duplicate=rspec.get("duplicate"))


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
    for (row, column), cell in list(cells.items()):  # the rows a best-of cell chooses from, in its column
        for candidate in cell.best_of:
            cells.setdefault((candidate, column), make_cell(section, candidate, column))
    return cells


def setup_label(params: dict, setup: str) -> str:
    """e.g. ``synth_ks (embedded data)`` for the setup's dataset."""
    from .registry import get

    cfg = cell_config(params, Cell(setup=setup), seed=0)
    embedded = getattr(get("datasets", cfg.data.dataset), "embedded", False)
    return f"{cfg.data.dataset} ({'embedded' if embedded else 'real'} data)"


def cell_config(params: dict, cell: Cell, seed: int, section: str | None = None,
                member: dict | None = None) -> ExperimentConfig:
    """base <- setups[cell.setup].experiment <- section.experiment <- the cell's balancer and overrides <- the
    sweep ``member``'s overrides."""
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
    twins = {}
    if cell.duplicate is not None:  # the i-th modality and its copy (the loader serves the very same tensor)
        modality = probe.data.modalities[cell.duplicate]
        twins = {"data.modalities": [modality, f"{modality}_copy"]}
    return experiment_config(merged, section, **{"balancer.name": cell.balancer, "balancer.params": bparams,
                                                 "train.seed": seed, **twins, **cell.overrides,
                                                 **(member or {})})


def section_seeds(params: dict, section_name: str) -> list[int]:
    return list(params[section_name].get("seeds") or params.get("replication", {}).get("seeds") or [0])


def section_configs(params: dict, section_name: str, cells: dict, seeds: list[int] | None = None
                    ) -> dict[tuple[str, str], list[ExperimentConfig]]:
    """The configurations of every cell (not pending, not best-of): one per sweep member and seed."""
    seeds = seeds if seeds is not None else section_seeds(params, section_name)
    return {key: [cell_config(params, cell, s, section_name, member) for member in members(cell)
                  for s in seeds] for key, cell in cells.items() if not cell.pending and not cell.best_of}


def run_cells(params: dict, section_name: str, cells: dict, seeds: list[int] | None = None,
              workers: int | None = None) -> dict[tuple[str, str], list[RunRecord]]:
    """Run every cell (not pending, not best-of) for every sweep member and seed, where params.yaml's
    ``executor`` says (default: ``replication.workers`` local processes); identical configurations run
    once."""
    workers = workers or params.get("replication", {}).get("workers", 1)
    configs = section_configs(params, section_name, cells, seeds)
    records = iter(sweep([c for cs in configs.values() for c in cs], workers=workers, desc=section_name,
                         skip_diverged=True, executor=executor_config(params)))
    runs = {key: [next(records) for _ in cs] for key, cs in configs.items()}
    for key, recs in runs.items():  # only a sweep's models may diverge (a learning-rate range's far end)
        if None in recs and not cells[key].sweep:
            from .train import NonFiniteLossError

            raise NonFiniteLossError(f"{section_name}: cell {key[0]} / {key[1]}: a run's loss became non-finite "
                                     f"(its folder holds {'diverged.json'}); it is never a result")
    return runs


def table_sections(params: dict) -> list[str]:
    """The params.yaml sections that are paper tables or figures (they name their ``paper``)."""
    return [k for k, v in params.items() if isinstance(v, dict) and "paper" in v]


def artifact_configs(params: dict, section_name: str) -> list[ExperimentConfig]:
    """Every configuration a paper artifact's notebook trains (``mmlib.artifact.build``): the calibration runs
    of the setups its cells use, then every cell's runs, each distinct configuration once."""
    if section_name not in table_sections(params):
        raise KeyError(f"params.yaml has no paper table section {section_name!r}; they are: "
                       f"{', '.join(table_sections(params))}")
    cells = table_cells(params, section_name)
    seeds = section_seeds(params, section_name)
    configs = [c for setup in sorted({c.setup for c in cells.values()})
               for cs in calibration_configs(params, setup, seeds).values() for c in cs]
    configs += [c for cs in section_configs(params, section_name, cells, seeds).values() for c in cs]
    return list({stable_hash(c.to_dict()): c for c in configs}.values())


def cell_values(cells: dict, runs: dict) -> dict[tuple[str, str], list[float]]:
    """One value per model that trained (a sweep's diverged models, None in ``runs``, have none)."""
    return {key: [metric_function(cells[key].metric)(r) for r in recs if r is not None] for key, recs in runs.items()}


def _fmt(mean: float, std: float | None, n: int, metric: str) -> str:
    digits = 3 if metric.startswith("mean_rho") or metric in ("d_util", "abs_d_util", "sparsity") else \
        (2 if metric in ("overhead_min", "epoch_s", "d_speed", "abs_d_speed") else 1)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


# metrics where a larger value is a better method (the rankings and "best row" compare these only)
HIGHER_IS_BETTER = ("acc", "map", "macf1", "f1", "miou")


def compare(cells: dict, runs: dict, paper: PaperTable) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(wide table 'ours (paper)', long table, results) for the cells of one paper table.

    results: ``{row: {column: {"mean", "std", "seeds", "values" (one per seed), "metric", "paper"}}}``, ours in
    the metric's unit (percent for accuracies), ``paper`` the paper's value (None where it prints none); a
    pending cell has ``mean`` None and ``pending`` (the reason).
    """
    values = cell_values(cells, runs)
    rows_order = [r for r in paper.methods if any(k[0] == r for k in cells)]
    rows_order += [k[0] for k in cells if k[0] not in rows_order]
    cols_order = [c for c in paper.columns if any(k[1] == c for k in cells)]
    cols_order += [k[1] for k in cells if k[1] not in cols_order]
    wide = pd.DataFrame("", index=pd.Index(list(dict.fromkeys(rows_order)), name="method"),
                        columns=list(dict.fromkeys(cols_order)))
    long_rows, results = [], {}
    ordered = sorted(cells.items(), key=lambda item: bool(item[1].best_of))  # best-of cells after their rows
    for (row, col), cell in ordered:
        paper_value = paper.value(row, col) if row in paper.methods and col in paper.columns else None
        paper_txt = "–" if paper_value is None else f"{paper_value:g}"
        entry = {"metric": cell.metric, "paper": paper_value}
        if cell.pending:
            entry.update(mean=None, std=None, seeds=0, values=[], pending=cell.pending)
            wide.loc[row, col] = f"pending ({paper_txt})"
        elif cell.best_of:
            measured = [(r, results[r][col]) for r in cell.best_of if results[r][col]["mean"] is not None]
            chosen, best = max(measured, key=lambda item: item[1]["mean"])
            entry.update({k: best[k] for k in ("mean", "std", "seeds", "values")}, chosen=chosen)
            wide.loc[row, col] = f"{_fmt(entry['mean'], entry['std'], entry['seeds'], cell.metric)} [{chosen}] " \
                                 f"({paper_txt})"
        else:
            vals = [float(v) for v in values[(row, col)]]
            lost = sum(r is None for r in runs[(row, col)])
            if not vals:
                raise ValueError(f"cell {row} / {col}: every one of its {lost} models diverged (non-finite loss)")
            mean = float(np.mean(vals))
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            entry.update(mean=mean, std=std, seeds=len(vals), values=vals, diverged=lost)
            wide.loc[row, col] = f"{_fmt(mean, std, len(vals), cell.metric)} ({paper_txt})" + \
                (f" [{lost} of {lost + len(vals)} diverged]" if lost else "")
        results.setdefault(row, {})[col] = entry
        long_rows.append({"cell": f"{row} | {col}", "method": row, "column": col, "ours_mean": entry["mean"],
                          "ours_std": entry["std"], "seeds": entry["seeds"], "paper": paper_value,
                          "note": f"pending: {cell.pending}" if cell.pending else
                          (f"best of {', '.join(cell.best_of)}: {entry['chosen']}" if cell.best_of else
                           (f"{entry['diverged']} models diverged (non-finite loss), left out"
                            if entry.get("diverged") else ""))})
    return wide, pd.DataFrame(long_rows), results


def ours_columns(results: dict) -> list[str]:
    """The columns holding a value of ours, in table order: what a figure draws, one panel each."""
    return list(dict.fromkeys(col for entries in results.values() for col, e in entries.items()
                              if e["mean"] is not None))


def missing_entries(results: dict, paper: PaperTable) -> list[str]:
    """Cells of the paper's table without our value (or a pending reason) or without the paper's value."""
    gaps = []
    for r in paper.rows:
        for col in paper.columns:
            if r["values"].get(col) is None:
                continue
            entry = results.get(r["method"], {}).get(col)
            if entry is None:
                gaps.append(f"{r['method']} / {col}: no value of ours")
                continue
            if entry.get("paper") is None:
                gaps.append(f"{r['method']} / {col}: no paper value")
            if entry.get("mean") is None and not entry.get("pending"):
                gaps.append(f"{r['method']} / {col}: no value of ours")
    return gaps


def ordering(results: dict, paper: PaperTable, columns: list[str] | None = None) -> pd.DataFrame:
    """Per column where a larger value is better (``HIGHER_IS_BETTER``): the paper's best row and ours, and the
    rank correlation (Spearman) of ours with the paper's over the rows both have."""
    out = {}
    candidates = columns or [c for c in paper.columns]
    for col in candidates:
        pairs = [(row, e[col]["mean"], e[col]["paper"]) for row, e in results.items()
                 if col in e and e[col]["mean"] is not None and e[col]["paper"] is not None
                 and (e[col]["metric"] in HIGHER_IS_BETTER or e[col]["metric"].startswith(INSIDE))]
        if len(pairs) < 2:
            continue
        rows, ours, theirs = zip(*pairs)
        best_ours, best_paper = rows[int(np.argmax(ours))], rows[int(np.argmax(theirs))]
        rho = pd.Series(ours).rank().corr(pd.Series(theirs).rank())
        out[col] = {"paper best": best_paper, "ours best": best_ours, "same best": best_ours == best_paper,
                    "rank corr.": None if np.isnan(rho) else round(float(rho), 2), "rows": len(pairs)}
    return pd.DataFrame.from_dict(out, orient="index")


def claims(results: dict, comparisons: list[tuple]) -> pd.DataFrame:
    """The paper's qualitative claims ``better > worse`` on ``column``, checked on our means over seeds (and on
    the paper's numbers where it prints them); a claim ``(better, worse, column, "abs")`` compares the magnitudes
    of the means (|E[d_util]|, say). ``gap / s.e.`` is the gap over its standard error (Welch); a claim holds
    clearly when that exceeds 2, which needs several seeds."""
    out = []
    columns = {col for entries in results.values() for col in entries}
    missing = {"mean": None, "paper": None, "seeds": 0}  # a cell the paper prints no number for
    for better, worse, column, *kind in comparisons:
        magnitude = kind == ["abs"]
        size = abs if magnitude else (lambda v: v)
        unknown = [x for x in (better, worse) if x not in results] + ([column] if column not in columns else [])
        if unknown:
            raise KeyError(f"claim {better} > {worse} ({column}): {unknown} not in the table")
        a, b = results[better].get(column, missing), results[worse].get(column, missing)
        measured = a["mean"] is not None and b["mean"] is not None
        ratio = None
        if measured and a["seeds"] > 1 and b["seeds"] > 1:
            se = np.sqrt(a["std"] ** 2 / a["seeds"] + b["std"] ** 2 / b["seeds"])
            gap = size(a["mean"]) - size(b["mean"])
            ratio = float(np.sign(gap) * np.inf) if se == 0 and gap else (0.0 if se == 0 else float(gap / se))
        bar = (lambda v: f"|{v}|") if magnitude else (lambda v: v)
        out.append({"claim": f"{bar(better)} > {bar(worse)} ({column})",
                    "ours": "–" if not measured else
                    f"{a['mean']:.2f} ± {a['std']:.2f} vs {b['mean']:.2f} ± {b['std']:.2f}",
                    "holds in ours": None if not measured else bool(size(a["mean"]) > size(b["mean"])),
                    "gap / s.e.": None if ratio is None else round(ratio, 1),
                    "clearly (> 2 s.e.)": None if ratio is None else bool(ratio > 2),
                    "paper": "–" if a["paper"] is None or b["paper"] is None else f"{a['paper']:g} vs {b['paper']:g}"})
    return pd.DataFrame(out, columns=["claim", "ours", "holds in ours", "gap / s.e.", "clearly (> 2 s.e.)",
                                      "paper"]).set_index("claim")


def claims_counts(checked: pd.DataFrame) -> dict[str, int]:
    """How many claims were measured, hold in ours, and hold clearly (> 2 standard errors)."""
    measured = int(checked["holds in ours"].notna().sum())
    holding = int((checked["holds in ours"] == True).sum())  # noqa: E712 (None = not measured)
    clearly = int((checked["clearly (> 2 s.e.)"] == True).sum())  # noqa: E712 (None = single seed)
    return {"measured": measured, "holding": holding, "clearly": clearly}


def claims_summary(checked: pd.DataFrame) -> str:
    """One line on a ``claims`` table: how many of the paper's claims hold in ours, how many clearly, which not."""
    failed = [c for c, holds in checked["holds in ours"].items() if holds is not None and not holds]
    n = claims_counts(checked)
    return (f"{n['holding']}/{n['measured']} of the paper's claims hold in ours ({n['clearly']} clearly, by more "
            f"than 2 standard errors over seeds)" + (": not " + "; ".join(failed) if failed else "") + ".")


def baseline_accuracies(runs: dict[str, list[RunRecord]], modalities: list[str], metric: str = "acc") -> dict:
    """``{"only": {m: value}, "naive": value, "inside": {m: acc}}``, test %, mean over seeds, from the unimodal
    runs (``runs[m]``, where run) and the naive runs (``runs["naive"]``; inside: the run's first protocol);
    ``metric`` names the measure (acc, or miou for segmentation, where nothing is measured inside)."""
    mean = lambda values: float(np.mean(list(values)))  # noqa: E731
    value = metric_function(metric)
    out = {"only": {m: mean(value(r) for r in runs[m]) for m in modalities if m in runs},
           "naive": mean(value(r) for r in runs["naive"]), "inside": {}}
    if metric == "acc":
        out["inside"] = {m: mean(100 * r.unimodal_acc(m) for r in runs["naive"]) for m in modalities}
    return out


def calibration_cells(params: dict, setup: str) -> dict[str, Cell]:
    """The runs a setup's calibration compares with the paper's baseline rows (``setups.<s>.calibration``):
    ``naive``, its joint baseline, and each modality the paper reports alone."""
    spec = params["setups"][setup].get("calibration")
    if not spec:
        raise KeyError(f"setups.{setup} has no calibration block (the paper's baseline rows it is calibrated "
                       f"on)")
    modalities = cell_config(params, Cell(setup=setup), 0).data.modalities
    cells = {"naive": Cell(setup=setup, balancer=spec.get("naive_balancer", "naive"))}  # the joint baseline
    cells.update({m: Cell(setup=setup, balancer="unimodal", params={"modality": m}) for m in modalities
                  if m in spec.get("only", {})})
    return cells


def calibration_configs(params: dict, setup: str, seeds: list[int]) -> dict[str, list[ExperimentConfig]]:
    """The configurations of ``calibration_cells``, one per seed."""
    return {k: [cell_config(params, c, s) for s in seeds]
            for k, c in calibration_cells(params, setup).items()}


def calibration(params: dict, setups: list[str], seeds: list[int], workers: int | None = None) -> pd.DataFrame:
    """Per setup, the stand-in's baseline rows beside the paper's (``setups.<s>.calibration``, mmlib.calibration):
    each modality's unimodal accuracy, naive joint accuracy, and each modality's retention inside the naive
    model; test %, mean over seeds. Index (setup, quantity). Runs train where params.yaml's ``executor``
    says."""
    from .calibration import calibration_checks

    frames = {}
    for setup in setups:
        configs = calibration_configs(params, setup, seeds)
        spec = params["setups"][setup]["calibration"]
        modalities = cell_config(params, Cell(setup=setup), 0).data.modalities
        records = iter(sweep([c for cs in configs.values() for c in cs], desc=f"calibration of {setup}",
                             workers=workers or params.get("replication", {}).get("workers", 1),
                             executor=executor_config(params)))
        runs = {k: [next(records) for _ in cs] for k, cs in configs.items()}
        classes = len(runs["naive"][0].data["classes"])
        frames[f"{setup}: {setup_label(params, setup)}"] = calibration_checks(
            baseline_accuracies(runs, modalities, spec.get("metric", "acc")), spec, classes, params["root"],
            {**(params.get("replication", {}).get("calibration_tolerance") or {}), **(spec.get("tolerance") or {})})
    return pd.concat(frames, names=["setup", "quantity"]).round(3)


def learning_rate_search(params: dict, setup: str, factors: tuple[float, ...] = (0.3, 1.0, 3.0), seed: int = 0,
                         workers: int | None = None) -> dict[str, dict[float, float]]:
    """MSLR's per-modality learning rates as the method prescribes them: each modality's unimodal model trained at
    the setup's learning rate times each factor; ``{modality: {factor: validation accuracy %}}`` (selection on the
    validation split carved from train, never on test). The best factor per modality is MSLR's ``lr_scales``."""
    probe = cell_config(params, Cell(setup=setup), seed)
    cells = {(m, f): Cell(setup=setup, balancer="unimodal", params={"modality": m},
                          overrides={"optim.lr": probe.optim.lr * f})
             for m in probe.data.modalities for f in factors}
    configs = [cell_config(params, c, seed) for c in cells.values()]
    records = sweep(configs, desc=f"learning rates of {setup}",
                    workers=workers or params.get("replication", {}).get("workers", 1),
                    executor=executor_config(params))
    out: dict[str, dict[float, float]] = {}
    for (m, f), record in zip(cells, records):
        out.setdefault(m, {})[f] = round(100 * record.final["val"]["acc"], 2)
    return out


def banner(params: dict, section_name: str, cells: dict | None = None) -> str:
    """Which data and profile produced ours, and where the paper's numbers come from."""
    setups = sorted({c.setup for c in (cells or table_cells(params, section_name)).values()})
    data = ", ".join(f"{s} = {setup_label(params, s)}" for s in setups)
    seeds = ", ".join(map(str, section_seeds(params, section_name)))
    return (f"Ours: {data} · profile {params['profile']} · seeds {seeds}. "
            f"Paper's numbers ({paper_table(params, section_name).source}) in parentheses, never ours.")
