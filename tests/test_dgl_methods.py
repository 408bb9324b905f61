"""The DGL paper's method and baselines (DGL, MLA, MMPareto, D&R, G-Blending at a fixed alpha), OGM-GE / AGM / PMR
with three modalities, and the suppression probe of DGL Fig. 3(a): formulas against hand computations, and where
each step sends its gradients.

Plain SGD (lr 1, no momentum, no weight decay) where a step is checked, so a parameter's change is minus the
gradient it received, compared with gradients computed on an identical copy of the model.
"""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlib.balancers import LoopContext, make
from mmlib.balancers import dnr as dnr_module
from mmlib.balancers.agm import agm_coefficients
from mmlib.balancers.base import TrainInfo
from mmlib.balancers.dnr import cluster_purity, interpolate_, purity, reinit_strength
from mmlib.balancers.mla import owm_alpha, owm_update
from mmlib.balancers.mmpareto import pareto_gradients
from mmlib.balancers.ogm_ge import ogm_coefficients
from mmlib.balancers.pmr import pmr_coefficients
from mmlib.data.loader import Batch
from mmlib.models import MultimodalModel
from mmlib.models.fusion import SharedHeadFusion, entropy_gates
from mmlib.probes import check_probes, evaluate_probes, modality_head_weights, suppression_sums
from mmlib.registry import get
from mmlib.train import build_optimizer

CLASSES = 3
INPUTS = {"audio": 5, "visual": 7, "text": 4}


class FlatEncoder(nn.Module):
    def __init__(self, inputs: int, out_dim: int):
        super().__init__()
        self.linear, self.norm, self.out_dim = nn.Linear(inputs, out_dim), nn.BatchNorm1d(out_dim), out_dim

    def forward(self, x):
        return torch.relu(self.norm(self.linear(x)))


def flat_model(fusion: str = "concat", k: int = 2, dims=(4, 6, 5), **fusion_params) -> MultimodalModel:
    torch.manual_seed(0)
    mods = list(INPUTS)[:k]
    encoders = {m: FlatEncoder(INPUTS[m], d) for m, d in zip(mods, dims)}
    return MultimodalModel(encoders, get("fusions", fusion)({m: e.out_dim for m, e in encoders.items()}, CLASSES,
                                                            **fusion_params))


def flat_batch(k: int = 2, size: int = 12, scale: float = 1.0) -> Batch:
    g = torch.Generator().manual_seed(1)
    mods = list(INPUTS)[:k]
    inputs = {m: scale * torch.randn(size, INPUTS[m], generator=g) for m in mods}
    return Batch(inputs=inputs, label=torch.arange(size) % CLASSES, index=torch.arange(size))


def mmtm_model() -> tuple[MultimodalModel, Batch]:
    torch.manual_seed(0)
    encoders = {m: get("encoders", "resnet18")(in_channels=3, width=4) for m in ("audio", "visual")}
    model = MultimodalModel(encoders, get("fusions", "mmtm")({m: e.out_dim for m, e in encoders.items()}, CLASSES))
    g = torch.Generator().manual_seed(1)
    inputs = {"audio": torch.randn(6, 3, 32, 32, generator=g), "visual": torch.randn(6, 2, 3, 32, 32, generator=g)}
    return model, Batch(inputs=inputs, label=torch.arange(6) % CLASSES, index=torch.arange(6))


def sgd(model, lr: float = 1.0):
    return build_optimizer(model, SimpleNamespace(name="sgd", lr=lr, momentum=0.0, weight_decay=0.0))


def setup(name, model, batch, epochs: int = 3, **params):
    balancer = make(name, **params)
    optimizer = sgd(model)
    balancer.setup(model, optimizer, TrainInfo(epochs=epochs, steps_per_epoch=2, num_classes=CLASSES,
                                               modalities=model.modalities, device=torch.device("cpu")))
    return balancer, optimizer, LoopContext(model, {"train": [batch, batch], "val": [batch]})


def step(name, model, batch, **params):
    """(balancer, logged state, {parameter name: change})."""
    balancer, optimizer, context = setup(name, model, batch, **params)
    balancer.on_epoch_start(context, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = balancer.training_step(model, batch, optimizer)
    return balancer, state, {n: p.detach() - before[n] for n, p in model.named_parameters()}


def grads(loss, model, names):
    params = dict(model.named_parameters())
    out = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True, allow_unused=True)
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, out)}


