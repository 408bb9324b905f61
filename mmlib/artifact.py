"""A paper artifact (one table or figure of a paper), built the same way for every notebook: the template.

A params.yaml section (rows and columns as runs, ``mmlib.tables``) and the paper's YAML (its numbers and the
claims it makes, ``mmlib.paper``) are all an artifact needs::

    art = artifact.build("amss_02_table2", profile, reports_dir)   # cells -> runs -> table, ordering, claims
    art.show()                      # calibration of the stand-ins, table, best rows, claims
    fig = art.figure()              # ours beside the paper's, one panel per column
    art.save(fig, extra={...})      # table.md, table.csv, figure.png, metrics.json, details.json

A notebook holds its header, its parameters, these calls, and what is particular to its artifact (a curve
figure, a number the paper states in its text), passed to ``save`` as ``extra``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import report, tables
from .config import load_params
from .data.cache import atomic_write_bytes
from .experiments import RunRecord
from .paper import PaperTable


@dataclass
class Artifact:
    stage: str  # params.yaml section = notebook stem = dvc stage item
    params: dict
    paper: PaperTable
    cells: dict  # (row, column) -> tables.Cell
    runs: dict  # (row, column) -> records, one per seed
    results: dict  # row -> column -> {mean, std, seeds, values, metric, paper[, pending]} (tables.compare)
    wide: pd.DataFrame  # 'ours mean ± std (paper)' per row and column
    long: pd.DataFrame  # one row per cell
    order: pd.DataFrame  # per column: the paper's best row and ours, rank correlation
    checked: pd.DataFrame  # the paper's claims on ours (tables.claims)
    calibration: pd.DataFrame  # the stand-ins' baseline rows (tables.calibration)
    caption: str  # which data, profile and seeds produced ours; where the paper's numbers come from
    out_dir: Path

    @property
    def section(self) -> dict:
        return self.params[self.stage]

    def column_runs(self, column: str) -> dict[str, list[RunRecord]]:
        """``{row: records}`` of one column, in the section's row order (for curve figures)."""
        return {row: self.runs[(row, column)] for row in self.section["rows"] if (row, column) in self.runs}

    def show(self) -> None:
        """The notebook's display: stand-ins' calibration, the table, the best rows, the claims."""
        from IPython.display import Markdown, display

        display(Markdown("**Embedded stand-ins' calibration**: their baseline rows beside the paper's (test %, "
                         "mean over seeds: unimodal runs, naive joint training; retention = the share of a modality's "
                         "above-chance accuracy kept inside the naive model, zero_feature protocol)\n\n"
                         + self.calibration.drop(columns="source").to_markdown()))
        print(self.calibration_summary())
        display(Markdown(self.caption + "\n\nOurs mean ± std over seeds (paper's value in parentheses).\n\n"
                         + self.wide.to_markdown()))
        if len(self.order):
            display(self.order)
            differ = [c for c, r in self.order.iterrows() if not r["same best"]]
            print("Ours and the paper name different best rows in: " + ", ".join(differ) if differ
                  else "Ours and the paper name the same best row in every column.")
        if len(self.checked):
            display(self.checked)
            print(tables.claims_summary(self.checked))

    def calibration_summary(self) -> str:
        from .calibration import failed

        missed = failed(self.calibration)
        n = len(self.calibration)
        return (f"Calibration of the stand-ins: {n - len(missed)}/{n} baseline quantities within tolerance"
                + (": not " + "; ".join(" ".join(q) for q in missed) if missed else "") + ".")

    def figure(self, columns: list[str] | None = None):
        """Ours (bars, mean ± std over seeds) beside the paper's values (diamonds), one panel per column, in the
        table's column order."""
        ours = tables.ours_columns(self.results)
        return report.comparison_figure(self.results, self.caption,
                                        columns or [c for c in self.wide.columns if c in ours])

    def distribution_figure(self, columns: list[str] | None = None):
        """Per column, the distribution of each row's per-model values (histogram, density, means, the paper's
        stated value): the Greedy paper's d_util / d_speed figures."""
        columns = columns or tables.ours_columns(self.results)
        panels = {col: {row: (row, col) for row, entries in self.results.items()
                        if col in entries and entries[col]["mean"] is not None} for col in columns}
        return report.distribution_figure(self.results, panels, self.caption)

    def trend_figure(self, logx: tuple[str, ...] = ()):
        """Ours against the number each row name ends in (``lambda=1e-05``, ``Q=5``, ``alpha=0.01``), the rows
        grouped by the name before ``=`` (one series each; ``logx`` names the series drawn on a log axis)."""
        series: dict = {}
        for row in self.section["rows"]:
            name, _, value = row.rpartition("=")
            series.setdefault(name, ({}, name in logx))[0][row] = float(value)
        return report.trend_figure(self.results, series, tables.ours_columns(self.results), self.caption)

    def trend_correlations(self) -> dict:
        """Per series of rows (``lambda=...``) and column: the rank correlation (Spearman) of the row's number
        with our mean; the paper's trend claims ("|d_util| rises with lambda") read as its sign."""
        out: dict = {}
        for row in self.section["rows"]:
            name, _, value = row.rpartition("=")
            out.setdefault(name, {})[row] = float(value)
        return {f"{name} vs {col}": round(float(pd.Series([self.results[r][col]["mean"] for r in xs]).corr(
                    pd.Series(list(xs.values())), method="spearman")), 3)
                for name, xs in out.items() for col in tables.ours_columns(self.results)}

    def metrics(self, extra: dict | None = None) -> dict:
        """The flat metrics: every cell (ours, spread, seeds, the paper's), the claims counts, the stand-ins'
        calibration, which data and profile, and ``extra``."""
        counts = tables.claims_counts(self.checked) if len(self.checked) else {}
        cells = {}
        for row, entries in self.results.items():
            for col, e in entries.items():
                key = f"{row} | {col}"
                cells[key] = e["mean"]
                cells[f"{key} | std"], cells[f"{key} | seeds"], cells[f"{key} | paper"] = e["std"], e["seeds"], e["paper"]
                if e.get("pending"):
                    cells[f"{key} | pending"] = e["pending"]
                if e.get("diverged"):
                    cells[f"{key} | diverged"] = e["diverged"]
        calibration = {f"calibration | {setup.split(':')[0]} | {quantity} | {column}": value
                       for (setup, quantity), row in self.calibration.iterrows()
                       for column, value in row.items() if column != "source"}
        return {"data": self.caption, "profile": self.params["profile"],
                "seeds": tables.section_seeds(self.params, self.stage), "paper": self.paper.source,
                **{f"claims {k}": v for k, v in counts.items()}, **cells, **calibration, **(extra or {})}

    def save(self, figure=None, extra: dict | None = None) -> None:
        """Write table.md, table.csv, figure.png, metrics.json (flat, DVC metrics) and details.json (the runs
        behind each cell, the claims and the best rows). Every cell the paper prints must hold ours or a pending
        reason."""
        gaps = tables.missing_entries(self.results, self.paper)
        if gaps:
            raise ValueError(f"{self.stage}: cells without a value: {gaps}")

        report.save_table(self.wide, self.out_dir, self.caption, csv=False)
        atomic_write_bytes(self.out_dir / "table.csv", lambda tmp: self.long.to_csv(tmp, index=False))
        if figure is not None:
            report.save_figure(figure, self.out_dir)
        report.write_metrics(self.out_dir, self.metrics(extra))
        report.write_json(self.out_dir, "details.json", {
            "runs": {f"{row} | {col}": [r.hash for r in recs] for (row, col), recs in self.runs.items()},
            "claims": self.checked.reset_index().to_dict(orient="records"),
            "ordering": self.order.reset_index().to_dict(orient="records")})
        from .calibration import failed

        if self.params["profile"] == "demo" and failed(self.calibration):  # the stand-ins are calibrated on demo
            message = (f"{self.stage}: {self.calibration_summary()} CPU float paths differ between processors and "
                       f"the demo's numbers move by a few points (README); to record the miss in metrics.json and "
                       f"go on, set replication.calibration: warn in params.yaml")
            mode = self.params.get("replication", {}).get("calibration", "assert")
            if mode not in ("assert", "warn"):
                raise ValueError(f"params.yaml replication.calibration must be assert or warn, got {mode!r}")
            if mode == "assert":
                raise AssertionError(message)
            import warnings

            warnings.warn(message, stacklevel=2)


