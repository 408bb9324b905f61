"""Reported numbers from papers, stored as YAML under ``data/paper/<paper>/<artifact>.yaml``.

Each file holds ``source``, ``caption``, ``columns`` (metric names in order), ``rows`` (each with
``method``, ``values`` {column: number or null} and optional ``marks`` {column: marker}), ``notes`` and
``claims``: the paper's qualitative "A beats B" statements that the notebook checks on our numbers, each
``[better, worse, column]`` or ``[better, worse, [column, ...]]`` (column names of the notebook's table), with a
fourth element ``abs`` where the claim is on the magnitude of the means (e.g. |E[d_util]|).
Figures without numeric content have empty ``rows`` / ``values``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import load_yaml

__all__ = ["PaperTable", "PaperTableError", "load_paper_table", "list_paper_tables", "find_project_root"]


class PaperTableError(ValueError):
    """A paper table file is missing or malformed."""


def find_project_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) that holds params.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file():
            return d
    raise PaperTableError(f"no params.yaml found in {here} or any parent; pass root= explicitly")


def _paper_dir(paper: str, root: str | Path | None) -> Path:
    base = Path(root) if root is not None else find_project_root()
    return base / "data" / "paper" / paper


@dataclass
class PaperTable:
    source: str
    caption: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: str = ""
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    claims: list[tuple] = field(default_factory=list)  # (better, worse, column) or (better, worse, column, "abs")

    @property
    def methods(self) -> list[str]:
        return [r["method"] for r in self.rows]

    def row(self, method: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(f"{method!r} not in {self.source}; rows: {self.methods}")

    def value(self, method: str, column: str) -> float | None:
        if column not in self.columns:
            raise KeyError(f"{column!r} not a column of {self.source}; columns: {self.columns}")
        return self.row(method)["values"].get(column)

    def mark(self, method: str, column: str) -> str | None:
        return (self.row(method).get("marks") or {}).get(column)

    def to_frame(self):
        import pandas as pd

        data = [[r["values"].get(c) for c in self.columns] for r in self.rows]
        df = pd.DataFrame(data, index=pd.Index(self.methods, name="method"), columns=self.columns, dtype=float)
        return df


def _check_number(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or (isinstance(v, float) and math.isnan(v)):
        raise PaperTableError(f"{where}: value {v!r} is not a number or null")
    return v


def _parse(doc: Any, path: Path) -> PaperTable:
    if not isinstance(doc, dict):
        raise PaperTableError(f"{path}: expected a mapping at top level")
    for key in ("source", "caption"):
        if not isinstance(doc.get(key), str):
            raise PaperTableError(f"{path}: missing or non-string {key!r}")
    columns = doc.get("columns") or []
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise PaperTableError(f"{path}: 'columns' must be a list of strings")
    if len(set(columns)) != len(columns):
        raise PaperTableError(f"{path}: duplicate column names")
    rows = doc.get("rows") or []
    if not isinstance(rows, list):
        raise PaperTableError(f"{path}: 'rows' must be a list")
    seen = set()
    for i, r in enumerate(rows):
        where = f"{path}: row {i}"
        if not isinstance(r, dict) or not isinstance(r.get("method"), str):
            raise PaperTableError(f"{where}: each row needs a string 'method'")
        where = f"{path}: row {i} ({r['method']!r})"
        if r["method"] in seen:
            raise PaperTableError(f"{where}: duplicate method name")
        seen.add(r["method"])
        values = r.get("values")
        if not isinstance(values, dict):
            raise PaperTableError(f"{where}: 'values' must be a mapping")
        for col, v in values.items():
            if col not in columns:
                raise PaperTableError(f"{where}: unknown column {col!r}; columns: {columns}")
            _check_number(v, f"{where} column {col!r}")
        marks = r.get("marks") or {}
        if not isinstance(marks, dict):
            raise PaperTableError(f"{where}: 'marks' must be a mapping")
        for col in marks:
            if col not in columns:
                raise PaperTableError(f"{where}: mark on unknown column {col!r}")
    known = {"source", "caption", "columns", "rows", "notes", "claims"}
    return PaperTable(source=doc["source"], caption=doc["caption"], columns=list(columns), rows=rows,
                      notes=str(doc.get("notes") or ""), path=path, claims=_parse_claims(doc.get("claims"), path),
                      extra={k: v for k, v in doc.items() if k not in known})


def _parse_claims(raw: Any, path: Path) -> list[tuple]:
    claims = []
    for i, item in enumerate(raw or []):
        ok = isinstance(item, list) and len(item) in (3, 4) and all(isinstance(x, str) for x in item[:2]) \
            and (len(item) == 3 or item[3] == "abs")
        columns = item[2] if ok and isinstance(item[2], list) else ([item[2]] if ok else [])
        if not ok or not columns or not all(isinstance(c, str) for c in columns):
            raise PaperTableError(f"{path}: claims[{i}] must be [better, worse, column or [columns]] (and "
                                  f"optionally abs), got {item!r}")
        claims.extend((item[0], item[1], c, *item[3:]) for c in columns)
    return claims


def load_paper_table(paper: str, artifact: str, root: str | Path | None = None) -> PaperTable:
    """Load ``data/paper/<paper>/<artifact>.yaml`` under the project root (or ``root``)."""
    path = _paper_dir(paper, root) / f"{artifact}.yaml"
    if not path.is_file():
        avail = list_paper_tables(paper, root) if path.parent.is_dir() else []
        raise PaperTableError(f"no table file {path} (paper {paper!r}, artifact {artifact!r}); available: {avail}")
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PaperTableError(f"{path}: invalid YAML: {e}") from e
    return _parse(doc, path)


def list_paper_tables(paper: str, root: str | Path | None = None) -> list[str]:
    """Artifact names (file stems) available for ``paper``, sorted."""
    d = _paper_dir(paper, root)
    if not d.is_dir():
        raise PaperTableError(f"no paper directory {d}")
    return sorted(p.stem for p in d.glob("*.yaml"))
