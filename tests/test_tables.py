"""Paper tables as grids of runs (mmlib.tables), parallel sweeps, encoder pre-training, significance logging."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mmlib import experiments, report, tables
from mmlib.config import load_params
from mmlib.experiments import RunRecord
from mmlib.paper import PaperTable

PAPER = PaperTable(source="Test paper, Table 9", caption="", columns=["A/acc", "A/map", "B/acc"], rows=[
    {"method": "base", "values": {"A/acc": 60.0, "A/map": 70.0, "B/acc": 50.0}},
    {"method": "ours", "values": {"A/acc": 65.0, "A/map": 72.0, "B/acc": None}},
    {"method": "later", "values": {"A/acc": 61.0, "A/map": None, "B/acc": None}},
])


def section(**extra):
    return {"paper": "test/table9", "columns": {"A": "setup_a", "B": {"setup": "setup_b", "set": {"train.epochs": 3}}},
            "rows": {"base": {"balancer": "naive"},
                     "ours": {"balancer": "amss", "params": {"tau": 0.5}, "set": {"model.fusion": {"name": "sum"}}},
                     "later": {"pending": "lands later"}}, **extra}


def test_cells_follow_the_paper_and_merge_row_and_column_specs():
    params = {"t": section(), "root": "."}
    cells = tables.table_cells(params, "t", PAPER)
    assert set(cells) == {("base", "A/acc"), ("base", "A/map"), ("base", "B/acc"), ("ours", "A/acc"),
                          ("ours", "A/map"), ("later", "A/acc")}  # only where the paper prints a number
    c = cells[("ours", "A/map")]
    assert (c.setup, c.balancer, c.params, c.metric) == ("setup_a", "amss", {"tau": 0.5}, "map")
    assert c.overrides == {"model.fusion": {"name": "sum"}}
    assert cells[("base", "B/acc")].overrides == {"train.epochs": 3} and cells[("later", "A/acc")].pending


def test_bad_specs_fail_with_the_cell_named():
    with pytest.raises(KeyError, match="unknown metric 'speed'"):
        tables.make_cell(section(), "base", "A/speed")
    with pytest.raises(KeyError, match="neither it nor 'C'"):
        tables.make_cell(section(), "base", "C/acc")
    bad = section()
    bad["rows"]["base"]["typo"] = 1
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['typo'\]"):
        tables.make_cell(bad, "base", "A/acc")


def test_cell_config_layers_setup_section_and_cell():
    params = load_params("ci")
    cell = tables.Cell(setup="sarcasm", balancer="amss", params={"scope": "backbone"}, overrides={"train.epochs": 5})
    cfg = tables.cell_config(params, cell, seed=2, section="amss_07_table7")
    assert cfg.data.modalities == params["setups"]["sarcasm"]["experiment"]["data"]["modalities"]
    assert cfg.balancer.params == {"tau": 0.5, "scope": "backbone"}  # the setup's paper default, then the cell's
    assert (cfg.train.epochs, cfg.train.seed, cfg.train.threads) == (5, 2, 1)
    uni = tables.cell_config(params, tables.Cell(setup="ks", balancer="unimodal", params={"modality": 1}), 0)
    assert uni.balancer.params == {"modality": "visual"}  # an index means the setup's i-th modality
    with pytest.raises(KeyError, match="unknown setup 'nope'"):
        tables.cell_config(params, tables.Cell(setup="nope"), 0)


@pytest.mark.parametrize("profile", ["ci", "demo", "full"])
def test_every_paper_section_resolves_and_shares_baselines(profile):
    """Every cell of every paper's table builds a valid configuration whose data lies under the profile's data
    stage output of that paper (``<paper>_data``; DGL's Kinetics-Sounds is AMSS's), and a baseline is one run
    across tables."""
    params = load_params(profile)
    hashes = {}
    sections = [k for k in params if k.startswith(("amss_", "greedy_", "dgl_")) and "cells" not in k]
    for name in [k for k in sections if "rows" in params[k]]:
        cells = tables.table_cells(params, name)
        assert cells, name
        configs = {k: tables.cell_config(params, c, 0, name, m) for k, c in cells.items()
                   if not c.pending and not c.best_of for m in tables.members(c)}
        embedded = Path(params["root"]) / "data" / "embedded" / profile
        allowed = {str(embedded / name.split("_")[0]), str(embedded / "amss")}
        assert all(str(Path(c.data.root).parent) in allowed for c in configs.values()), name
        hashes[name] = {k: c.config_hash() for k, c in configs.items()}
    assert hashes["amss_02_table2"][("Concat", "KS/acc")] == hashes["amss_06_table6"][("Baseline", "KS/acc")] \
        == hashes["amss_09_fig4"][("Baseline", "KS")]
    assert hashes["amss_02_table2"][("AMSS+", "Sarcasm/acc")] == hashes["amss_07_table7"][("AMSS+", "Sarcasm/acc")]
    assert hashes["amss_02_table2"][("Greedy", "KS/acc")] != hashes["amss_02_table2"][("Concat", "KS/acc")]
    assert ("Greedy", "Sarcasm/acc") not in hashes["amss_02_table2"]  # MMTM needs CNN streams: '-' in the paper
    dgl1, dgl3, dgl4, cross = (hashes[s] for s in ("dgl_01_table1", "dgl_03_table3", "dgl_04_table4",
                                                    "dgl_08_cross_paper"))
    assert dgl1[("Concat", "CREMA-D/multi")] == dgl1[("Concat", "CREMA-D/audio")] == dgl3[("Baseline", "CREMA-D/acc")]
    assert dgl1[("DGL", "CREMA-D/multi")] == dgl3[("DGL (MT+UT)", "CREMA-D/acc")] == dgl4[("alpha=4", "DGL/acc")]
    assert dgl1[("G-Blending", "CREMA-D/multi")] == dgl4[("alpha=4", "G-Blending/acc")] \
        == cross[("G-Blending", "CREMA-D")]
    assert dgl1[("Concat", "KS/multi")] == hashes["amss_02_table2"][("Concat", "KS/acc")] == cross[("Concat", "KS")]
    assert cross[("AMSS+", "KS")] == hashes["amss_02_table2"][("AMSS+", "KS/acc")]
    assert cross[("Greedy", "KS")] == hashes["amss_02_table2"][("Greedy", "KS/acc")]


def fake_record(acc: float, seed: int, rho=(0.3, 0.7), seconds=60.0) -> RunRecord:
    test = {"acc": acc, "map": acc + 0.05, "f1": acc - 0.05, "unimodal": {}}
    return RunRecord(config={"data": {"modalities": ["audio", "visual"], "dataset": "synth_av"},
                             "train": {"epochs": 4}, "balancer": {"name": "amss"}},
                     hash=f"h{seed}{acc}", final={"val": test, "test": test}, best_epoch=0, select_on="val",
                     history=[], steps={"rho_audio": [rho[0]] * 3, "rho_visual": [rho[1]] * 3}, data={},
                     device="cpu", precision="fp32", train_seconds=seconds)


def test_compare_reports_ours_beside_the_papers_and_finds_gaps():
    params = {"t": section(), "root": "."}
    cells = tables.table_cells(params, "t", PAPER)
    runs = {k: [fake_record(0.5 + 0.1 * (k[0] == "ours"), s) for s in (0, 1)] for k, c in cells.items()
            if not c.pending}
    runs[("base", "A/acc")] = [fake_record(0.50, 0), fake_record(0.54, 1)]
    wide, long, results = tables.compare(cells, runs, PAPER)
    base = results["base"]["A/acc"]
    assert base["mean"] == pytest.approx(52.0) and base["paper"] == 60.0 and base["seeds"] == 2
    assert base["std"] == pytest.approx(2.828, abs=1e-3) and base["values"] == pytest.approx([50.0, 54.0])
    assert results["ours"]["A/map"]["mean"] == pytest.approx(65.0) and results["base"]["B/acc"]["mean"] == 50.0
    assert results["later"]["A/acc"]["mean"] is None and results["later"]["A/acc"]["pending"] == "lands later"
    assert wide.loc["base", "A/acc"] == "52.0 ± 2.8 (60)" and wide.loc["later", "A/acc"].startswith("pending")
    assert len(long) == len(cells) and set(long.columns) >= {"cell", "ours_mean", "ours_std", "paper", "seeds"}
    assert tables.missing_entries(results, PAPER) == []
    broken = copy.deepcopy(results)
    del broken["ours"]["A/map"]
    broken["base"]["B/acc"]["paper"] = None
    assert sorted(tables.missing_entries(broken, PAPER)) == ["base / B/acc: no paper value",
                                                             "ours / A/map: no value of ours"]
    order = tables.ordering(results, PAPER)
    assert order.loc["A/acc", "paper best"] == "ours" and order.loc["A/acc", "ours best"] == "ours"
    claims = tables.claims(results, [("ours", "base", "A/acc"), ("base", "ours", "A/map")])
    assert claims["holds in ours"].tolist() == [True, False]
    # ours 60 ± 0 vs base 52 ± 2.83 over 2 seeds each: gap 8 over a standard error of sqrt(2.83² / 2) = 2
    assert claims["gap / s.e."].iloc[0] == pytest.approx(4.0, abs=0.05)
    assert claims["clearly (> 2 s.e.)"].tolist() == [True, False]
    single = copy.deepcopy(results)
    single["ours"]["A/acc"]["seeds"] = 1  # one seed: no spread, so no claim is clear
    assert tables.claims(single, [("ours", "base", "A/acc")])["clearly (> 2 s.e.)"].tolist() == [None]
    assert tables.claims_summary(claims) == ("1/2 of the paper's claims hold in ours (1 clearly, by more than 2 "
                                             "standard errors over seeds): not base > ours (A/map).")
    assert tables.claims_counts(claims) == {"measured": 2, "holding": 1, "clearly": 1}
    with pytest.raises(KeyError, match=r"\['nobody'\] not in the table"):
        tables.claims(results, [("nobody", "base", "A/acc")])
    signed = copy.deepcopy(results)
    signed["base"]["A/acc"].update(mean=-70.0)  # |-70| > |60|: the magnitude claim holds, the signed one does not
    both = tables.claims(signed, [("base", "ours", "A/acc", "abs"), ("base", "ours", "A/acc")])
    assert both.index.tolist() == ["|base| > |ours| (A/acc)", "base > ours (A/acc)"]
    assert both["holds in ours"].tolist() == [True, False]


def test_comparison_figure_draws_one_panel_per_column_of_ours():
    """Panels are the table's columns holding ours (never a count or a spread), each in its metric's unit, the
    paper's values drawn beside ours."""
    import matplotlib
    matplotlib.use("Agg")
    from mmlib import report

    params = {"t": section(), "root": "."}
    cells = tables.table_cells(params, "t", PAPER)
    runs = {k: [fake_record(0.6, s) for s in (0, 1, 2)] for k, c in cells.items() if not c.pending}
    _, _, results = tables.compare(cells, runs, PAPER)
    fig = report.comparison_figure(results, "Ours: test data (embedded data) · profile ci")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == tables.ours_columns(results) == ["A/acc", "A/map", "B/acc"]
    assert [ax.get_xlabel() for ax in panels] == ["test accuracy (%)", "test mAP (%)", "test accuracy (%)"]
    paper_points = [line for line in panels[0].get_lines() if line.get_marker() == "D"]
    assert len(paper_points) == 1 and list(paper_points[0].get_xdata()[:2]) == [60.0, 65.0]
    assert "embedded data" in fig.get_suptitle()