def build(stage: str, profile: str = "ci", reports_dir: str = "results/notebooks") -> Artifact:
    """Run (or read from the run store) every cell of a paper artifact and compare it with the paper."""
    params = load_params(profile)
    paper = tables.paper_table(params, stage)
    cells = tables.table_cells(params, stage, paper)
    seeds = tables.section_seeds(params, stage)
    calibration = tables.calibration(params, sorted({c.setup for c in cells.values()}), seeds)
    runs = tables.run_cells(params, stage, cells)
    wide, long, results = tables.compare(cells, runs, paper)
    return Artifact(stage=stage, params=params, paper=paper, cells=cells, runs=runs, results=results, wide=wide,
                    long=long, order=tables.ordering(results, paper), checked=tables.claims(results, paper.claims),
                    calibration=calibration, caption=tables.banner(params, stage, cells),
                    out_dir=report.stage_dir(params, stage, reports_dir))


def examples(stage: str, profile: str = "ci", reports_dir: str = "results/notebooks", seed: int = 0):
    """A figure of example inputs of each setup the section names (``setups``, ``examples`` per dataset), from
    their prepared tensor caches (the embedded stand-ins, or real data where a setup points at it); saved with a
    metrics.json naming the data. Returns the figure."""
    import numpy as np

    from .experiments import load_cache

    params = load_params(profile)
    section = params[stage]
    count = int(section.get("examples", 4))
    shown, names = {}, {}
    for setup in section["setups"]:
        cfg = tables.cell_config(params, tables.Cell(setup=setup), 0)
        _, cache = load_cache(cfg)
        test = cache.indices("test")
        pick = test[np.random.default_rng(seed).choice(len(test), size=min(count, len(test)), replace=False)]
        label = f"{setup}: {tables.setup_label(params, setup)}"
        names[setup] = tables.setup_label(params, setup)
        shown[label] = {}
        for m in cfg.data.modalities:
            x = cache.tensors[m][pick]  # (n, T, C, H, W) uint8 clips: the middle frame of each
            frame = x[:, x.shape[1] // 2].float().div(255.0)
            shown[label][m] = (frame[:, 0] if frame.shape[1] == 1 else frame[:, :3].permute(0, 2, 3, 1)).numpy()
    caption = (f"Ours: test examples of {', '.join(f'{s} = {n}' for s, n in names.items())} · profile "
               f"{params['profile']}. The paper's Fig. 6 shows the real datasets; these are the embedded stand-ins.")
    fig = report.examples_figure(shown, caption)
    out_dir = report.stage_dir(params, stage, reports_dir)
    report.save_figure(fig, out_dir)
    report.write_metrics(out_dir, {"data": caption, "profile": params["profile"], "examples per dataset": count,
                                   **{f"dataset | {s}": n for s, n in names.items()}})
    return fig
