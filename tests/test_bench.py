"""The throughput benchmark runs end to end on the CPU at the tiny profile and writes every section."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from mmlib import bench
from mmlib.registry import names


@pytest.fixture
def one_thread():
    """One intra-op thread: the test shares two cores with the reference loop's workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench.main(parser.parse_args(argv))


def test_tiny_benchmark_writes_every_section(tmp_path, one_thread, capsys):
    out = tmp_path / "bench.json"
    assert run_bench(["--profile", "tiny", "--device", "cpu", "--num-workers", "2",
                      "--data-dir", str(tmp_path / "media"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["profile"] == "tiny" and result["device"].startswith("cpu")
    assert result["torch"] == torch.__version__ and result["num_workers"] == 2
    assert [s["name"] for s in result["shapes"]] == [s.name for s in bench.PROFILES["tiny"].shapes]
    for entry in result["shapes"]:
        assert entry["audio_shape"] == [129, 94] and entry["precision"] == "fp32"
        for section in ("reference", "trainer", "compute"):
            rate = entry[section]["samples_per_s"]
            assert math.isfinite(rate) and rate > 0, (entry["name"], section)
        for key in ("trainer_over_compute", "trainer_over_reference"):
            assert math.isfinite(entry["ratios"][key]) and entry["ratios"][key] > 0
    ratios = result["balancers"]["ratios"]
    assert ratios["naive"]["ratio_to_naive"] == 1.0
    assert set(ratios) == set(names("balancers"))
    for name, item in ratios.items():
        if "error" not in item:
            assert math.isfinite(item["ratio_to_naive"]) and item["ratio_to_naive"] > 0, name
    printed = capsys.readouterr().out
    assert "trainer/compute" in printed and "naive" in printed


def test_failing_balancer_is_an_error_entry(tmp_path, monkeypatch):
    def broken(name, *args):
        if name == "ogm_ge":
            raise RuntimeError("cannot step")
        return 2.0

    monkeypatch.setattr(bench, "balancer_step_ms", broken)
    tiny = bench.PROFILES["tiny"]
    ratios = bench.balancer_ratios(tiny.shapes[0], tmp_path, "cpu", None, tiny)
    assert ratios["ogm_ge"] == {"error": "RuntimeError: cannot step"}
    assert ratios["naive"] == {"step_ms": 2.0, "ratio_to_naive": 1.0}
