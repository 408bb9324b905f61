"""Formula-level tests of the balancers against the papers' equations, on fixed tiny inputs."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmlib.balancers import masking
from mmlib.balancers.agm import agm_coefficients, imbalance_ratios, mono_scores, shapley_responses
from mmlib.balancers.amss import (
    AMSSPlus,
    feature_softmax_entropy,
    label_entropy,
    mutual_information_bound,
    official_code_ratios,
    official_label_entropy,
    update_ratios,
)
from mmlib.balancers.common import scaled_lr_step
from mmlib.balancers.domfn import domfn_loss, penalty_scores
from mmlib.balancers.mses import plateau_update
from mmlib.balancers.mslr import smooth_factor
from mmlib.balancers.ogm_ge import ogm_coefficients
from mmlib.balancers.ogr_gb import blending_weights
from mmlib.balancers.pmr import pmr_coefficients, prototype_logits, prototype_scores, prototypical_entropy

LOGITS_A = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
LOGITS_V = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.1, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
LABELS = torch.tensor([0, 1, 2, 0])


def softmax_row(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def true_class_probs(logits, labels):
    return [softmax_row(r.tolist())[y] for r, y in zip(logits, labels.tolist())]


# ------------------------------------------------------------------------------------------ AMSS Eq. 2-4
def test_update_ratio_eq4_matches_hand_values_and_tau_amplifies():
    u = torch.tensor([0.3, 0.1])
    rho = update_ratios(u, 0.25)
    e1, e2 = math.exp(0.3 / 0.25), math.exp(0.1 / 0.25)
    assert rho.tolist() == pytest.approx([1 - e1 / (e1 + e2), 1 - e2 / (e1 + e2)], abs=1e-6)
    assert rho[0] < rho[1]  # the more significant modality updates fewer parameters
    gaps = [float(update_ratios(u, tau).diff().abs()) for tau in (0.1, 0.25, 1.0, 4.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 3 * gaps[-1]  # tau < 1 amplifies, tau > 1 flattens


def test_update_ratio_k3_and_k1():
    u = torch.tensor([0.5, 0.2, -0.1])
    rho = update_ratios(u, 0.5)
    e = [math.exp(v / 0.5) for v in u.tolist()]
    assert rho.tolist() == pytest.approx([1 - v / sum(e) for v in e], abs=1e-6)
    assert float(rho.sum()) == pytest.approx(2.0) and rho[0] < rho[1] < rho[2]
    with pytest.raises(ValueError, match="two modalities"):
        update_ratios(torch.tensor([0.3]), 0.25)


def test_modal_significance_eq2_hand_values():
    h = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.25 * math.log(0.25))
    assert float(label_entropy(LABELS, 4)) == pytest.approx(h, abs=1e-6)  # an absent class contributes 0
    ce = -sum(math.log(p) for p in true_class_probs(LOGITS_A, LABELS)) / 4
    bound = mutual_information_bound(LOGITS_A, LABELS, label_entropy(LABELS, 3))
    assert float(bound) == pytest.approx(h - ce, abs=1e-5)
    freq = [0.5, 0.25, 0.25]
    code = -sum(f * math.log(s) for f, s in zip(freq, softmax_row(freq)))
    assert float(official_label_entropy(LABELS, 3)) == pytest.approx(code, abs=1e-6)
    assert float(feature_softmax_entropy(torch.ones(5, 8))) == pytest.approx(math.log(8), abs=1e-6)


def test_official_code_ratios_clamp_and_fallback():
    feats = {"audio": torch.ones(4, 8), "visual": torch.ones(4, 8)}
    strong = {"audio": LOGITS_A * 10, "visual": torch.zeros(4, 3)}
    _, rho = official_code_ratios(strong, feats, LABELS, 3, 0.2)
    assert torch.all((rho >= 0.1) & (rho <= 0.9)) and rho[0] < rho[1]
    bad = {"audio": -LOGITS_A * 20, "visual": torch.zeros(4, 3)}  # -CE + H + 0.5 <= 0 for audio
    _, rho = official_code_ratios(bad, feats, LABELS, 3, 0.2)
    assert rho.tolist() == [0.5, 0.5]


# ------------------------------------------------------------------------------------------ masks
def toy_layout(heads: bool = True):
    torch.manual_seed(0)
    conv, lin, attn = nn.Conv2d(2, 6, 3), nn.Linear(4, 5), nn.Linear(4, 8)
    if heads:
        attn.weight.mask_unit = ("head", 4, 0)
    params = [conv.weight, conv.bias, lin.weight, attn.weight]
    for p in params:
        p.grad = torch.randn_like(p) * torch.rand(p.shape[0]).view(-1, *([1] * (p.dim() - 1)))
    return masking.build_layout(params, masking.conv_weights(conv), "cpu"), params


def test_layout_units():
    layout, _ = toy_layout()
    assert layout.layer_size.tolist() == [6, 6, 20, 4]  # conv: out channels; bias, linear: elements; heads
    with pytest.raises(ValueError, match="heads"):
        w = nn.Parameter(torch.zeros(6, 4))
        w.mask_unit = ("head", 4, 0)
        masking.build_layout([w], set(), "cpu")


@pytest.mark.parametrize("method", masking.SAMPLING)
@pytest.mark.parametrize("rho", [0.05, 0.3, 0.5, 0.71, 1.0])
def test_each_layer_draws_exactly_ceil_rho_n(method, rho):
    layout, _ = toy_layout()
    weights = masking.layer_distribution(masking.unit_importance(layout), layout)
    count = masking.units_per_layer(torch.tensor(rho, dtype=torch.float64), layout)
    expected = [math.ceil(rho * n) for n in (6, 6, 20, 4)]
    assert count.tolist() == expected
    for _ in range(20):
        selected, pi = masking.sample_units(weights, count, layout, method)
        assert masking.segment_sum(selected.double(), layout).tolist() == expected
        if pi is not None:
            assert masking.segment_sum(pi, layout).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("method", ["importance", "systematic"])
def test_high_importance_units_are_drawn_more_often(method):
    imp = torch.tensor([8.0, 4.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    layout = masking.build_layout([nn.Parameter(torch.zeros(8))], set(), "cpu")
    weights = masking.layer_distribution(imp, layout)
    count = masking.units_per_layer(torch.tensor(0.25), layout)
    freq = sum(masking.sample_units(weights, count, layout, method)[0].double() for _ in range(2000)) / 2000
    assert freq[0] > freq[1] > freq[2] > freq[4] > freq[5] and freq[5] < 0.01


def test_capped_inclusion_probabilities():
    w = torch.tensor([0.7, 0.2, 0.05, 0.05], dtype=torch.float64)
    layout = masking.build_layout([nn.Parameter(torch.zeros(4))], set(), "cpu")
    pi = masking.inclusion_probabilities(w, torch.tensor([2.0], dtype=torch.float64), layout)
    # 2 * 0.7 > 1: unit 0 is certain; the remaining draw is shared 0.2 : 0.05 : 0.05
    assert pi.tolist() == pytest.approx([1.0, 1 / 1.5, 0.5 / 3, 0.5 / 3])


def monte_carlo_masked_gradient(scaling: str, sampling: str, rho: float, draws: int):
    """Mean over ``draws`` masks of g * m_hat with AMSS+'s multipliers; returns (layout, g per unit, mean)."""
    layout, _ = toy_layout()
    balancer = AMSSPlus(scaling=scaling, sampling=sampling)
    balancer._state = {}
    importance = masking.unit_importance(layout)
    weights = masking.layer_distribution(importance, layout)
    count = masking.units_per_layer(torch.tensor(rho), layout)
    total = torch.zeros_like(importance)
    for _ in range(draws):
        selected, pi = masking.sample_units(weights, count, layout, sampling)
        total += balancer.multipliers(selected, pi, importance, weights, layout, "m")
    return layout, importance.sqrt(), total / draws