def split_names(model):
    encoders = [n for n, _ in model.named_parameters() if n.startswith("encoders.")]
    return encoders, [n for n, _ in model.named_parameters() if n.startswith("fusion.")]


def close(a: dict, b: dict, atol=1e-6):
    for n in a:
        assert torch.allclose(a[n], b[n], rtol=1e-4, atol=atol), n


# ------------------------------------------------------------------------------------------ DGL
DGL_MODELS = {
    "concat": lambda: (flat_model("concat"), flat_batch()),
    "sum": lambda: (flat_model("sum"), flat_batch()),
    "concat-3": lambda: (flat_model("concat", 3), flat_batch(3)),
    "sum-3": lambda: (flat_model("sum", 3), flat_batch(3)),
    "mlp_mixer-3": lambda: (flat_model("mlp_mixer", 3, dim=8, token_hidden=4, channel_hidden=8), flat_batch(3)),
    "mmtm": mmtm_model,
}


DGL_CASES = [(name, t) for name in DGL_MODELS for t in ("both", "multimodal", "unimodal")
             if name != "mmtm" or t == "both"]  # one dense-fusion case


@pytest.mark.parametrize("setup_name, truncation", DGL_CASES)
def test_dgl_routes_each_loss_to_its_parameters(setup_name, truncation):
    """DGL (both): the encoders move by -alpha grad sum_m L^m only (the multimodal loss puts nothing on them), the
    fusion module and head by -grad L^d only (the unimodal losses put nothing on them). +MT: the unimodal losses
    also reach the fusion; +UT: the multimodal loss also reaches the encoders."""
    model, batch = DGL_MODELS[setup_name]()
    reference = copy.deepcopy(model)
    out = reference(batch.inputs)
    fused = F.cross_entropy(out.logits, batch.label)
    uni = reference.unimodal_logits(batch.inputs, out, "zero_feature")
    unimodal = 2.5 * sum(F.cross_entropy(z, batch.label) for z in uni.values())
    encoders, fusion = split_names(reference)
    g_uni, g_mm = grads(unimodal, reference, encoders + fusion), grads(fused, reference, encoders + fusion)
    # both losses reach both parts of the model, so the routing below is not a property of the model
    assert max(float(g_mm[n].abs().max()) for n in encoders) > 1e-4
    assert max(float(g_uni[n].abs().max()) for n in fusion) > 1e-4

    _, state, change = step("dgl", model, batch, alpha=2.5, truncation=truncation)
    encoder_grad = {n: g_uni[n] + (g_mm[n] if truncation == "unimodal" else 0) for n in encoders}
    fusion_grad = {n: g_mm[n] + (g_uni[n] if truncation == "multimodal" else 0) for n in fusion}
    close({n: -change[n] for n in encoders}, encoder_grad)
    close({n: -change[n] for n in fusion}, fusion_grad)
    assert float(state["loss"]) == pytest.approx(float((fused + unimodal).detach()), rel=1e-5)
    assert float(state["loss_fused"]) == pytest.approx(float(fused.detach()), rel=1e-5)