def test_distribution_figure_draws_each_population_with_its_mean_and_the_papers():
    import matplotlib
    matplotlib.use("Agg")
    from mmlib import report

    results = {"distinct": {"D/d_util": {"values": [0.2, 0.4, 0.3, 0.5], "metric": "d_util", "paper": 0.3}},
               "duplicated": {"D/d_util": {"values": [-0.1, 0.1, 0.05, -0.05], "metric": "d_util", "paper": None}}}
    fig = report.distribution_figure(results, {"D": {"distinct": ("distinct", "D/d_util"),
                                                     "duplicated": ("duplicated", "D/d_util")}}, "Ours: embedded")
    ax = fig.axes[0]
    assert ax.get_title() == "D" and ax.get_xlabel() == report.METRIC_LABELS["d_util"]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["distinct: mean +0.35 (4 models)", "distinct: paper ≈ +0.3", "duplicated: mean +0.00 (4 models)"]
    dashed = sorted(round(float(line.get_xdata()[0]), 3) for line in ax.get_lines() if line.get_linestyle() == "--")
    assert dashed == [0.0, 0.0, 0.35]  # zero and each mean
    assert report.metric_label("inside:audio") == "test accuracy of audio inside the model (%)"


def test_run_metrics():
    rec = fake_record(0.75, 0, rho=(0.2, 0.8), seconds=90.0)
    assert tables.METRICS["acc"](rec) == pytest.approx(75.0)
    assert tables.METRICS["macf1"](rec) == pytest.approx(70.0)
    assert tables.METRICS["mean_rho1"](rec) == pytest.approx(0.2) and tables.METRICS["mean_rho2"](rec) == pytest.approx(0.8)
    assert tables.METRICS["overhead_min"](rec) == pytest.approx(1.5) and tables.METRICS["epoch_s"](rec) == 22.5
    with pytest.raises(KeyError, match="logged no rho_audio"):
        tables.METRICS["mean_rho1"](RunRecord(**{**rec.__dict__, "steps": {}}))


