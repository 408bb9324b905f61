"""Sweeps past one machine: a grid through submitit gives the local records; `python -m mmlib sweep`."""
from __future__ import annotations

import pytest

from mmlib import executors, experiments, tables
from mmlib.__main__ import main
from mmlib.config import load_params, stable_hash
from mmlib.executors import ExecutorConfig


def _grid(root, make_config) -> list:
    """Two one-epoch runs on the tiny CREMA-D layout, the first asked for twice."""
    cfgs = [make_config(root, **{"train.epochs": 1, "train.threads": 1, "train.seed": seed,
                                 "balancer.name": name}) for seed, name in ((0, "naive"), (1, "ogm_ge"))]
    return cfgs + [cfgs[0]]


def test_submitit_local_sweep_gives_the_local_records_in_order(prepared_layout, make_config, tmp_path):
    cfgs = _grid(prepared_layout, make_config)
    local = experiments.sweep(cfgs, root=tmp_path / "local")
    submitted = experiments.sweep(cfgs, root=tmp_path / "jobs",
                                  executor=ExecutorConfig(name="submitit_local"))
    assert [r.hash for r in submitted] == [r.hash for r in local] and local[2].hash == local[0].hash
    assert len({r.hash for r in local}) == 2
    for a, b in zip(local, submitted):
        assert a.final == b.final and a.best_epoch == b.best_epoch
    assert any((tmp_path / "jobs" / "jobs").rglob("*_log.out"))  # job logs under <run store>/jobs

    jobs = experiments.sweep(cfgs, root=tmp_path / "later", executor=ExecutorConfig(name="submitit_local"),
                             wait=False)  # submit and return: one job per run to train
    assert len(jobs) == 2
    executors.wait(jobs, poll_s=0.5)
    later = experiments.sweep(cfgs, root=tmp_path / "later")  # every record there: nothing trains again
    assert [(r.hash, r.final) for r in later] == [(r.hash, r.final) for r in local]


def test_sweep_help_lists_the_executors(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    listed = out[out.index("executors ("):].splitlines()
    for name in executors.EXECUTORS:  # one line each
        assert sum(line.strip().startswith(name + " ") for line in listed) == 1, name
    assert "--wait" in out and "--section" in out


@pytest.mark.parametrize("argv, message", [
    (["--section", "amss_02_table2", "--executor", "ray"], "executor.name must be one of local, slurm, "
                                                           "submitit_local, got 'ray'"),
    (["--section", "no_such_table"], "params.yaml has no paper table section 'no_such_table'"),
    (["--section", "00_quickstart"], "params.yaml has no paper table section '00_quickstart'"),
])
def test_sweep_input_errors_are_one_line(argv, message, capsys):
    assert main(["sweep", "--profile", "ci", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.strip().count("\n") == 0


def test_sweep_submits_every_run_of_a_section(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path))
    calls = []

    def fake_sweep(cfgs, **kwargs):
        calls.append((cfgs, kwargs))
        return ["job"] * (len(cfgs) - 2) if not kwargs["wait"] else [object()] * (len(cfgs) - 1) + [None]

    monkeypatch.setattr(experiments, "sweep", fake_sweep)
    assert main(["sweep", "--profile", "ci", "--section", "amss_02_table2", "--executor", "slurm",
                 "--partition", "gpu", "--gpus-per-job", "2", "--timeout-min", "90"]) == 0
    cfgs, kwargs = calls[-1]
    assert kwargs["executor"] == ExecutorConfig(name="slurm", partition="gpu", gpus_per_job=2, timeout_min=90)
    assert kwargs["wait"] is False and kwargs["skip_diverged"] is True
    out = capsys.readouterr().out
    assert f"submitted {len(cfgs) - 2} runs to slurm (of the section's {len(cfgs)}," in out
    assert f"job logs under {tmp_path / 'jobs'}" in out

    params = load_params("ci")
    cells = tables.table_cells(params, "amss_02_table2")
    seeds = tables.section_seeds(params, "amss_02_table2")
    wanted = {stable_hash(c.to_dict())
              for cs in tables.section_configs(params, "amss_02_table2", cells).values() for c in cs}
    calibration = {stable_hash(c.to_dict()) for s in ("crema_d", "ks", "sarcasm", "twitter15")
                   for cs in tables.calibration_configs(params, s, seeds).values() for c in cs}
    hashes = [stable_hash(c.to_dict()) for c in cfgs]
    assert len(hashes) == len(set(hashes)) and set(hashes) == wanted | calibration
    assert calibration & wanted  # the naive baselines are the Concat cells: asked for once

    assert main(["sweep", "--profile", "ci", "--section", "amss_02_table2", "--wait", "--workers", "3"]) == 0
    cfgs, kwargs = calls[-1]
    assert kwargs["executor"] == ExecutorConfig(workers=3) and kwargs["wait"] is True
    assert f"{len(cfgs)} runs in the run store {tmp_path} (1 diverged" in capsys.readouterr().out


def test_notebook_sweeps_train_where_the_params_executor_says(monkeypatch):
    calls = []

    class Stop(Exception):
        pass

    def fake_sweep(cfgs, **kwargs):
        calls.append(kwargs)
        if kwargs["desc"].startswith("calibration"):
            raise Stop
        return [object()] * len(cfgs)

    monkeypatch.setattr(tables, "sweep", fake_sweep)
    params = load_params("ci")
    cells = tables.table_cells(params, "amss_07_table7")
    tables.run_cells(params, "amss_07_table7", cells)
    assert calls[-1]["executor"] == ExecutorConfig()
    assert calls[-1]["workers"] == params["replication"]["workers"]
    params["executor"] = {"name": "submitit_local", "timeout_min": 30}
    runs = tables.run_cells(params, "amss_07_table7", cells)
    assert calls[-1]["executor"] == ExecutorConfig(name="submitit_local", timeout_min=30)
    assert "wait" not in calls[-1]  # sweep's default: it waits and returns the records
    assert all(None not in recs for recs in runs.values())
    with pytest.raises(Stop):
        tables.calibration(params, ["ks"], [0])
    assert calls[-1]["executor"].name == "submitit_local"