def test_dgl_public_code_options():
    model, batch = flat_model(), flat_batch()
    _, _, change = step("dgl", model, batch, clip_grad_norm=1e-3)
    total = torch.sqrt(sum(c.square().sum() for c in change.values()))
    assert float(total) == pytest.approx(1e-3, rel=1e-3)  # the clipped global norm
    balancer, optimizer, context = setup("dgl", flat_model(), batch, scheduler_at_epoch_start=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with pytest.raises(ValueError, match="scheduler"):
        balancer.on_epoch_start(context, 0)
    balancer.on_epoch_start(LoopContext(context.model, context.loaders, scheduler=scheduler), 0)
    assert optimizer.param_groups[0]["lr"] == 0.5  # epoch 0 runs at the rate the Trainer would give epoch 1
    balancer.on_epoch_start(LoopContext(context.model, context.loaders, scheduler=scheduler), 1)
    assert optimizer.param_groups[0]["lr"] == 0.5  # only the first epoch leads
    with pytest.raises(ValueError, match="truncation"):
        make("dgl", truncation="fusion")


# ------------------------------------------------------------------------------------------ MMPareto
def test_mmpareto_min_norm_weights_in_conflict():
    """g_mm = (1, 0), g_m = (-1, 1): cos < 0, w_mm = <g_m - g_mm, g_m> / |g_mm - g_m|^2 = 3/5; 2 (w g_mm + (1 - w)
    g_m) = (0.4, 0.8), the minimum-norm point of the segment (x2); |g_sum| = |(0, 1)| = 1 > |(0.4, 0.8)|: rescaled to
    norm 1, times gamma."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    (g,), cos, w = pareto_gradients([a], [b], [a + b], gamma=1.5)
    assert float(cos) == pytest.approx(-1 / math.sqrt(2))
    assert float(w) == pytest.approx(0.6)
    combined = torch.tensor([0.4, 0.8])
    assert torch.allclose(g, 1.5 * combined / combined.norm())
    grid = torch.linspace(0, 1, 1001)
    norms = [(c * a + (1 - c) * b).norm() for c in grid]
    assert float(grid[int(torch.stack(norms).argmin())]) == pytest.approx(0.6, abs=1e-3)
    (raw,), _, _ = pareto_gradients([a], [b], [a + b], gamma=1.5, rescale=False)
    assert torch.allclose(raw, 1.5 * combined)


def test_mmpareto_equal_weights_without_conflict():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    (g,), cos, w = pareto_gradients([a], [b], [a + b], gamma=1.5)
    assert float(cos) > 0 and float(w) == 0.5
    assert torch.allclose(g, 1.5 * (a + b))  # 2 (a/2 + b/2) = the summed gradient: no rescaling


@pytest.mark.parametrize("fusion, protocol", [("concat", "zero_feature"), ("sum", "own_head")])
def test_mmpareto_step_uses_separate_gradients(fusion, protocol):
    """Each encoder gets pareto_gradients of the separately computed L^mm and L^m gradients (not accumulated), the
    fusion the gradient of L^mm + sum_m L^m; ``auto`` picks zero_feature under concat, own_head under sum."""
    model, batch = flat_model(fusion), flat_batch()
    reference = copy.deepcopy(model)
    out = reference(batch.inputs)
    fused = F.cross_entropy(out.logits, batch.label)
    logits = reference.unimodal_logits(batch.inputs, out, protocol)
    uni = {m: F.cross_entropy(z, batch.label) for m, z in logits.items()}
    encoders, fusion_names = split_names(reference)
    every = encoders + fusion_names
    g_mm, g_uni = grads(fused, reference, every), {m: grads(v, reference, every) for m, v in uni.items()}
    balancer, state, change = step("mmpareto", model, batch)
    assert balancer.protocol == protocol
    for n in fusion_names:
        assert torch.allclose(-change[n], g_mm[n] + sum(g[n] for g in g_uni.values()), atol=1e-6), n
    for m in model.modalities:
        names = [n for n in encoders if n.startswith(f"encoders.{m}.")]
        expected, cos, w = pareto_gradients([g_mm[n] for n in names], [g_uni[m][n] for n in names],
                                            [g_mm[n] + g_uni[m][n] for n in names])
        for n, e in zip(names, expected):
            assert torch.allclose(-change[n], e, rtol=1e-4, atol=1e-6), n
        assert float(state[f"cos_{m}"]) == pytest.approx(float(cos), abs=1e-5)
        assert float(state[f"weight_fused_{m}"]) == pytest.approx(float(w), abs=1e-5)


# ------------------------------------------------------------------------------------------ MLA
def test_owm_update_absorbs_a_direction():
    s = torch.tensor([3.0, 0.0, 4.0])
    p = owm_update(torch.eye(3), s, alpha=0.1)
    assert torch.allclose(p @ s, 0.1 / (0.1 + 25.0) * s, atol=1e-6)  # P s = alpha / (alpha + |s|^2) s
    assert torch.allclose(p @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))  # orthogonal: kept
    assert torch.allclose(p, p.T)
    assert float(torch.linalg.matrix_norm(owm_update(torch.eye(3), s, 0.1, "frobenius"))) == pytest.approx(1.0)
    assert owm_alpha(0, 10) == pytest.approx(0.1) and owm_alpha(5, 10) == pytest.approx(0.1 ** 1.5)


def _mla_step_on_modality_two(projection: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(change of the head's response W r_1 during the step on modality 2, |W change| of that step), where r_1 is
    the mean modality-1 feature the modality-1 step used."""
    torch.manual_seed(0)
    encoders = {m: nn.Sequential(nn.Linear(INPUTS[m], 6), nn.ReLU()) for m in ("audio", "visual")}
    for e in encoders.values():
        e.out_dim = 6
    model = MultimodalModel(encoders, SharedHeadFusion({m: 6 for m in encoders}, CLASSES))
    batch = flat_batch(scale=8.0)  # large mean features, |r_1|^2 >> alpha_t
    balancer, optimizer, context = setup("mla", model, batch, projection=projection)
    balancer.on_epoch_start(context, 0)
    with torch.no_grad():  # what the step's own forward pass computes (batch-norm batch statistics)
        r1 = copy.deepcopy(model).train()(batch.inputs).features["audio"].mean(0)
    snapshots = []
    real_step = optimizer.step

    def recording_step():
        real_step()
        snapshots.append(model.fusion.head.weight.detach().clone())

    optimizer.step = recording_step
    balancer.training_step(model, batch, optimizer)
    assert len(snapshots) == 2  # one optimizer step per modality
    moved = snapshots[1] - snapshots[0]
    return moved @ r1, moved.norm()


def test_mla_projection_keeps_earlier_modality_responses():
    """After the projected step on modality 2 the head's weight response to modality 1's mean feature has moved by
    about alpha_t / |r_1|^2 of an unprojected step's move (here < 1 %), though the head itself moved (the bias is
    not projected: it shifts every response alike)."""
    projected, projected_norm = _mla_step_on_modality_two(True)
    free, _ = _mla_step_on_modality_two(False)
    assert float(projected_norm) > 1e-3 and float(free.norm()) > 1e-2
    assert float(projected.norm()) < 0.01 * float(free.norm())


def test_mla_needs_a_shared_head_and_logs_each_modality():
    with pytest.raises(ValueError, match="shared_head"):
        setup("mla", flat_model("concat"), flat_batch())
    model, batch = flat_model("shared_head", k=3, dims=(6, 6, 6)), flat_batch(3)
    balancer, state, change = step("mla", model, batch)
    assert {"loss_audio", "loss_visual", "loss_text"} <= set(state)
    assert all(bool(change[n].abs().sum() > 0) for n in change if n.endswith("linear.weight"))
    restored = make("mla")
    restored.info = balancer.info
    restored.load_state_dict(balancer.state_dict())
    assert torch.equal(restored.projector, balancer.projector) and restored.batch_index == 1


def test_shared_head_entropy_gating():
    """w_m = exp(H_max - H_m) / sum_k exp(H_max - H_k): per sample (paper), over the batch axis (public code),
    equal weights (mean); the mean of the logits in training mode."""
    confident = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    flat = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    logits = torch.stack([confident, flat])

    def entropy(row):
        p = torch.softmax(row, 0)
        return float(-(p * p.log()).sum())

    h = [[entropy(confident[i]), entropy(flat[i])] for i in range(2)]
    for i in range(2):
        e = [math.exp(max(h[i]) - v) for v in h[i]]
        assert entropy_gates(logits, "sample")[:, i].tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-5)
    hb = [float(-(torch.softmax(z, 0) * torch.log_softmax(z, 0)).sum()) for z in (confident, flat)]
    e = [math.exp(max(hb) - v) for v in hb]
    assert entropy_gates(logits, "batch")[:, 0].tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-5)
    assert entropy_gates(logits, "mean").tolist() == [[0.5, 0.5], [0.5, 0.5]]
    fusion = SharedHeadFusion({"a": 3, "b": 3}, 3)
    features = {"a": torch.randn(2, 3), "b": torch.randn(2, 3)}
    z = torch.stack([fusion.head(features["a"]), fusion.head(features["b"])])
    assert torch.allclose(fusion(features), z.mean(0))
    fusion.eval()
    assert torch.allclose(fusion(features), (entropy_gates(z, "sample")[..., None] * z).sum(0), atol=1e-6)
    with pytest.raises(ValueError, match="one size"):
        SharedHeadFusion({"a": 3, "b": 4}, 3)