def test_sweep_members_best_of_rows_and_inside_metrics():
    """A sweep gives one model per member and seed (log-uniform draws fixed by their seed); a best-of row takes the
    best candidate per column; inside:<modality> reads the modality's accuracy inside the model."""
    spec = {"log_uniform": [1e-5, 1.0], "count": 5, "seed": 3}
    lrs = tables.sweep_values("optim.lr", spec)
    assert lrs == tables.sweep_values("optim.lr", spec) and lrs == sorted(lrs) and len(set(lrs)) == 5
    assert all(1e-5 <= v <= 1.0 for v in lrs) and tables.sweep_values("x", [1, 2]) == [1, 2]
    assert tables.sweep_values("x", {"log_space": [1e-3, 1.0], "count": 4}) == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(ValueError, match="sweep optim.lr: log_uniform needs 0 < lo < hi"):
        tables.sweep_values("optim.lr", {"log_uniform": [1.0, 0.1], "count": 2})
    cell = tables.Cell(setup="s", sweep={"optim.lr": [0.1, 0.01], "train.batch_size": [8, 16]})
    assert tables.members(cell) == [{"optim.lr": 0.1, "train.batch_size": 8}, {"optim.lr": 0.1, "train.batch_size": 16},
                                    {"optim.lr": 0.01, "train.batch_size": 8}, {"optim.lr": 0.01, "train.batch_size": 16}]
    assert tables.members(tables.Cell(setup="s")) == [{}]

    paper = PaperTable(source="Test", caption="", columns=["A/acc"], rows=[
        {"method": "best", "values": {"A/acc": 70.0}}, {"method": "joint", "values": {"A/acc": 72.0}}])
    sec = {"paper": "test/t", "columns": {"A": {"setup": "setup_a", "sweep": {"optim.lr": [0.1, 0.01]}}},
           "rows": {"best": {"best_of": ["m0", "m1"]}, "m0": {"balancer": "unimodal", "params": {"modality": 0}},
                    "m1": {"balancer": "unimodal", "params": {"modality": 1}}, "joint": {}}}
    cells = tables.table_cells({"t": sec, "root": "."}, "t", paper)
    assert set(cells) == {("best", "A/acc"), ("m0", "A/acc"), ("m1", "A/acc"), ("joint", "A/acc")}
    assert cells[("m0", "A/acc")].sweep == {"optim.lr": [0.1, 0.01]}
    runs = {("m0", "A/acc"): [fake_record(0.6, 0), fake_record(0.62, 1)],
            ("m1", "A/acc"): [fake_record(0.8, 0), fake_record(0.7, 1)],
            ("joint", "A/acc"): [fake_record(0.9, 0), fake_record(0.9, 1)]}
    wide, long, results = tables.compare(cells, runs, paper)
    assert results["best"]["A/acc"]["chosen"] == "m1" and results["best"]["A/acc"]["mean"] == pytest.approx(75.0)
    assert wide.loc["best", "A/acc"] == "75.0 ± 7.1 [m1] (70)"
    assert long.set_index("cell").loc["best | A/acc", "note"] == "best of m0, m1: m1"
    with pytest.raises(KeyError, match=r"best_of names rows \['m2'\]"):
        tables.make_cell({**sec, "rows": {"best": {"best_of": ["m2"]}}}, "best", "A/acc")

    rec = fake_record(0.75, 0)
    rec.config["train"]["protocols"] = ["zero_feature"]
    rec.final["test"]["unimodal"] = {"zero_feature": {"audio": {"acc": 0.4}, "visual": {"acc": 0.3}}}
    assert tables.metric_function("inside:visual")(rec) == pytest.approx(30.0)
    with pytest.raises(KeyError, match="unknown metric 'inside:'"):
        tables.metric_function("inside:")


