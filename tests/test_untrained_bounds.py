"""PMR's and AGM's coefficients stay finite and bounded on an untrained model (batch-norm running statistics not
yet learned), with their defaults; the eval-mode readings they replace blow up on the same model."""
from __future__ import annotations

import math

import pytest
import torch

from mmlib.balancers import Batch, LoopContext, make, named_param_groups
from mmlib.config import ModelConfig
from mmlib.models import build_model

CLASSES = 31


def first_steps(name: str, steps: int = 4, **params) -> list[dict[str, float]]:
    """The logged state of ``steps`` training steps of an untrained ResNet model on spectrogram-like inputs."""
    torch.manual_seed(0)
    cfg = ModelConfig(encoders={"audio": {"name": "resnet18", "width": 4}, "visual": {"name": "resnet18", "width": 4}})
    model = build_model(cfg, {"audio": 1, "visual": 3}, CLASSES)
    batches = [Batch({"audio": torch.randn(32, 1, 129, 24) * 3 - 6, "visual": torch.rand(32, 3, 3, 32, 32) * 4 - 2},
                     torch.randint(0, CLASSES, (32,))) for _ in range(steps)]
    optimizer = torch.optim.SGD(named_param_groups(model), lr=0.03, momentum=0.9)
    balancer = make(name, **params).attach(model, optimizer, epochs=2, steps_per_epoch=steps, num_classes=CLASSES)
    balancer.on_epoch_start(LoopContext(model, {"train": batches, "val": batches}), 0)
    return [{k: float(v) for k, v in balancer.training_step(model, b, optimizer).items()} for b in batches]


def test_pmr_defaults_keep_the_coefficient_bounded_and_the_loss_finite():
    for state in first_steps("pmr"):
        assert math.isfinite(state["loss"]) and 1 <= state["ratio"] < 10
        assert {state["pce_coeff_audio"], state["pce_coeff_visual"]} <= {0.0, 1.0}  # alpha = 1, or nothing
    eval_mode = first_steps("pmr", prototype_mode="eval", coefficient="proportional")
    assert eval_mode[0]["ratio"] > 1e3 and not math.isfinite(eval_mode[-1]["loss"])  # what the defaults avoid


def test_agm_defaults_keep_the_coefficients_near_one():
    for state in first_steps("agm"):
        for m in ("audio", "visual"):
            assert 0.5 <= state[f"coeff_{m}"] <= 2.0, state
    eval_mode = first_steps("agm", outputs="eval", subsets="eval")
    assert max(max(s["coeff_audio"], s["coeff_visual"]) for s in eval_mode) > 1e3


@pytest.mark.parametrize("name, params", [("agm", {"cap": 10.0}), ("pmr", {"alpha": 2.0})])
def test_coefficients_are_finite_for_any_seeded_batch(name, params):
    assert all(math.isfinite(v) for state in first_steps(name, **params) for v in state.values())
