"""One training step of each balancer on tiny models: which parameters move, by how much, and the logged state.

Plain SGD (lr 1, no momentum, no weight decay), so a parameter's change is minus its edited gradient and can be
compared with the plain cross-entropy gradient of an identical copy of the model.
"""
from __future__ import annotations

import contextlib
import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlib.balancers.base import TrainInfo
from mmlib.balancers.pmr import class_means
from mmlib.data.loader import Batch
from mmlib.models.cnn_fusion import MMTMFusion
from mmlib.models.fusion import ConcatFusion, SharedHeadFusion, SumFusion
from mmlib.models.multimodal import MultimodalModel
from mmlib.registry import get
from mmlib.train import build_optimizer

CLASSES = 3
MINE = ["amss", "amss_plus", "global_wise", "elementwise_uniform", "ogr_gb", "mses", "mslr", "domfn", "pmr", "agm",
        "dgl", "mla", "mmpareto", "dnr", "g_blending"]
REQUIRED_FUSION = {"mla": SharedHeadFusion}  # MLA trains one head shared by every modality
GREEDY = ["vanilla", "greedy", "greedy_random", "rubi"]  # the Greedy paper's methods, stepped on its MMTM model


class TinyConv(nn.Module):
    def __init__(self, channels: int, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn, self.out_dim = nn.BatchNorm2d(width), width

    def forward(self, x):
        return F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


class TinyAttention(nn.Module):
    """A projection split into 2 heads along its output rows (``mask_unit``), as the transformer encoders do."""

    def __init__(self, dim_in: int = 5, heads: int = 2, head_dim: int = 3):
        super().__init__()
        self.proj = nn.Linear(dim_in, heads * head_dim)
        self.proj.weight.mask_unit = ("head", heads, 0)
        self.proj.bias.mask_unit = ("head", heads, 0)
        self.out_dim = heads * head_dim

    def forward(self, x):
        return torch.tanh(self.proj(x))


def make_model(fusion=ConcatFusion, modalities=("audio", "visual")):
    torch.manual_seed(0)
    if fusion is MMTMFusion:  # staged encoders joined by MMTMs (the Greedy paper's model)
        channels = {"audio": 1, "visual": 3}
        encoders = {m: get("encoders", "convnet4")(in_channels=channels[m], width=2) for m in modalities}
        return MultimodalModel(encoders, MMTMFusion.from_encoders(encoders, CLASSES))
    make = {"audio": lambda: TinyConv(1), "visual": lambda: TinyConv(3), "text": TinyAttention}
    encoders = {m: make[m]() for m in modalities}
    return MultimodalModel(encoders, fusion({m: e.out_dim for m, e in encoders.items()}, CLASSES))


def make_batch(modalities=("audio", "visual"), size: int = 12):
    g = torch.Generator().manual_seed(1)
    shapes = {"audio": (size, 1, 6, 6), "visual": (size, 3, 6, 6), "text": (size, 5)}
    inputs = {m: torch.randn(*shapes[m], generator=g) for m in modalities}
    inputs["audio"] = inputs["audio"] * 3  # a louder modality
    return Batch(inputs=inputs, label=torch.arange(size) % CLASSES, index=torch.arange(size))


def fake_trainer(model, batch):
    return SimpleNamespace(model=model, loaders={"train": [batch, batch], "val": [batch]},
                           autocast=contextlib.nullcontext)


def run_step(name, params=None, fusion=ConcatFusion, modalities=("audio", "visual")):
    """model, balancer, logged state, change {param name: step}, plain {param name: plain CE gradient}."""
    model, batch = make_model(fusion, modalities), make_batch(modalities)
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(batch.inputs).logits, batch.label).backward()
    plain = {n: p.grad.clone() for n, p in reference.named_parameters()}
    optimizer = build_optimizer(model, SimpleNamespace(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0))
    balancer = get("balancers", name)(**(params or {}))
    balancer.setup(model, optimizer, TrainInfo(epochs=3, steps_per_epoch=1, num_classes=CLASSES,
                                               modalities=list(modalities), device=torch.device("cpu")))
    balancer.on_epoch_start(fake_trainer(model, batch), 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = balancer.training_step(model, batch, optimizer)
    change = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return SimpleNamespace(model=model, balancer=balancer, state={k: float(v) for k, v in state.items()},
                           change=change, plain=plain)


def unit_rows(name: str, tensor: torch.Tensor, model) -> torch.Tensor:
    """The tensor viewed as (units, elements) under AMSS's mask units."""
    param = dict(model.named_parameters())[name]
    tag = getattr(param, "mask_unit", None)
    if tag is not None:
        return tensor.movedim(tag[2], 0).reshape(tag[1], -1)
    if param.dim() == 4:
        return tensor.flatten(1)
    return tensor.reshape(-1, 1)


def expected_units(rho: float, n: int) -> int:
    return min(n, max(1, math.ceil(rho * n - 1e-9)))


def check_masked(r, name, rho, low=None, high=None):
    """Unsampled units unchanged, exactly ceil(rho C_l) units moved, each moved unit by -scale * g with one scale
    per unit in [low, high]; returns the number of units C_l."""
    rows, grad = unit_rows(name, r.change[name], r.model), unit_rows(name, r.plain[name], r.model)
    assert bool((grad.abs().sum(1) > 0).all()), f"{name}: every unit needs a gradient for this check"
    moved = rows.abs().sum(1) > 0
    assert int(moved.sum()) == expected_units(rho, rows.shape[0]), name
    scale = -rows[moved] / grad[moved]
    assert torch.allclose(scale, scale[:, :1].expand_as(scale), rtol=1e-4, atol=1e-6), name
    if low is not None:
        assert bool((scale >= low * (1 - 1e-3)).all()), (name, scale[:, 0])
    if high is not None:
        assert bool((scale <= high * (1 + 1e-3)).all()), (name, scale[:, 0])
    return rows.shape[0]


def check_plain(r, name, factor=1.0):
    assert torch.allclose(r.change[name], -factor * r.plain[name], rtol=1e-4, atol=1e-6), name


def subnet_names(model, modality, with_head):
    names = [f"encoders.{modality}.{n}" for n, _ in model.encoders[modality].named_parameters()]
    if with_head:
        ids = {id(p) for p in model.fusion.modality_parameters(modality)}
        names += [n for n, p in model.named_parameters() if id(p) in ids]
    return names


# ------------------------------------------------------------------------------------------ AMSS family
@pytest.mark.parametrize("fusion", [ConcatFusion, SumFusion])
def test_amss_updates_exactly_the_sampled_units(fusion):
    r = run_step("amss", fusion=fusion)
    masked = set()
    for m in ("audio", "visual"):
        assert 0 < r.state[f"rho_{m}"] < 1 and math.isfinite(r.state[f"u_{m}"])
        for name in subnet_names(r.model, m, with_head=fusion.kind == "late"):
            check_masked(r, name, r.state[f"rho_{m}"], low=1.0, high=1.0)
            masked.add(name)
    for name in set(r.change) - masked:  # outside the subnetworks (the concat head): the plain gradient step
        check_plain(r, name)
    assert r.state["rho_audio"] + r.state["rho_visual"] == pytest.approx(1.0)  # K = 2: softmax complements


def test_amss_plus_scales_sampled_units_by_paper_practical_form():
    r = run_step("amss_plus", {"scaling": "paper", "sampling": "importance"})
    for m in ("audio", "visual"):
        for name in subnet_names(r.model, m, with_head=False):
            units = unit_rows(name, r.change[name], r.model).shape[0]
            check_masked(r, name, r.state[f"rho_{m}"], low=1 / (units + 1), high=1 / units)  # 1/(p_j + C_l)
        assert 0 < r.state[f"scale_{m}"] < 1


def test_amss_plus_exact_scaling_inflates_drawn_units():
    r = run_step("amss_plus")  # the default: exact 1/pi_j, systematic sampling
    for m in ("audio", "visual"):
        for name in subnet_names(r.model, m, with_head=False):
            check_masked(r, name, r.state[f"rho_{m}"], low=1.0)  # 1/pi_j >= 1


def test_amss_plus_rho_one_is_scaling_only():
    r = run_step("amss_plus", {"ratio": "one", "scaling": "official_code"})
    for m in ("audio", "visual"):
        for name in subnet_names(r.model, m, with_head=False):
            units = unit_rows(name, r.change[name], r.model).shape[0]  # every unit moves, by 1/(pi + 1/C)
            check_masked(r, name, 1.0, low=units / (units + 1), high=units)


def test_amss_three_modalities_with_head_wise_units():
    mods = ("audio", "visual", "text")
    r = run_step("amss", fusion=SumFusion, modalities=mods)
    assert sum(r.state[f"rho_{m}"] for m in mods) == pytest.approx(2.0)  # K - 1
    for name in ("encoders.text.proj.weight", "encoders.text.proj.bias"):
        rows = unit_rows(name, r.change[name], r.model)
        assert rows.shape[0] == 2  # two heads, each moved or left whole
        assert bool(((rows != 0).all(1) | (rows == 0).all(1)).all())
        check_masked(r, name, r.state["rho_text"], low=1.0, high=1.0)


def test_amss_needs_two_modalities():
    with pytest.raises(ValueError, match="at least 2 modalities"):
        run_step("amss", modalities=("audio",))


def test_amss_official_code_variant_masks_conv_kernels_only():
    r = run_step("amss", {"variant": "official_code"})
    assert r.balancer.cfg.tau == 0.2 and r.balancer.cfg.momentum == 0.0 and r.balancer.protocol == "head_split"
    for m in ("audio", "visual"):
        assert 0.1 <= r.state[f"rho_{m}"] <= 0.9
        check_masked(r, f"encoders.{m}.conv.weight", r.state[f"rho_{m}"], low=1.0, high=1.0)
        check_plain(r, f"encoders.{m}.bn.weight")
        check_plain(r, f"encoders.{m}.bn.bias")


@pytest.mark.parametrize("scope, masked_part", [("classifier", "fusion"), ("backbone", "encoders")])
def test_amss_component_ablations(scope, masked_part):
    r = run_step("amss", {"scope": scope})
    for m in ("audio", "visual"):
        for name in subnet_names(r.model, m, with_head=True):
            if name.startswith(masked_part):
                check_masked(r, name, r.state[f"rho_{m}"], low=1.0, high=1.0)
            else:
                check_plain(r, name)


def test_global_wise_scales_each_encoder_by_its_coefficient():
    r = run_step("global_wise", {"coefficients": {"audio": 0.25}})
    assert r.state["coeff_audio"] == 0.25 and r.state["coeff_visual"] == 1.0
    for name in r.change:
        check_plain(r, name, 0.25 if name.startswith("encoders.audio.") else 1.0)
    with pytest.raises(ValueError, match="unknown modalities"):
        run_step("global_wise", {"coefficients": {"depth": 0.5}})


def test_elementwise_uniform_keeps_the_fixed_ratio():
    r = run_step("elementwise_uniform", {"ratios": {"audio": 0.5}})
    assert r.state["rho_audio"] == 0.5 and r.state["rho_visual"] == 1.0
    for m, rho in (("audio", 0.5), ("visual", 1.0)):
        for name in subnet_names(r.model, m, with_head=False):
            check_masked(r, name, rho, low=1.0, high=1.0)


# ------------------------------------------------------------------------------------------ Table 2 baselines
def test_agm_scales_encoders_by_logged_coefficients():
    r = run_step("agm")
    for name in r.change:
        m = name.split(".")[1] if name.startswith("encoders.") else None
        check_plain(r, name, r.state[f"coeff_{m}"] if m else 1.0)
    assert r.state["coeff_audio"] == pytest.approx(1.0)  # first step: the running mean equals the batch's scores
    saved = r.balancer.state_dict()
    assert saved["steps"] == 1 and torch.isfinite(saved["running"]).all()


def sgd(model, lr=1.0):
    return build_optimizer(model, SimpleNamespace(name="sgd", lr=lr, momentum=0.0, weight_decay=0.0))


def test_gradient_blending_weights_loss_and_reestimate():
    r = run_step("ogr_gb", {"super_epoch": 1})
    assert [r.state[f"weight_{k}"] for k in ("fused", "audio", "visual")] == pytest.approx([1 / 3] * 3)
    batch, optimizer = make_batch(), sgd(r.model, 0.5)
    for _ in range(5):
        r.balancer.training_step(r.model, batch, optimizer)
    r.balancer.on_epoch_end(fake_trainer(r.model, batch), 0)
    weights = r.balancer.weights
    assert sum(weights.values()) == pytest.approx(1.0) and all(w >= 0 for w in weights.values())
    assert weights != pytest.approx({k: 1 / 3 for k in weights})


def test_mses_stops_a_plateaued_modality():
    r = run_step("mses", {"patience": 1})
    bal, batch = r.balancer, make_batch()
    trainer = fake_trainer(r.model, batch)
    bal.on_epoch_end(trainer, 0)  # first measurement: an improvement on +inf
    assert bal.lr_factors == {"audio": 1.0, "visual": 1.0}
    bal.best = {"audio": -1.0, "visual": float("inf")}  # audio's loss can no longer improve
    bal.on_epoch_end(trainer, 1)
    assert bal.lr_factors == {"audio": 0.0, "visual": 1.0}
    before = {n: p.detach().clone() for n, p in r.model.named_parameters()}
    optimizer = sgd(r.model)
    logged = bal.training_step(r.model, batch, optimizer)
    assert float(logged["lr_factor_audio"]) == 0.0
    for n, p in r.model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (not n.startswith(("encoders.audio.", "fusion.blocks.audio"))), n
    assert [g["lr"] for g in optimizer.param_groups] == [1.0] * len(optimizer.param_groups)


def test_mslr_strategies():
    r = run_step("mslr", {"lr_scales": {"audio": 0.5}})
    assert r.state["lr_factor_audio"] == 0.5 and r.state["lr_factor_visual"] == 1.0
    for name in r.change:
        check_plain(r, name, 0.5 if name.startswith(("encoders.audio.", "fusion.blocks.audio")) else 1.0)
    smooth = run_step("mslr", {"strategy": "smooth", "lr_scales": {"audio": 3.0}}).balancer
    assert smooth.lr_factors == {"audio": 3.0, "visual": 1.0}
    smooth.on_epoch_start(None, 2)  # last of 3 epochs
    assert smooth.lr_factors == {"audio": 1.0, "visual": 1.0}
    r = run_step("mslr", {"strategy": "dynamic"})
    trainer = fake_trainer(r.model, make_batch())
    r.balancer.on_epoch_end(trainer, 0)
    r.balancer.on_epoch_end(trainer, 1)  # same model: no better unimodal accuracy
    assert r.balancer.lr_factors == {"audio": 0.5, "visual": 0.5}


def test_domfn_step():
    r = run_step("domfn", {"gamma": 1.0})
    assert r.state["fused_fraction"] == 1.0 and 0 <= r.state["penalty_audio"] <= 1
    r = run_step("domfn", {"gamma": 0.0, "eta": 0.5})  # nothing fused
    assert r.state["fused_fraction"] == 0.0
    reference, batch = make_model(), make_batch()  # only the unimodal terms, the fused prediction held fixed
    out = reference(batch.inputs)
    p_f = torch.softmax(out.logits.detach(), 1)
    loss = 0
    for z in reference.unimodal_logits(batch.inputs, out, r.balancer.protocol).values():
        ce = F.cross_entropy(z, batch.label, reduction="none")
        loss = loss + 0.5 * ce.square() - 0.5 * (torch.softmax(z, 1) - p_f).square().amax(1)
    loss.mean().backward()
    for n, p in reference.named_parameters():
        expected = -p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(r.change[n], expected, atol=1e-5), n


def test_pmr_prototypes_and_step():
    r = run_step("pmr")
    bal, state = r.balancer, r.state
    assert set(bal.prototypes) == {"audio", "visual"} and bal.prototypes["audio"].shape == (CLASSES, 4)
    assert state["ratio"] >= 1.0
    weak = "audio" if state["score_audio"] < state["score_visual"] else "visual"
    strong = "visual" if weak == "audio" else "audio"
    # the public code's bounded rule (the default): alpha = 1 on the weak modality's PCE when rho > 1
    assert state[f"pce_coeff_{weak}"] == (1.0 if state["ratio"] > 1 else 0.0)
    assert state[f"pce_coeff_{strong}"] == 0.0
    assert state[f"per_coeff_{strong}"] == state[f"pce_coeff_{weak}"]  # entropy raised on the dominant
    proportional = run_step("pmr", {"coefficient": "proportional"}).state
    weak_p = "audio" if proportional["score_audio"] < proportional["score_visual"] else "visual"
    assert proportional[f"pce_coeff_{weak_p}"] == pytest.approx(proportional["ratio"] - 1.0, abs=1e-6)
    old = {m: p.clone() for m, p in bal.prototypes.items()}
    batch = make_batch()
    sums, counts = class_means(r.model, [batch], CLASSES, 1, contextlib.nullcontext)
    bal.on_epoch_start(fake_trainer(r.model, batch), 1)  # EMA, mu = 0.2, towards the new class means
    for m, prototype in old.items():
        assert torch.allclose(bal.prototypes[m], 0.8 * sums[m] / counts[:, None] + 0.2 * prototype, atol=1e-6)
    restored = get("balancers", "pmr")()
    restored.info = bal.info
    restored.load_state_dict(bal.state_dict())
    assert torch.equal(restored.prototypes["visual"], bal.prototypes["visual"])


STEPPED = ([(name, fusion) for name in MINE + ["rubi"] for fusion in (ConcatFusion, SumFusion)]
           + [(name, MMTMFusion) for name in GREEDY])


@pytest.mark.parametrize("name, fusion", STEPPED, ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_every_balancer_step_logs_finite_state(name, fusion):
    r = run_step(name, fusion=REQUIRED_FUSION.get(name, fusion))
    assert "loss" in r.state and all(math.isfinite(v) for v in r.state.values()), r.state
    assert any(bool(c.abs().sum() > 0) for c in r.change.values())
    r.balancer.load_state_dict(r.balancer.state_dict())  # resumable


@pytest.mark.parametrize("name, fusion", [(n, ConcatFusion) for n in MINE] + [(n, MMTMFusion) for n in GREEDY],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_every_balancer_runs_under_bf16_autocast(name, fusion):
    """On the GPU the Trainer runs the forward pass under bf16 autocast: features and logits reach the balancer
    in bf16 (checked here with CPU autocast)."""
    model, batch = make_model(REQUIRED_FUSION.get(name, fusion)), make_batch()
    optimizer = build_optimizer(model, SimpleNamespace(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    balancer = get("balancers", name)()
    balancer.setup(model, optimizer, TrainInfo(epochs=2, steps_per_epoch=1, num_classes=CLASSES,
                                               modalities=model.modalities, device=torch.device("cpu"),
                                               autocast=bf16))
    trainer = SimpleNamespace(model=model, loaders={"train": [batch], "val": [batch]}, autocast=bf16)
    balancer.on_epoch_start(trainer, 0)
    state = balancer.training_step(model, batch, optimizer)
    balancer.on_epoch_end(trainer, 0)
    assert all(bool(torch.isfinite(v.float())) for v in state.values()), state


def test_amss_per_sample_fisher(monkeypatch):
    """fisher="per_sample": the importance is 1/B sum_i (d loss_i / dw)^2, not the square of the batch gradient."""
    from mmlib.balancers import amss as amss_module

    seen = {}
    real = amss_module.unit_importance

    def record(layout, squares=None):
        seen[id(layout)] = squares
        return real(layout, squares)

    monkeypatch.setattr(amss_module, "unit_importance", record)
    r = run_step("amss", {"fisher": "per_sample"})
    reference, batch = make_model(), make_batch()
    losses = F.cross_entropy(reference(batch.inputs).logits, batch.label, reduction="none")
    params = list(reference.encoders["audio"].parameters())
    expected = [torch.zeros_like(p) for p in params]
    for loss in losses:
        for e, g in zip(expected, torch.autograd.grad(loss, params, retain_graph=True)):
            e += g.square() / len(losses)
    squares = seen[id(r.balancer.layouts["audio"])]
    assert all(torch.allclose(s, e, rtol=1e-4, atol=1e-9) for s, e in zip(squares, expected))
    batch_square = [g.square() for g in torch.autograd.grad(losses.mean(), params)]
    assert not torch.allclose(squares[0], batch_square[0], rtol=1e-2)
    for name in subnet_names(r.model, "audio", with_head=False):
        check_masked(r, name, r.state["rho_audio"], low=1.0, high=1.0)