@pytest.mark.parametrize("sampling", ["systematic", "random"])
def test_exact_scaling_gives_an_unbiased_masked_gradient(sampling):
    """E[g * m_hat] = g with m_hat = 1/pi_j on drawn units (Eq. 5): per layer, the Monte-Carlo mean of the
    multiplier-weighted unit gradient norms is within 6% of ||g_l|| of the true g (the per-unit standard error
    is <= ||g_l|| / sqrt(n_l * draws) ~ 1.3%); the 0/1 mask of AMSS misses it by far."""
    layout, g, mean_mult = monte_carlo_masked_gradient("exact", sampling, 0.3, 6000)
    for l in range(4):
        s = slice(int(layout.layer_start[l]), int(layout.layer_start[l] + layout.layer_size[l]))
        assert float((g[s] * mean_mult[s] - g[s]).abs().max()) < 0.06 * float(g[s].norm()), l
    # AMSS's 0/1 mask keeps on average about rho of the gradient: clearly biased
    layout_b, _ = toy_layout()
    imp = masking.unit_importance(layout_b)
    w = masking.layer_distribution(imp, layout_b)
    cnt = masking.units_per_layer(torch.tensor(0.3), layout_b)
    biased = sum(masking.sample_units(w, cnt, layout_b, sampling)[0].double() for _ in range(500)) / 500
    assert float((g * biased - g).abs().max()) > 0.2 * float(g.max())


