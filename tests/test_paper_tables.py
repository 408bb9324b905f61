"""The AMSS paper's reported numbers (data/paper/amss/*.yaml) and the loader in mmlib/paper.py."""
from pathlib import Path

import pytest

from mmlib.paper import PaperTable, PaperTableError, list_paper_tables, load_paper_table

ROOT = Path(__file__).resolve().parents[1]
AMSS_TABLES = ["table1", "table2", "table3", "table4", "table5", "table6", "table7", "table8",
               "supplement_table1"]
AMSS_FIGURES = ["fig3", "fig4", "fig5", "figA"]


def test_all_amss_artifacts_listed():
    names = list_paper_tables("amss", root=ROOT)
    for a in AMSS_TABLES + AMSS_FIGURES:
        assert a in names


@pytest.mark.parametrize("artifact", AMSS_TABLES + AMSS_FIGURES)
def test_every_file_loads_and_rows_use_declared_columns(artifact):
    t = load_paper_table("amss", artifact, root=ROOT)
    assert isinstance(t, PaperTable)
    assert t.source and t.caption
    for r in t.rows:
        assert set(r["values"]) <= set(t.columns)
        assert set(r.get("marks") or {}) <= set(t.columns)
        for v in r["values"].values():
            assert v is None or isinstance(v, (int, float))
    df = t.to_frame()
    assert list(df.columns) == t.columns
    assert list(df.index) == t.methods


@pytest.mark.parametrize("artifact", AMSS_TABLES)
def test_tables_have_rows(artifact):
    t = load_paper_table("amss", artifact, root=ROOT)
    assert t.rows and t.columns


@pytest.mark.parametrize("artifact", AMSS_FIGURES)
def test_figures_have_no_values_and_a_note(artifact):
    t = load_paper_table("amss", artifact, root=ROOT)
    assert t.rows == []
    assert t.extra.get("values") == []
    assert t.extra.get("note")


@pytest.mark.parametrize("artifact,method,column,expected", [
    ("table1", "v1=0.2", "global/v2=1.0", 66.13),
    ("table1", "rho1=0.2", "element/rho2=1.0", 68.96),
    ("table1", "rho1=1.0", "element/rho2=0.2", 59.72),
    ("table2", "OGM-GE", "KS/acc", 66.06),
    ("table2", "AMSS+", "KS/map", 79.13),
    ("table2", "Video/Image", "Twitter-15/macf1", 43.33),
    ("table2", "OGR-GB", "KS/acc", 67.10),
    ("table3", "AMSS+", "scratch/macf1", 84.94),
    ("table3", "Depth", "pretrain/acc", 81.54),
    ("table4", "MBT", "CREMA-D/pretrain/map", 87.44),
    ("table4", "PMR", "KS/scratch/acc", 58.06),
    ("table5", "ML-LSTM‡", "KS/acc", 70.70),
    ("table5", "Weight†", "CREMA-D/map", 77.22),
    ("table6", "Random", "Twitter-15/acc", 74.35),
    ("table6", "AMSS+", "CREMA-D/acc", 70.16),
    ("table7", "w/ Backbone Mask+", "KS/map", 76.13),
    ("table8", "tau=0.20", "acc", 72.52),
    ("table8", "tau=4.00", "mean_rho1", 0.4404),
    ("supplement_table1", "PMR", "Kinetics-Sound/overhead_min", 349.32),
    ("supplement_table1", "AMSS+", "NvGesture/acc", 84.64),
])
def test_spot_values(artifact, method, column, expected):
    assert load_paper_table("amss", artifact, root=ROOT).value(method, column) == pytest.approx(expected)


def test_nulls_and_marks():
    t2 = load_paper_table("amss", "table2", root=ROOT)
    assert t2.value("Channel", "Sarcasm/acc") is None
    assert t2.mark("MSLR", "Sarcasm/acc") == "underline"
    t4 = load_paper_table("amss", "table4", root=ROOT)
    assert t4.mark("MSES", "CREMA-D/pretrain/acc") == "down"
    assert t4.mark("OGM-GE", "KS/scratch/acc") == "psi"
    # every marked Table 4 cell is below the MBT baseline
    base = t4.row("MBT")["values"]
    for r in t4.rows:
        for c in r.get("marks") or {}:
            assert r["values"][c] < base[c]
    st = load_paper_table("amss", "supplement_table1", root=ROOT)
    assert st.value("PMR", "NvGesture/acc") is None
    assert st.mark("Naive", "CREMA-D/overhead_min") == "bold"


def test_table8_ratios_sum_to_one():
    t8 = load_paper_table("amss", "table8", root=ROOT)
    assert len(t8.rows) == 13
    for r in t8.rows:
        assert r["values"]["mean_rho1"] + r["values"]["mean_rho2"] == pytest.approx(1.0, abs=1e-4)