def test_parallel_sweep_equals_sequential_runs(make_config, prepared_layout, tmp_path):
    cfgs = [make_config(prepared_layout, **{"train.epochs": 1, "train.threads": 1, "train.seed": s}) for s in (0, 1)]
    parallel = experiments.sweep(cfgs, root=tmp_path / "parallel", workers=2)
    sequential = experiments.sweep(cfgs, root=tmp_path / "sequential", workers=1)
    assert [r.final for r in parallel] == [r.final for r in sequential]
    assert parallel[0].final != parallel[1].final  # the seeds differ


def test_grid_keeps_labels_and_seeds_in_order(make_config, prepared_layout, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path))
    base = make_config(prepared_layout, **{"train.epochs": 1, "train.threads": 1}).to_dict()
    params = {"base": base, "quick": {}}
    methods = {"naive": {"name": "naive"}, "audio only": {"name": "unimodal", "params": {"modality": "audio"}}}
    runs = experiments.grid(params, "quick", methods, [1, 0], workers=2)
    assert list(runs) == ["naive", "audio only"]
    for label, recs in runs.items():
        assert [r.config["train"]["seed"] for r in recs] == [1, 0]
        assert {r.config["balancer"]["name"] for r in recs} == {methods[label]["name"]}
    with pytest.raises(KeyError, match="unknown key"):
        experiments.grid(params, "quick", {"x": {"name": "naive", "alpha": 1}}, [0])