def test_amss_plus_default_is_the_unbiased_form():
    """The default AMSS+ (no parameters) draws units so that E[m_hat] g = g: the property amss.md §3.3 states."""
    defaults = AMSSPlus().cfg
    assert (defaults.scaling, defaults.sampling) == ("exact", "systematic")
    layout, g, mean_mult = monte_carlo_masked_gradient(defaults.scaling, defaults.sampling, 0.3, 6000)
    for l in range(4):
        s = slice(int(layout.layer_start[l]), int(layout.layer_start[l] + layout.layer_size[l]))
        assert float((g[s] * mean_mult[s] - g[s]).abs().max()) < 0.06 * float(g[s].norm()), l
    # the printed 1/(p_j + C_l) keeps a small fraction of the gradient: far from unbiased
    _, _, printed = monte_carlo_masked_gradient("paper", defaults.sampling, 0.3, 500)
    assert float(printed.max()) < 0.5
    assert AMSSPlus(variant="official_code").cfg.scaling == "official_code"


def test_scaling_forms():
    layout, _ = toy_layout()
    imp = masking.unit_importance(layout)
    w = masking.layer_distribution(imp, layout)
    selected = torch.ones(layout.num_units, dtype=torch.bool)
    size = layout.layer_size[layout.layer_of_unit]
    for scaling, expected in [("paper", 1 / (imp / imp.sum() + size)), ("official_code", 1 / (w + 1 / size))]:
        b = AMSSPlus(scaling=scaling)
        b._state = {}
        assert torch.allclose(b.multipliers(selected, None, imp, w, layout, "m"), expected)
    with pytest.raises(ValueError, match="exact"):
        AMSSPlus(scaling="exact", sampling="importance")


def test_unit_multipliers_broadcast_to_elements():
    layout, params = toy_layout()
    before = [p.grad.clone() for p in params]
    mult = torch.arange(layout.num_units, dtype=torch.float64)
    masking.apply_unit_multipliers(layout, mult)
    conv_w, conv_b, lin_w, attn_w = params
    assert torch.allclose(conv_w.grad, before[0] * torch.arange(6.0).view(6, 1, 1, 1))
    assert torch.allclose(conv_b.grad, before[1] * torch.arange(6.0, 12.0))
    assert torch.allclose(lin_w.grad, before[2] * torch.arange(12.0, 32.0).view(5, 4))
    heads = torch.arange(32.0, 36.0).repeat_interleave(2).view(8, 1)  # 4 heads of 2 rows each
    assert torch.allclose(attn_w.grad, before[3] * heads)


