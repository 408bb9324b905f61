"""Every AMSS notebook's metrics.json (ci profile) has an entry for every cell of its table, ours and the paper's.

`make test` runs nbval over the notebooks first, which writes ``results/notebooks/amss/<stage>/metrics.json``;
a missing or stale file is produced here by executing the notebook (ci profile) with papermill.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmlib import tables
from mmlib.paper import load_paper_table

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks" / "amss").glob("*.ipynb"))


def ci_metrics(notebook: Path, tmp_path: Path) -> dict:
    path = ROOT / "results" / "notebooks" / "amss" / notebook.stem / "metrics.json"
    newest_input = max(notebook.stat().st_mtime, (ROOT / "params.yaml").stat().st_mtime)
    if not path.is_file() or path.stat().st_mtime < newest_input:
        import papermill
        papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name), cwd=str(notebook.parent),
                                   parameters={"profile": "ci"}, kernel_name="python3", progress_bar=False)
    return json.loads(path.read_text())


def test_there_is_one_notebook_per_paper_artifact():
    assert [n.stem for n in NOTEBOOKS] == [
        "amss_01_table1", "amss_02_table2", "amss_03_table3", "amss_04_table4", "amss_05_table5", "amss_06_table6",
        "amss_07_table7", "amss_08_fig3", "amss_09_fig4", "amss_10_fig5", "amss_11_table8",
        "amss_12_supplement_table1"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_ci_metrics_cover_every_cell(notebook, tmp_path):
    metrics = ci_metrics(notebook, tmp_path)
    assert metrics["profile"] == "ci" and "embedded data" in metrics["data"]
    paper = load_paper_table(*metrics["paper"].split("/"), root=ROOT)
    table = metrics["table"]
    assert table and tables.missing_entries(table, paper) == []
    for row, entry in table.items():
        ours = [k for k in entry if not k.startswith(("paper_", "pending_")) and not k.endswith(("_std", "_seeds"))]
        assert ours, row
        for col in ours:  # each of our cells carries the paper's value (null where the paper prints none)
            assert f"paper_{col}" in entry, (row, col)
            assert entry[col] is not None or entry.get(f"pending_{col}"), (row, col)
            if paper.rows and row in paper.methods and col in paper.columns:
                assert entry[f"paper_{col}"] == paper.value(row, col), (row, col)
        assert all(len(hashes) == len(metrics["seeds"]) for key, hashes in metrics["runs"].items()
                   if key.startswith(f"{row} | "))