def test_threads_are_hashed_and_restored(make_config, prepared_layout, tmp_path):
    cfg = make_config(prepared_layout, **{"train.epochs": 1, "train.threads": 1})
    assert cfg.config_hash() != cfg.replace(**{"train.threads": 2}).config_hash()
    before = torch.get_num_threads()
    experiments.run(cfg, root=tmp_path)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="train.threads must be >= 0"):
        with experiments.cpu_threads(-1):
            pass


def test_pretrain_starts_encoders_from_unimodal_runs(make_config, prepared_layout, tmp_path):
    cfg = make_config(prepared_layout, **{"train.epochs": 1, "model.pretrain": {"epochs": 1}})
    subs = experiments.pretrain_configs(cfg, ["audio", "visual"])
    assert {m: s.balancer.params for m, s in subs.items()} == {"audio": {"modality": "audio"},
                                                              "visual": {"modality": "visual"}}
    assert all(s.model.pretrain == {} and s.train.epochs == 1 for s in subs.values())
    dataset, cache = experiments.load_cache(cfg)
    model, _ = experiments.build(cfg, cache, dataset)
    experiments.load_pretrained_encoders(model, cfg, tmp_path)
    state = torch.load(tmp_path / experiments.run_hash(subs["visual"]) / "checkpoint.pt", weights_only=True)["best"]["state"]
    for name, p in model.encoders["visual"].state_dict().items():
        assert torch.equal(p, state[f"encoders.visual.{name}"]), name
    rec = experiments.run(cfg, root=tmp_path)
    assert rec.final["test"]["acc"] >= 0
    with pytest.raises(ValueError, match=r"model.pretrain must be \{epochs: N\}"):
        experiments.pretrain_configs(cfg.replace(**{"model.pretrain": {"epoch": 2}}), ["audio"])


def test_evaluation_logs_modal_significance(make_config, prepared_layout, tmp_path):
    rec = experiments.run(make_config(prepared_layout, **{"train.epochs": 1}), root=tmp_path)
    sig = rec.history[0]["test"]["significance"]
    assert sig["protocol"] == "zero_feature" and set(sig) == {"protocol", "audio", "visual"}
    assert all(isinstance(sig[m], float) for m in ("audio", "visual"))


def test_cli_prepare_setup(tmp_path, monkeypatch, capsys):
    from mmlib.__main__ import main
    assert main(["prepare", "--profile", "ci"]) == 2
    assert "needs --dataset and --root, or --setup" in capsys.readouterr().err


def test_epoch_curve_averages_each_epochs_step_norms():
    record = fake_record(0.5, 0)
    record.history = [{"epoch": 0}, {"epoch": 1}]
    record.steps = {"grad_sq/audio": [1.0, 4.0, 9.0, 16.0, 25.0, 36.0]}  # squared norms, three steps an epoch
    x, y = report.epoch_curve(record, "grad_sq/audio")
    assert list(x) == [1, 2] and list(y) == [2.0, 5.0]  # the epoch means of the norms 1..6
    with pytest.raises(KeyError, match="train.gradient_norms"):
        report.epoch_curve(record, "grad_sq/visual")