# ------------------------------------------------------------------------------------------ D&R
def test_dnr_purity_strength_and_interpolation():
    assert purity(torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 1, 2])) == pytest.approx(4 / 6)
    assert reinit_strength(abs(0.9 - 0.6), 3.0) == pytest.approx(math.tanh(0.9))
    p, p0 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    interpolate_([p], [p0], 0.25)
    assert torch.allclose(p, 0.25 * torch.tensor([0.0, 4.0]) + 0.75 * torch.tensor([1.0, 2.0]))
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.nn.functional.one_hot(labels, 3).float() * 10 + 0.1 * torch.randn(60, 3, generator=g)
    assert cluster_purity(features, labels, 3) == 1.0  # separated classes: every cluster is pure


def test_dnr_reinitialises_each_encoder_by_its_purity_gap(monkeypatch):
    """w_m = tanh(lambda |purity_train - purity_val|) from hand-set purities, theta_m <- w theta_init + (1 - w)
    theta_m for the encoders only, at the start of the epoch after epochs k * reinit_epoch, at most reinit_num."""
    model, batch = flat_model(), flat_batch()
    balancer, optimizer, context = setup("dnr", model, batch, reinit_epoch=2, reinit_num=2)
    assert [e for e in range(12) if balancer.due(e)] == [3, 5]
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        balancer.training_step(model, batch, optimizer)
    purities = iter([0.9, 0.6, 0.5, 0.5])  # audio train / val, visual train / val

    def hand_set(features, labels, n_clusters, n_init, seed):
        assert n_clusters == CLASSES and len(labels) == len(features)
        return next(purities)

    monkeypatch.setattr(dnr_module, "cluster_purity", hand_set)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    balancer.on_epoch_start(context, 3)
    w = {"audio": math.tanh(3 * 0.3), "visual": 0.0}
    for n, p in model.named_parameters():
        m = n.split(".")[1] if n.startswith("encoders.") else None
        expected = w[m] * init[n] + (1 - w[m]) * before[n] if m else before[n]
        assert torch.allclose(p, expected, atol=1e-6), n
    state = balancer.state()
    assert float(state["reinit_weight_audio"]) == pytest.approx(w["audio"])
    assert float(state["purity_gap_audio"]) == pytest.approx(0.3)


