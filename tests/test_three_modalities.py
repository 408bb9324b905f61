"""The balancers of the AMSS paper's NVGesture table (Table 3) on RGB + depth + optical flow with prediction-sum
fusion: one CPU training step each on a tiny 3-modality model, and the K-modality forms of their formulas."""
from __future__ import annotations

import contextlib
import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from mmlib.balancers.agm import imbalance_ratios, shapley_responses
from mmlib.balancers.amss import official_code_ratios, update_ratios
from mmlib.balancers.base import TrainInfo
from mmlib.balancers.ogr_gb import blending_weights
from mmlib.data.loader import Batch
from mmlib.models.multimodal import build_model
from mmlib.registry import get
from mmlib.train import build_optimizer

CHANNELS = {"rgb": 3, "depth": 1, "flow": 2}
CLASSES = 4
TABLE3 = [("naive", {}), ("unimodal", {"modality": "depth"}), ("mses", {"patience": 1}),
          ("ogr_gb", {"super_epoch": 1}), ("mslr", {"strategy": "dynamic"}), ("mslr", {"lr_scales": {"flow": 2.0}}),
          ("agm", {}), ("amss", {"tau": 0.5}), ("amss_plus", {"tau": 0.5}),
          ("amss", {"variant": "official_code"}), ("amss_plus", {"variant": "official_code"})]


def make_batch(modalities, size: int = 8) -> Batch:
    g = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(size, 2, CHANNELS[m], 16, 16, generator=g) for m in modalities}  # (B, T, C, H, W)
    return Batch(inputs=inputs, label=torch.arange(size) % CLASSES, index=torch.arange(size))


def setup(name, params):
    balancer = get("balancers", name)(**params)
    modalities = balancer.modalities(list(CHANNELS))
    torch.manual_seed(0)
    spec = SimpleNamespace(encoders={m: {"name": "resnet18", "width": 4} for m in modalities}, fusion={"name": "sum"})
    model = build_model(spec, {m: CHANNELS[m] for m in modalities}, CLASSES)
    optimizer = build_optimizer(model, SimpleNamespace(name="sgd", lr=0.01, momentum=0.9, weight_decay=0.0))  # moves come from gradients
    batch = make_batch(modalities)
    trainer = SimpleNamespace(model=model, loaders={"train": [batch], "val": [batch]},
                              autocast=contextlib.nullcontext)
    balancer.setup(model, optimizer, TrainInfo(epochs=2, steps_per_epoch=1, num_classes=CLASSES,
                                               modalities=modalities, device=torch.device("cpu")))
    return balancer, model, optimizer, batch, trainer


@pytest.mark.parametrize("name, params", TABLE3, ids=lambda v: v if isinstance(v, str) else "")
def test_one_step_with_three_modalities_and_sum_fusion(name, params):
    balancer, model, optimizer, batch, trainer = setup(name, params)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    balancer.on_epoch_start(trainer, 0)
    state = balancer.training_step(model, batch, optimizer)
    balancer.on_epoch_end(trainer, 0)
    assert math.isfinite(float(state["loss"])) and all(torch.isfinite(v).all() for v in state.values())
    for m in model.modalities:  # every modality's encoder and head received a gradient and moved
        assert model.encoders[m].parameters().__next__().grad is not None, m
        moved = [not torch.equal(p, before[f"encoders.{m}.{n}"]) for n, p in model.encoders[m].named_parameters()]
        assert any(moved), m
    assert model.modalities == (["depth"] if name == "unimodal" else list(CHANNELS))
    if name == "amss":
        rho = torch.tensor([float(state[f"rho_{m}"]) for m in CHANNELS])
        if params.get("variant") != "official_code":
            assert float(rho.sum()) == pytest.approx(2.0)  # sum_k (1 - softmax_k) = K - 1
    if name == "agm":
        assert {f"coeff_{m}" for m in CHANNELS} <= set(state)
    if name == "ogr_gb":
        assert set(balancer.weights) == {"fused", *CHANNELS}
        assert sum(balancer.weights.values()) == pytest.approx(1.0)
    balancer.training_step(model, batch, optimizer)  # a second step after the epoch-end update


def test_amss_update_ratios_for_three_modalities():
    """rho_k = 1 - softmax(u / tau)_k over all K modalities (the NVGesture code's 3-way softmax): the most
    significant modality keeps the smallest share, and the ratios sum to K - 1."""
    u = torch.tensor([0.9, 0.3, 0.1])
    rho = update_ratios(u, tau=0.5)
    e = torch.exp(u.double() / 0.5)
    assert torch.allclose(rho, 1 - e / e.sum())
    assert float(rho.sum()) == pytest.approx(2.0) and rho.argmin() == 0 and rho.argmax() == 2


def test_amss_official_code_ratios_for_three_modalities():
    torch.manual_seed(0)
    labels = torch.arange(12) % 3
    logits = {m: torch.randn(12, 3) + 4 * torch.nn.functional.one_hot(labels, 3) * s
              for m, s in (("rgb", 1.0), ("depth", 2.0), ("flow", 0.0))}
    feats = {m: torch.randn(12, 8) for m in logits}
    rates, rho = official_code_ratios(logits, feats, labels, 3, temperature=0.2)
    assert rates.shape == rho.shape == (3,)
    assert bool(((rho >= 0.1) & (rho <= 0.9)).all())
    if bool((rho != 0.5).any()):
        assert int(rho.argmin()) == int(rates.argmax())


def test_agm_shapley_responses_for_three_modalities():
    """Efficiency of the Shapley split: the responses add up to f(all) (f(empty) = 0); a modality that changes no
    output gets a zero response; the imbalance ratios' geometric mean is 1."""
    mods = ["rgb", "depth", "flow"]
    g = torch.Generator().manual_seed(0)
    base = {m: torch.randn(5, CLASSES, generator=g) for m in ["rgb", "depth"]}
    outputs = {}
    for r in range(1, 4):
        for s in itertools.combinations(mods, r):  # additive in rgb and depth, flow contributes nothing
            outputs[frozenset(s)] = sum((base[m] for m in s if m in base), torch.zeros(5, CLASSES))
    responses = shapley_responses(outputs, mods)
    assert torch.allclose(sum(responses.values()), outputs[frozenset(mods)], atol=1e-6)
    assert torch.allclose(responses["rgb"], base["rgb"], atol=1e-6)
    assert torch.allclose(responses["flow"], torch.zeros(5, CLASSES), atol=1e-6)
    ratios = imbalance_ratios(torch.tensor([-0.2, -1.0, -2.5]))
    assert float(ratios.log().sum()) == pytest.approx(0.0, abs=1e-6)  # exp(M/(M-1) (s - mean s)) over M = 3
    assert torch.allclose(ratios, torch.exp(1.5 * (torch.tensor([-0.2, -1.0, -2.5]) + 3.7 / 3)))


def test_gradient_blending_weights_for_four_heads():
    start = {k: {"train": 1.0, "val": 1.2} for k in ("fused", "rgb", "depth", "flow")}
    end = {"fused": {"train": 0.5, "val": 0.9}, "rgb": {"train": 0.8, "val": 1.0},
           "depth": {"train": 0.6, "val": 1.3}, "flow": {"train": 0.9, "val": 1.1}}
    w = blending_weights(start, end)
    raw = {k: max(start[k]["val"] - end[k]["val"], 0) /
           max(abs((end[k]["val"] - end[k]["train"]) - (start[k]["val"] - start[k]["train"])), 1e-4) ** 2
           for k in start}
    assert w == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
    assert w["depth"] == 0.0  # its validation loss rose