# ------------------------------------------------------------------------------------------ OGM-GE
def test_ogm_coefficients_hand_values():
    s_a, s_v = sum(true_class_probs(LOGITS_A, LABELS)), sum(true_class_probs(LOGITS_V, LABELS))
    ratios, coeffs = ogm_coefficients({"audio": LOGITS_A, "visual": LOGITS_V}, LABELS, alpha=0.5)
    assert float(ratios["audio"]) == pytest.approx(s_a / s_v, rel=1e-5)
    assert float(ratios["visual"]) == pytest.approx(s_v / s_a, rel=1e-5)
    dominant, weak = ("audio", "visual") if s_a > s_v else ("visual", "audio")
    assert float(coeffs[dominant]) == pytest.approx(1 - math.tanh(0.5 * float(ratios[dominant])), rel=1e-5)
    assert float(coeffs[weak]) == 1.0


# ------------------------------------------------------------------------------------------ AGM
def test_agm_shapley_responses_scores_and_coefficients():
    f_a, f_v, f_av = LOGITS_A, LOGITS_V, LOGITS_A + LOGITS_V + 0.3
    out = {frozenset({"a"}): f_a, frozenset({"v"}): f_v, frozenset({"a", "v"}): f_av}
    r = shapley_responses(out, ["a", "v"])
    assert torch.allclose(r["a"], 0.5 * (f_av - f_v + f_a)) and torch.allclose(r["v"], 0.5 * (f_av - f_a + f_v))
    scores = mono_scores(r, LABELS)
    hand = [sum(math.log(max(p, 1e-8)) for p in true_class_probs(r[m], LABELS)) / 4 for m in ("a", "v")]
    assert scores.tolist() == pytest.approx(hand, abs=1e-5)
    assert imbalance_ratios(scores).tolist() == pytest.approx(
        [math.exp(hand[0] - hand[1]), math.exp(hand[1] - hand[0])], rel=1e-5)
    running = torch.tensor([-1.0, -1.2])
    ratio, target, k = agm_coefficients(scores, running, alpha=1.5, cap=10.0)
    t = [math.exp(0.2), math.exp(-0.2)]
    assert target.tolist() == pytest.approx(t, rel=1e-5)
    assert k.tolist() == pytest.approx([math.exp(1.5 * (t[i] - float(ratio[i]))) for i in range(2)], rel=1e-5)
    _, _, capped = agm_coefficients(torch.tensor([-9.0, 0.0]), torch.tensor([0.0, -9.0]), alpha=1.0, cap=2.0)
    assert float(capped[0]) == pytest.approx(math.exp(2.0))


def test_agm_shapley_three_modalities_is_efficient():
    torch.manual_seed(0)
    mods = ["a", "v", "t"]
    out = {frozenset(s): torch.randn(2, 3) for s in (["a"], ["v"], ["t"], ["a", "v"], ["a", "t"], ["v", "t"], mods)}
    r = shapley_responses(out, mods)
    assert torch.allclose(sum(r.values()), out[frozenset(mods)], atol=1e-6)  # sum_m r^m = f(all) - f(empty)
    f = {"".join(sorted(k)): v for k, v in out.items()}
    expected_a = f["a"] / 3 + (f["av"] - f["v"]) / 6 + (f["at"] - f["t"]) / 6 + (f["atv"] - f["tv"]) / 3
    assert torch.allclose(r["a"], expected_a, atol=1e-6)


# ------------------------------------------------------------------------------------------ PMR
def test_pmr_prototype_quantities_hand_values():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    protos = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    logits = prototype_logits(feats, protos)
    assert logits.flatten().tolist() == pytest.approx([0.0, -3.0, -4.0, -5.0, -4.0, -3.0], abs=1e-5)
    labels = torch.tensor([0, 2])
    p = [softmax_row([0.0, -3.0, -4.0])[0], softmax_row([-5.0, -4.0, -3.0])[2]]
    scores = prototype_scores({"a": logits, "v": logits * 0.1}, labels)
    q = [softmax_row([0.0, -0.3, -0.4])[0], softmax_row([-0.5, -0.4, -0.3])[2]]
    assert scores.tolist() == pytest.approx([sum(p), sum(q)], abs=1e-5)
    rho, beta, dominant = pmr_coefficients(scores, alpha=2.0, mode="proportional")
    assert float(rho) == pytest.approx(sum(p) / sum(q), rel=1e-5)
    assert beta.tolist() == pytest.approx([0.0, 2.0 * (sum(p) / sum(q) - 1)], rel=1e-5)
    assert dominant.tolist() == [1, 0]
    _, beta_code, _ = pmr_coefficients(scores, alpha=2.0, mode="constant")
    assert beta_code.tolist() == [0.0, 2.0]
    h = -sum(v * math.log(v) for v in softmax_row([0.0, -3.0, -4.0]))
    h2 = -sum(v * math.log(v) for v in softmax_row([-5.0, -4.0, -3.0]))
    assert float(prototypical_entropy(logits)) == pytest.approx((h + h2) / 2, abs=1e-5)