# ------------------------------------------------------------------------------------------ G-Blending
def test_g_blending_is_the_fused_loss_plus_alpha_unimodal_losses():
    model, batch = flat_model(), flat_batch()
    reference = copy.deepcopy(model)
    out = reference(batch.inputs)
    loss = F.cross_entropy(out.logits, batch.label) + 3.0 * sum(
        F.cross_entropy(z, batch.label) for z in reference.unimodal_logits(batch.inputs, out, "zero_feature").values())
    expected = grads(loss, reference, [n for n, _ in reference.named_parameters()])
    balancer, state, change = step("g_blending", model, batch, alpha=3.0)
    close({n: -c for n, c in change.items()}, expected)
    assert float(state["weight_fused"]) == 1.0 and float(state["weight_audio"]) == 3.0
    assert make("g_blending").cfg.alpha == 4.0 and make("ogr_gb").cfg.weights == "estimated"


# ------------------------------------------------------------------------------------------ three modalities
def test_ogm_coefficients_three_modalities():
    """rho^u = s^u / min s (BalanceMM's rule): every modality but the weakest is slowed by its own ratio."""
    labels = torch.zeros(4, dtype=torch.long)
    probs = {"a": 0.75, "b": 0.5, "c": 0.25}  # two classes: logit difference log(p / (1 - p)) gives P(y) = p
    logits = {m: torch.tensor([[math.log(p / (1 - p)), 0.0]] * 4) for m, p in probs.items()}
    ratios, coeffs = ogm_coefficients(logits, labels, alpha=0.5)
    assert [float(ratios[m]) for m in "abc"] == pytest.approx([3.0, 2.0, 0.5], rel=1e-5)
    assert [float(coeffs[m]) for m in "abc"] == pytest.approx([1 - math.tanh(1.5), 1 - math.tanh(1.0), 1.0],
                                                              rel=1e-5)


