"""Locks across processes (mmlib.locks): one run trained once, one data root generated once, and a lock of a killed
process released at once.

The concurrency tests hold a lock in this process while a second process (``python -m mmlib``) asks for it, so the
order is fixed, not left to timing: the second one waits, then finds the work this process did.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY_GENERATOR, tiny_config
from mmlib import experiments, locks
from mmlib.config import experiment_config, load_params, parse_set
from mmlib.data.synth_av import SynthAV

ROOT = Path(__file__).resolve().parents[1]


def spawn(*args: str, results: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMLIB_RESULTS": str(results)}
    return subprocess.Popen([sys.executable, "-m", "mmlib", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def wait_for_line(p: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read ``p``'s stderr until a line holds ``text``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stderr.readline()
        if text in line:
            return line
        if not line and p.poll() is not None:
            break
    raise AssertionError(f"no {text!r} on stderr (exit {p.poll()})")


def test_a_lock_is_exclusive_reentrant_and_released_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmlib import locks\n"
                               f"with locks.exclusive({str(path)!r}, 'test'):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    with path.open() as fh:  # another process holds it
        with pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.exclusive(path, "test"):  # the kernel released the killed holder's lock: taken at once
        with locks.exclusive(path, "test"):  # a lock this process holds is taken again without waiting
            pass
        with path.open() as fh:
            with pytest.raises(BlockingIOError):  # still held after the inner block
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_second_identical_train_waits_then_reads_the_record(prepared_layout, tmp_path):
    cfg = tiny_config(prepared_layout, **{"train.epochs": 1})
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    store = tmp_path / "results"
    run_dir = store / experiments.run_hash(cfg)
    with locks.exclusive(run_dir / "run.lock", "the test"):
        second = spawn("train", "--config", str(config), results=store)
        assert f"waiting for run {run_dir.name}" in wait_for_line(second, "waiting for run")
        record = experiments.run(cfg, root=store)  # trained here while the other process waits
        written = Path(record.path).stat().st_mtime_ns
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert out.splitlines()[0] == record.path and Path(record.path).stat().st_mtime_ns == written  # read, not trained
    assert json.loads("\n".join(out.splitlines()[1:]))["test"] == record.final["test"]


@pytest.mark.parametrize("same", [True, False], ids=["same parameters", "other parameters"])
def test_one_fresh_embedded_root_is_generated_once_never_mixed(tmp_path, same):
    """A second process on a data root being generated waits; with the same generator parameters it uses what the
    first generated, with others it fails naming the root, and the root holds the first one's clips only."""
    root, store = tmp_path / "synth_av", tmp_path / "results"
    sets = [f"data.root={root}"] + [f"data.generator.{k}={v}" for k, v in {**TINY_GENERATOR, "clips": 24}.items()]
    cfg = experiment_config(load_params("ci", ROOT / "params.yaml"), **parse_set(sets))
    mine = cfg.data.generator if same else {**cfg.data.generator, "clips": 30}
    with locks.data_root(root):
        second = spawn("show", "--profile", "ci", *[a for s in sets for a in ("--set", s)], results=store)
        wait_for_line(second, "waiting for data root")
        path = SynthAV().ensure_prepared(root, cfg.data.audio_recipe, cfg.data.image_size, generator=mine)
        generated = {p.name: p.stat().st_mtime_ns for p in (root / "AudioWAV").iterdir()}
    out, err = second.communicate(timeout=120)
    assert {p.name: p.stat().st_mtime_ns for p in (root / "AudioWAV").iterdir()} == generated
    assert len(generated) == mine["clips"]
    if same:
        assert second.returncode == 0, err
        assert "data_fingerprint:" in out and path.is_file()
    else:
        assert second.returncode == 2
        assert err.strip().splitlines()[-1].startswith(f"error: {root}: holds synth_av generated with other "
                                                       f"parameters")