# ------------------------------------------------------------------------------------------ G-Blending, DOMFN
def test_gradient_blending_weights_hand_values():
    start = {"fused": {"train": 2.0, "val": 2.1}, "a": {"train": 2.0, "val": 2.05}, "v": {"train": 2.0, "val": 2.0}}
    end = {"fused": {"train": 1.0, "val": 1.6}, "a": {"train": 1.5, "val": 1.65}, "v": {"train": 1.9, "val": 2.1}}
    w = blending_weights(start, end)
    raw = {"fused": 0.5 / (0.6 - 0.1) ** 2, "a": 0.4 / (0.15 - 0.05) ** 2, "v": 0.0}
    assert w == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
    assert blending_weights(end, end) is None  # nobody generalised better: keep the old weights


def test_domfn_penalty_and_fusion_decision():
    uni = {"a": LOGITS_A, "v": LOGITS_V}
    fused = LOGITS_A + LOGITS_V
    d = penalty_scores(uni, fused)
    for m, z in uni.items():
        for i in range(4):
            pm, pf = softmax_row(z[i].tolist()), softmax_row(fused[i].tolist())
            assert float(d[m][i]) == pytest.approx(max((x - y) ** 2 for x, y in zip(pm, pf)), abs=1e-6)
    fuse = [all(float(d[m][i]) / 2.0 < 0.1 for m in uni) for i in range(4)]
    loss, fraction, _ = domfn_loss(uni, fused, LABELS, eta=0.1, tau=2.0, gamma=0.1)
    assert float(fraction) == pytest.approx(sum(fuse) / 4) and 0 < sum(fuse) < 4
    ce = {m: [-math.log(p) for p in true_class_probs(z, LABELS)] for m, z in {**uni, "f": fused}.items()}
    hand = sum(sum(0.5 * ce[m][i] ** 2 - 0.1 * float(d[m][i]) for m in uni)
               + fuse[i] * (ce["a"][i] + ce["v"][i] + ce["f"][i]) for i in range(4)) / 4
    assert float(loss) == pytest.approx(hand, rel=1e-5)


# ------------------------------------------------------------------------------------------ MSES, MSLR
def test_plateau_and_smooth_schedules():
    assert plateau_update(1.0, 0.9, 2, 3) == (0.9, 0, False)
    assert plateau_update(1.0, 1.1, 1, 3) == (1.0, 2, False)
    assert plateau_update(1.0, 1.1, 2, 3) == (1.0, 0, True)
    # a branch still at chance level (best loss above the threshold) has not converged: it is never stopped
    assert plateau_update(1.7, 1.8, 2, 3, converged_below=0.9 * math.log(6)) == (1.7, 0, False)
    assert plateau_update(1.0, 1.1, 2, 3, converged_below=0.9 * math.log(6)) == (1.0, 0, True)
    assert [smooth_factor(3.0, e, 5) for e in range(5)] == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0])


def test_scaled_lr_step_scales_one_group_and_restores_lr():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [a], "name": "audio"}, {"params": [b], "name": "visual"}], lr=0.1)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    scaled_lr_step(opt, {"audio": 0.5, "visual": 0.0})
    assert a.tolist() == pytest.approx([0.95, 0.95]) and b.tolist() == [1.0, 1.0]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