def test_agm_coefficients_three_modalities():
    scores, running = torch.tensor([-0.2, -1.0, -2.1]), torch.tensor([-0.5, -0.8, -1.5])
    ratio, target, k = agm_coefficients(scores, running, alpha=1.5, cap=10.0)
    assert torch.allclose(ratio, torch.exp(1.5 * (scores - scores.mean())))
    assert torch.allclose(target, torch.exp(1.5 * (running - running.mean())))
    assert torch.allclose(k, torch.exp(1.5 * (target - ratio).clamp(max=10.0)))
    assert float(k[0]) < 1 < float(k[2])  # the modality ahead of its usual share is slowed, the one behind sped up


def test_pmr_coefficients_three_modalities():
    """Every modality weaker than the strongest gets the prototype loss, by its own ratio s^dom / s^m."""
    scores = torch.tensor([6.0, 4.0, 2.0])
    rho, strength, dominant = pmr_coefficients(scores, alpha=2.0, mode="proportional")
    assert float(rho) == 3.0 and dominant.tolist() == [1.0, 0.0, 0.0]
    assert strength.tolist() == pytest.approx([0.0, 2.0 * 0.5, 2.0 * 2.0])
    _, constant, _ = pmr_coefficients(scores, alpha=2.0, mode="constant")
    assert constant.tolist() == [0.0, 2.0, 2.0]


THREE = [("ogm_ge", {}), ("ogm_ge", {"protocol": "zero_feature"}), ("agm", {}), ("pmr", {}),
         ("dgl", {}), ("mmpareto", {}), ("g_blending", {}), ("dnr", {})]


@pytest.mark.parametrize("fusion", ["sum", "concat"])
@pytest.mark.parametrize("name, params", THREE, ids=lambda v: v if isinstance(v, str) else "")
def test_three_modality_step(name, params, fusion):
    model, batch = flat_model(fusion, 3), flat_batch(3)
    balancer, state, change = step(name, model, batch, **params)
    assert math.isfinite(float(state["loss"])) and all(bool(torch.isfinite(v)) for v in state.values())
    for m in model.modalities:
        assert any(bool(c.abs().sum() > 0) for n, c in change.items() if n.startswith(f"encoders.{m}.")), m
    if name == "pmr":
        weakest = min(model.modalities, key=lambda m: float(state[f"score_{m}"]))
        strongest = max(model.modalities, key=lambda m: float(state[f"score_{m}"]))
        assert float(state[f"pce_coeff_{strongest}"]) == 0.0
        assert float(state[f"pce_coeff_{weakest}"]) == (1.0 if float(state["ratio"]) > 1 else 0.0)


# ------------------------------------------------------------------------------------------ Fig. 3(a) probe
def test_suppression_against_a_hand_computation():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])  # (classes, D)
    z = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    total = 0.0
    for zi, yi in zip(z.tolist(), y.tolist()):
        scores = [sum(a * b for a, b in zip(row, zi)) for row in w.tolist()]
        total += sum(math.exp(scores[k] - scores[yi]) for k in range(3) if k != yi)
    assert float(suppression_sums(z, y, w)) == pytest.approx(total)
    model, batch = flat_model("concat"), flat_batch()
    probes = evaluate_probes(model, [batch, batch], ["suppression"])
    model.eval()
    with torch.no_grad():
        out = model(batch.inputs)
    for m in model.modalities:
        expected = float(suppression_sums(out.features[m], batch.label, model.fusion.blocks[m].weight.detach()))
        assert probes["suppression"][m] == pytest.approx(expected / (len(batch) * (CLASSES - 1)), rel=1e-6)
    weights = modality_head_weights(mmtm_model()[0].fusion)
    assert set(weights) == {"audio", "visual"}
    with pytest.raises(ValueError, match="unknown probes"):
        check_probes(["gradient"], model.fusion)
    with pytest.raises(ValueError, match="one per modality"):
        check_probes(["suppression"], flat_model("mlp_mixer", dim=8, token_hidden=4, channel_hidden=8).fusion)


def test_trainer_logs_the_probe(make_config, prepared_layout, tmp_path):
    from mmlib import experiments

    rec = experiments.run(make_config(prepared_layout, **{"train.epochs": 1, "train.probes": ["suppression"],
                                                          "balancer.name": "dgl"}), root=tmp_path)
    values = rec.history[0]["probes"]["suppression"]
    assert set(values) == {"audio", "visual"} and all(v > 0 and math.isfinite(v) for v in values.values())
    assert {"loss_fused", "loss_audio", "loss_visual"} <= set(rec.steps)
