"""Every table / figure notebook's metrics.json (ci profile: AMSS, Greedy, DGL) has an entry for every cell of its
table, ours and the paper's, names its data, profile and machine; its figure draws only columns of the table.

`make test` runs nbval over the notebooks first, which writes ``results/notebooks/ci/<paper>/<stage>/metrics.json``;
a missing or stale file is produced here by executing the notebook (ci profile) with papermill.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmlib import tables
from mmlib.config import load_params
from mmlib.paper import load_paper_table

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ("amss", "greedy", "dgl")
ALL_NOTEBOOKS = sorted(n for paper in PAPERS for n in (ROOT / "notebooks" / paper).glob("*.ipynb"))
NOTEBOOKS = [n for n in ALL_NOTEBOOKS if n.stem != "greedy_06_fig6"]  # Fig. 6 shows examples: no table


def ci_metrics(notebook: Path, tmp_path: Path) -> dict:
    path = ROOT / "results" / "notebooks" / "ci" / notebook.parent.name / notebook.stem / "metrics.json"
    newest_input = max(notebook.stat().st_mtime, (ROOT / "params.yaml").stat().st_mtime)
    if not path.is_file() or path.stat().st_mtime < newest_input:
        import papermill
        papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name), cwd=str(notebook.parent),
                                   parameters={"profile": "ci"}, kernel_name="python3", progress_bar=False)
    return json.loads(path.read_text())


def test_there_is_one_notebook_per_paper_artifact():
    assert [n.stem for n in ALL_NOTEBOOKS] == [
        "amss_01_table1", "amss_02_table2", "amss_03_table3", "amss_04_table4", "amss_05_table5", "amss_06_table6",
        "amss_07_table7", "amss_08_fig3", "amss_09_fig4", "amss_10_fig5", "amss_11_table8",
        "amss_12_supplement_table1", "dgl_01_table1", "dgl_02_table2", "dgl_03_table3", "dgl_04_table4",
        "dgl_05_table5", "dgl_06_fig1", "dgl_07_fig3", "dgl_08_cross_paper", "greedy_01_fig2", "greedy_02_fig4",
        "greedy_03_table1", "greedy_04_fig5", "greedy_05_fig9", "greedy_06_fig6"]


def test_every_notebook_stage_is_in_the_pipeline():
    """Each notebook is an item of its paper's foreach stage (or a stage of its own) writing under its paper."""
    dvc = (ROOT / "dvc.yaml").read_text()
    for notebook in ALL_NOTEBOOKS:
        assert f"- {notebook.stem}\n" in dvc or f"  {notebook.stem}:\n" in dvc, notebook.stem
        assert f"notebooks/{notebook.parent.name}/" in dvc and f"reports/${{profile}}/{notebook.parent.name}/" in dvc


def test_every_notebook_writes_where_its_stage_declares(tmp_path):
    """The folder a notebook writes to is its own folder under reports/<profile>/, the one dvc.yaml declares,
    whatever paper table it compares with (the cross-paper view's table is cross/methods, its notebook dgl/)."""
    from mmlib import report

    params = {**load_params("demo"), "root": str(tmp_path)}
    for notebook in ALL_NOTEBOOKS:
        out = report.stage_dir(params, notebook.stem)
        assert out == tmp_path / "reports" / "demo" / notebook.parent.name / notebook.stem, notebook.stem


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_ci_metrics_cover_every_cell(notebook, tmp_path):
    metrics = ci_metrics(notebook, tmp_path)
    params = load_params("ci")
    section = params[notebook.stem]
    assert metrics["profile"] == "ci" and "embedded data" in metrics["data"]
    assert metrics["machine | cpu"] and metrics["machine | torch"] and metrics["code"]
    assert all(isinstance(v, (int, float, str, bool)) or v is None for v in metrics.values())  # flat for dvc
    paper = load_paper_table(*section["paper"].split("/"), root=ROOT)
    assert metrics["paper"] == paper.source
    for r in paper.rows:  # every number the paper prints has ours (or a pending reason) and the paper's beside it
        for col, value in r["values"].items():
            if value is None:
                continue
            key = f"{r['method']} | {col}"
            assert metrics[f"{key} | paper"] == value, key
            assert metrics[key] is not None or metrics.get(f"{key} | pending"), key
    cells = [k for k in metrics if k.count(" | ") == 1 and k.split(" | ")[0] in section["rows"]]
    assert cells
    table = tables.table_cells(params, notebook.stem, paper)
    seeds = len(tables.section_seeds(params, notebook.stem))
    for key in cells:  # one value per model: seeds x sweep members, less the models that diverged
        cell = table[tuple(key.split(" | "))]
        models = 0 if cell.pending else seeds * len(tables.members(cell))
        assert metrics[f"{key} | seeds"] + metrics.get(f"{key} | diverged", 0) == models, key
    # the figure draws one panel per column holding ours (tables.ours_columns): each is a column of the table
    panels = {k.split(" | ")[1] for k in cells if metrics[k] is not None}
    allowed = set(paper.columns) | (set(section["columns"]) if section.get("grid") else set())
    assert panels <= allowed and not any(p.endswith(("_seeds", "_std", "seeds", "std")) for p in panels)


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS + [ROOT / "notebooks" / "00_quickstart.ipynb"],
                         ids=lambda p: p.stem)
def test_notebooks_import_only_what_they_use(notebook):
    import re

    code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                     if c["cell_type"] == "code")
    body = "\n".join(line for line in code.splitlines() if not re.match(r"\s*(from \S+ )?import ", line))
    imported = [name.split(" as ")[-1].strip() for line in code.splitlines()
                if (m := re.match(r"\s*(?:from \S+ )?import (.*)", line)) for name in m.group(1).split(",")]
    assert [n for n in imported if not re.search(rf"\b{re.escape(n)}\b", body)] == []