def test_table5_plain_rows_match_table2():
    t2 = load_paper_table("amss", "table2", root=ROOT).to_frame()
    t5 = load_paper_table("amss", "table5", root=ROOT).to_frame()
    for m in ["Affine", "Channel", "ML-LSTM", "Sum", "Weight"]:
        assert t5.loc[m].equals(t2.loc[m])


def test_unknown_method_or_column_raises():
    t = load_paper_table("amss", "table2", root=ROOT)
    with pytest.raises(KeyError):
        t.value("NoSuchMethod", "KS/acc")
    with pytest.raises(KeyError):
        t.value("AMSS", "KS/f1")


# --- malformed files -------------------------------------------------------------------------------

def _write(tmp_path, text, artifact="t"):
    d = tmp_path / "data" / "paper" / "fake"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{artifact}.yaml").write_text(text, encoding="utf-8")
    return tmp_path


GOOD = """source: "Fake, Table 1"
caption: "x"
columns: ["a", "b"]
rows:
  - {method: "M1", values: {"a": 1.5, "b": null}, marks: {"a": "psi"}}
  - {method: "M2", values: {"a": 2}}
notes: ""
"""


def test_good_tmp_file_and_root_discovery(tmp_path, monkeypatch):
    root = _write(tmp_path, GOOD)
    t = load_paper_table("fake", "t", root=root)
    assert t.value("M1", "a") == 1.5 and t.value("M1", "b") is None and t.value("M2", "b") is None
    assert list_paper_tables("fake", root=root) == ["t"]
    df = t.to_frame()
    assert df.shape == (2, 2) and df.loc["M2", "a"] == 2
    (tmp_path / "params.yaml").write_text("base: {}\n")
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert load_paper_table("fake", "t").value("M1", "a") == 1.5


def test_missing_file(tmp_path):
    root = _write(tmp_path, GOOD)
    with pytest.raises(PaperTableError, match="no table file"):
        load_paper_table("fake", "nope", root=root)
    with pytest.raises(PaperTableError):
        load_paper_table("otherpaper", "t", root=root)


def test_unknown_column_in_row(tmp_path):
    root = _write(tmp_path, GOOD.replace('"b": null', '"c": null'))
    with pytest.raises(PaperTableError, match="unknown column 'c'"):
        load_paper_table("fake", "t", root=root)


@pytest.mark.parametrize("bad", ['"66.06"', "true", "[1, 2]", "x"])
def test_non_numeric_value(tmp_path, bad):
    root = _write(tmp_path, GOOD.replace('"a": 2}', f'"a": {bad}}}'))
    with pytest.raises(PaperTableError, match="not a number or null"):
        load_paper_table("fake", "t", root=root)


def test_other_malformations(tmp_path):
    root = _write(tmp_path, "- just a list\n")
    with pytest.raises(PaperTableError, match="mapping"):
        load_paper_table("fake", "t", root=root)
    root = _write(tmp_path, GOOD.replace('method: "M2"', 'method: "M1"'))
    with pytest.raises(PaperTableError, match="duplicate"):
        load_paper_table("fake", "t", root=root)
    root = _write(tmp_path, GOOD.replace('source: "Fake, Table 1"\n', ""))
    with pytest.raises(PaperTableError, match="source"):
        load_paper_table("fake", "t", root=root)
    root = _write(tmp_path, "source: [unclosed\n")
    with pytest.raises(PaperTableError, match="invalid YAML"):
        load_paper_table("fake", "t", root=root)


@pytest.mark.parametrize("path", sorted((ROOT / "data" / "paper").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_paper_file_of_every_paper_loads(path):
    """Each paper's numbers load, use their declared columns, and their claims name rows or columns of a table."""
    t = load_paper_table(path.parent.name, path.stem, root=ROOT)
    assert t.source and t.caption
    for r in t.rows:
        assert set(r["values"]) <= set(t.columns) and set(r.get("std") or {}) <= set(r["values"])
    for better, worse, column, *kind in t.claims:
        assert kind in ([], ["abs"]) and better != worse and column


def test_magnitude_claims_parse(tmp_path):
    d = tmp_path / "data" / "paper" / "x"
    d.mkdir(parents=True)
    (tmp_path / "params.yaml").write_text("{}")
    (d / "f.yaml").write_text("source: s\ncaption: c\ncolumns: [A]\nrows: []\n"
                              "claims:\n- [a, b, [A, B], abs]\n- [a, b, A]\n")
    assert load_paper_table("x", "f", root=tmp_path).claims == [("a", "b", "A", "abs"), ("a", "b", "B", "abs"),
                                                                 ("a", "b", "A")]
    (d / "f.yaml").write_text("source: s\ncaption: c\ncolumns: [A]\nrows: []\nclaims:\n- [a, b, A, sign]\n")
    with pytest.raises(PaperTableError, match=r"claims\[0\] must be"):
        load_paper_table("x", "f", root=tmp_path)
