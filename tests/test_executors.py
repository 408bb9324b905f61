"""Executors of a sweep (mmlib.executors): local processes bound to GPUs, submitit job arrays."""
from __future__ import annotations

import operator
import os

import pytest

from mmlib import executors
from mmlib.executors import ExecutorConfig


def test_config_checks_name_and_sizes():
    assert ExecutorConfig().name == "local"
    with pytest.raises(ValueError, match="executor.name must be one of local, slurm, submitit_local"):
        ExecutorConfig(name="ray2")
    with pytest.raises(ValueError, match="executor.cpus_per_job must be >= 1"):
        ExecutorConfig(cpus_per_job=0)


def test_local_workers_default_to_one_per_gpu():
    assert executors.local_workers(ExecutorConfig(), []) == 1
    assert executors.local_workers(ExecutorConfig(), ["0", "1", "2", "3"]) == 4
    assert executors.local_workers(ExecutorConfig(workers=2), ["0", "1", "2", "3"]) == 2


def test_run_local_binds_each_worker_to_one_gpu():
    seen = []
    results = executors.run_local(os.getenv, [("CUDA_VISIBLE_DEVICES",)] * 4, workers=2, gpus=["3", "5"],
                                  on_done=seen.append)
    assert len(results) == 4 and set(results) <= {"3", "5"} and sorted(seen) == sorted(results)
    assert executors.run_local(operator.add, [(1, 2), (3, 4)], workers=1) == [3, 7]  # in this process, in order


def test_submitit_local_runs_a_job_array(tmp_path):
    jobs = executors.submit(operator.add, [(1, 2), (3, 4), (5, 6)], ExecutorConfig(name="submitit_local"), tmp_path)
    done = []
    assert sorted(executors.wait(jobs, done.append, poll_s=0.2)) == [3, 7, 11] and len(done) == 3
    assert any(tmp_path.rglob("*_log.out"))  # job folders and logs under the given folder
    failing = executors.submit(operator.truediv, [(1, 0)], ExecutorConfig(name="submitit_local"), tmp_path)
    with pytest.raises(RuntimeError, match=r"job .* failed \(logs: "):
        executors.wait(failing, poll_s=0.2)


def test_executor_block_of_params_a_profile_and_the_command_line(tmp_path):
    from mmlib.config import load_params

    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        "profile: ci\nbase: {}\nexecutor: {name: local, workers: 0, partition: ''}\n"
        "profiles:\n  ci: {executor: {name: slurm, partition: gpu}}\n  demo: {}\n  full: {}\n")
    assert executors.executor_config(load_params("demo", params_file)) == ExecutorConfig()
    ci = executors.executor_config(load_params("ci", params_file))
    assert (ci.name, ci.partition, ci.workers) == ("slurm", "gpu", 0)  # the profile's block merged over the file's
    flags = executors.executor_config(load_params("ci", params_file), partition="a100", workers=None)
    assert flags.partition == "a100" and flags.name == "slurm"  # a flag not given (None) keeps the block's value
    with pytest.raises(KeyError, match="executor.gpus: unknown key"):
        executors.executor_config({"executor": {"gpus": 2}})
    with pytest.raises(TypeError, match="executor.workers: expected an integer"):
        executors.executor_config({}, workers="many")
