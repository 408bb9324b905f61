"""The Greedy paper's measures and balancers (greedy.md §4.1, §5, §6.3-6.4): d_util from accuracies, mu and d_speed
against a hand computation, Algorithm 1's switching and gates, the random version, vanilla and RUBi losses, the L1
penalty and R(f), K = 3, d_util's symmetry under swapped modalities, and the measures in a run's record."""
from __future__ import annotations

import copy
import math
import statistics
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmlib import experiments
from mmlib.balancers import Batch, make
from mmlib.balancers.rubi import rubi_loss
from mmlib.models.multimodal import build_model
from mmlib.train import build_optimizer
from mmlib.utilization import (StepMonitor, add_l1_penalty, conditional_utilization, learning_speeds, sparsity,
                               speeds_at, utilization_rates)

CLASSES = 3
MODALITIES = ("m0", "m1", "m2")


def tiny_mmtm(k: int = 2, seed: int = 0, channels: int = 1, fusion: str = "mmtm"):
    torch.manual_seed(seed)
    spec = SimpleNamespace(encoders={m: {"name": "convnet4", "width": 2} for m in MODALITIES[:k]},
                           fusion={"name": fusion})
    return build_model(spec, {m: channels for m in MODALITIES[:k]}, CLASSES)


def batches(k: int = 2, count: int = 4, size: int = 8, seed: int = 1, identical: bool = False):
    """Random 8x8 images whose labels a fixed random teacher reads from the first modality."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(64, CLASSES, generator=torch.Generator().manual_seed(99))
    out = []
    for _ in range(count):
        first = torch.randn(size, 1, 8, 8, generator=g)
        inputs = {m: first if identical or i == 0 else torch.randn(size, 1, 8, 8, generator=g)
                  for i, m in enumerate(MODALITIES[:k])}
        out.append(Batch(inputs, (first.flatten(1) @ teacher).argmax(1)))
    return out


def sgd(model, lr=0.1, momentum=0.0, **extra):
    return build_optimizer(model, SimpleNamespace(name="sgd", lr=lr, momentum=momentum, weight_decay=0.0, **extra))


def hand_groups(model, m: str) -> tuple[list, list]:
    """theta_m (branch m's encoder and head) and theta'_m (every MMTM's squeeze and m's excitation), by name."""
    named = list(model.named_parameters())
    branch = [p for n, p in named if n.startswith((f"encoders.{m}.", f"fusion.heads.{m}."))]
    bypass = [p for n, p in named if n.startswith("fusion.mmtm.") and (".squeeze." in n or f".excite.{m}." in n)]
    return branch, bypass


def hand_mu(params) -> float:
    grad = sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None)
    return grad / sum(float(p.detach().double().square().sum()) for p in params)


# ----------------------------------------------------------------------------------------- d_util (eq. 9-10)
def test_d_util_from_hand_set_accuracies():
    r = utilization_rates({"m0": 0.8, "m1": 0.5}, {"m0": 0.4, "m1": 0.45})
    assert r["u"]["m0"] == pytest.approx(0.5)  # u(m1|m0) = (A(f0) - A(f'0)) / A(f0)
    assert r["u"]["m1"] == pytest.approx(0.1)  # u(m0|m1) = (A(f1) - A(f'1)) / A(f1)
    assert r["d_util"] == pytest.approx(0.4) and r["pair"] == ["m0", "m1"]
    three = utilization_rates({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 0.9, "b": 0.7, "c": 0.5})  # u = .1, .3, .5
    assert three["pair"] == ["a", "c"] and three["d_util"] == pytest.approx(-0.4)  # most different, in order
    dead = utilization_rates({"a": 0.0, "b": 0.5}, {"a": 0.0, "b": 0.25})
    assert dead["u"]["a"] is None and dead["d_util"] is None


# ------------------------------------------------------------------------------- mu and d_speed (eq. 11-12)
def test_mu_and_d_speed_against_a_hand_computation_over_sgd_steps():
    model = tiny_mmtm()
    optimizer = sgd(model, momentum=0.9)  # with momentum the step is not -lr G: G must be read, not inferred
    balancer = make("vanilla").attach(model, optimizer, epochs=1, steps_per_epoch=4, num_classes=CLASSES)
    monitor = StepMonitor.for_model(model, "auto")
    steps, hand = {}, {"branch": {m: [] for m in MODALITIES[:2]}, "bypass": {m: [] for m in MODALITIES[:2]}}
    for batch in batches():
        state = {**balancer.training_step(model, batch, optimizer), **monitor()}
        for key, value in state.items():
            steps.setdefault(key, []).append(float(value))
        for m in MODALITIES[:2]:
            branch, bypass = hand_groups(model, m)
            hand["branch"][m].append(hand_mu(branch))
            hand["bypass"][m].append(hand_mu(bypass))
            encoder = [p for n, p in model.named_parameters() if n.startswith(f"encoders.{m}.")]
            assert steps[f"grad_sq/{m}"][-1] == pytest.approx(sum(float(p.grad.square().sum()) for p in encoder),
                                                              rel=1e-5)
    for part in ("branch", "bypass"):
        for m in MODALITIES[:2]:
            assert steps[f"mu_{part}/{m}"] == pytest.approx(hand[part][m], rel=1e-5), (part, m)
    at_3 = speeds_at(steps, ["m0", "m1"], [3])[0]
    s = {m: math.log(sum(hand["bypass"][m][:3]) / sum(hand["branch"][m][:3])) for m in ("m0", "m1")}
    assert at_3["steps"] == 3 and at_3["s"] == pytest.approx(s, rel=1e-5)
    assert at_3["d_speed"] == pytest.approx(s["m0"] - s["m1"], rel=1e-4)  # s(m1|m0) - s(m0|m1)
    assert learning_speeds({"a": 10.0, "b": 0.0}, {"a": 1.0, "b": 1.0})["d_speed"] is None  # log 0 undefined


def test_greedy_accumulates_mu_over_regular_steps_as_algorithm_1():
    model = tiny_mmtm()
    optimizer = sgd(model)
    guided = make("greedy").attach(model, optimizer, epochs=2, steps_per_epoch=4, num_classes=CLASSES)
    sums = {(part, m): 0.0 for part in ("branch", "bypass") for m in ("m0", "m1")}
    for batch in batches():  # the warm-up epoch: regular steps only
        d = float(guided.training_step(model, batch, optimizer)["d_speed"])
        for m in ("m0", "m1"):
            branch, bypass = hand_groups(model, m)
            sums["branch", m] += hand_mu(branch)
            sums["bypass", m] += hand_mu(bypass)
        expected = (math.log(sums["bypass", "m0"] / sums["branch", "m0"])
                    - math.log(sums["bypass", "m1"] / sums["branch", "m1"]))
        assert d == pytest.approx(expected, rel=1e-4)  # log(M_0'/M_0) - log(M_1'/M_1)
    assert guided.remaining == 0 and guided.next_mode() == -1  # nothing decided during the warm-up


def test_greedy_log10_option_divides_d_speed_by_ln_10():
    states = {}
    for log in ("ln", "log10"):
        model = tiny_mmtm()
        optimizer = sgd(model)
        balancer = make("greedy", log=log).attach(model, optimizer, epochs=1, steps_per_epoch=4,
                                                  num_classes=CLASSES)
        states[log] = [float(balancer.training_step(model, b, optimizer)["d_speed"]) for b in batches()]
    assert states["log10"] == pytest.approx([d / math.log(10) for d in states["ln"]], rel=1e-5)


# --------------------------------------------------------------------------------- Algorithm 1's switching
def test_algorithm_1_switches_exactly_when_d_speed_exceeds_alpha_for_q_steps_and_freezes_the_right_gate():
    model = tiny_mmtm()
    optimizer = sgd(model)
    q, alpha = 3, 0.125  # a binary fraction: d = alpha exactly in float32 too
    guided = make("greedy", alpha=alpha, window=q).attach(model, optimizer, epochs=4, steps_per_epoch=2,
                                                            num_classes=CLASSES)
    # scripted s = (d, 0) at each regular step, so d_speed = s0 - s1 = d: 2 warm-up steps (never switch), then
    # 0.05 (no), 0.3 (accelerate m0 for q steps), -0.2 (m1 for q steps), 0.125 (= alpha: no), -0.126 (m1)
    script = iter([5.0, -5.0, 0.05, 0.3, -0.2, 0.125, -0.126])
    calls = []

    def scripted():
        calls.append(guided.sums.clone())
        return torch.tensor([next(script), 0.0])

    guided.speeds = scripted
    expected = [-1, -1, -1, -1, *[0] * q, -1, *[1] * q, -1, -1, *[1] * q]
    data = batches(count=len(expected))
    noise = {m: torch.randn_like(data[0].inputs[m]) for m in ("m0", "m1")}
    seen: list[tuple] = []
    busy = []

    def check_gates(module, args, output):
        """In the training forward pass: which gate is frozen; does branch 0 depend on input m1, branch 1 on m0?"""
        if busy:
            return
        busy.append(1)
        inputs, branches = args[0], output.extras["branch_logits"]
        fixed = {}
        with torch.no_grad():
            for m, other in (("m0", "m1"), ("m1", "m0")):
                moved = module({**inputs, other: inputs[other] + noise[other]}).extras["branch_logits"]
                fixed[m] = torch.allclose(branches[m], moved[m])
        busy.clear()
        seen.append((model.fusion._frozen_gate, fixed["m0"], fixed["m1"]))

    hook = model.register_forward_hook(check_gates)
    logged = [guided.training_step(model, batch, optimizer) for batch in data]
    hook.remove()
    accelerated = [int(s["accelerated"]) for s in logged]
    assert accelerated == expected
    assert [float(s["rebalancing"]) for s in logged] == [float(a >= 0) for a in expected]
    assert len(calls) == expected.count(-1)  # the M's are read at regular steps only ...
    assert not torch.equal(calls[0], calls[1])  # ... and grow there
    for (frozen, m0_alone, m1_alone), a in zip(seen, expected):
        # accelerating m: m's excitation is w_bar and branch m reads m only; the other branch still sees m
        assert frozen == ({MODALITIES[a]} if a >= 0 else frozenset())
        assert (m0_alone, m1_alone) == (a == 0, a == 1)
    saved = guided.state_dict()
    restored = make("greedy", alpha=alpha, window=q).attach(model, optimizer, epochs=4, steps_per_epoch=2,
                                                              num_classes=CLASSES)
    restored.load_state_dict(saved)
    assert restored.next_mode() == guided.next_mode() and torch.equal(restored.sums, guided.sums)


@pytest.mark.parametrize("running_average, moves", [("regular_steps", False), ("every_step", True)])
def test_rebalancing_steps_leave_the_running_excitation_unless_every_step(running_average, moves):
    model = tiny_mmtm()
    optimizer = sgd(model)
    random = make("greedy_random", warmup_epochs=0, running_average=running_average)
    random.attach(model, optimizer, epochs=1, steps_per_epoch=1, num_classes=CLASSES)
    module = model.fusion.mmtm["conv4"]
    for batch in batches(count=12):
        seen, w_bar = float(module.samples_seen), module.running_excitation("m0").clone()
        state = random.training_step(model, batch, optimizer)
        if float(state["rebalancing"]):
            assert (float(module.samples_seen) > seen) == moves
            assert (not torch.equal(module.running_excitation("m0"), w_bar)) == moves
        else:
            assert float(module.samples_seen) == seen + len(batch)


def test_random_version_draws_uniformly_after_the_warm_up_and_is_reproducible():
    def modes(seed, steps=300, state=None):
        model = tiny_mmtm()
        torch.manual_seed(seed)  # the run's generator, which seeds the balancer's
        balancer = make("greedy_random").attach(model, sgd(model), epochs=3, steps_per_epoch=5,
                                                num_classes=CLASSES)
        if state is not None:
            balancer.load_state_dict(state)
        drawn = []
        for _ in range(steps):
            drawn.append(balancer.next_mode())
            balancer.steps_done += 1
        return drawn, balancer.state_dict()

    first, state = modes(0)
    assert first[:5] == [-1] * 5  # the warm-up epoch
    counts = [first[5:].count(mode) for mode in (-1, 0, 1)]
    assert all(abs(c / 295 - 1 / 3) < 0.1 for c in counts), counts
    assert modes(0)[0] == first and modes(1)[0] != first
    resumed, _ = modes(7, steps=20, state=state)  # another seed, but the saved generator
    assert resumed == modes(0, steps=320)[0][300:]


# ------------------------------------------------------------------------------------------- losses
def test_vanilla_is_the_sum_of_branch_losses_and_needs_branch_logits():
    model, batch = tiny_mmtm(), batches()[0]
    balancer = make("vanilla").attach(model, sgd(model), epochs=1, steps_per_epoch=1, num_classes=CLASSES)
    out = model(batch.inputs)
    expected = sum(F.cross_entropy(z, batch.label) for z in out.extras["branch_logits"].values())
    torch.testing.assert_close(balancer.loss(model, out, batch), expected)
    naive = make("naive").loss(model, out, batch)
    assert not torch.allclose(naive, expected)
    channel = tiny_mmtm(fusion="channel")
    with pytest.raises(ValueError, match="branch_logits"):
        balancer.loss(channel, channel(batch.inputs), batch)
    concat = tiny_mmtm(fusion="concat")
    with pytest.raises(ValueError, match="MMTM gates"):
        make("greedy").attach(concat, sgd(concat), epochs=1, steps_per_epoch=1, num_classes=CLASSES)


def test_rubi_masks_the_branch_logits_and_keeps_its_branch_out_of_the_encoders():
    model, batch = tiny_mmtm(), batches()[0]
    optimizer = sgd(model)
    rubi = make("rubi", bias=["m0"]).attach(model, optimizer, epochs=1, steps_per_epoch=1, num_classes=CLASSES)
    assert optimizer.param_groups[-1]["name"] == "rubi"
    out = model(batch.inputs)
    loss = rubi.loss(model, out, batch)
    branch = rubi.branches["m0"]
    mask_logits = branch["mask"](out.features["m0"])
    mask = torch.sigmoid(mask_logits)
    main = sum(F.cross_entropy(z * mask, batch.label) for z in out.extras["branch_logits"].values())
    bias = F.cross_entropy(branch["out"](mask_logits), batch.label)
    torch.testing.assert_close(loss, main + bias)
    _, bias_only = rubi_loss({"x": out.logits}, {"b": mask_logits}, {"b": mask_logits}, batch.label)
    torch.testing.assert_close(bias_only, F.cross_entropy(mask_logits, batch.label))
    # the bias-only term reaches RUBi's classifiers but not the model
    bias_term = F.cross_entropy(branch["out"](branch["mask"](model(batch.inputs).features["m0"].detach())),
                                batch.label)
    grads = torch.autograd.grad(bias_term, [*model.parameters(), *branch.parameters()], allow_unused=True)
    assert all(g is None for g in grads[:len(list(model.parameters()))])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(list(model.parameters())):])
    before = {n: p.detach().clone() for n, p in rubi.branches.named_parameters()}
    rubi.training_step(model, batch, optimizer)
    assert all(not torch.equal(p, before[n]) for n, p in rubi.branches.named_parameters())
    symmetric = make("rubi").attach(model, sgd(model), epochs=1, steps_per_epoch=1, num_classes=CLASSES)
    assert list(symmetric.branches) == ["m0", "m1"]
    with pytest.raises(ValueError, match="unknown modalities"):
        make("rubi", bias=["depth"]).attach(model, sgd(model), epochs=1, steps_per_epoch=1, num_classes=CLASSES)


# --------------------------------------------------------------------------------------- L1 and R(f)
def test_l1_hook_equals_autograd_of_the_penalty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    unused = nn.Parameter(torch.randn(2))
    reference = copy.deepcopy(model)
    x, y, lam = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), 0.01
    optimizer = torch.optim.SGD([*model.parameters(), unused], lr=1.0)
    add_l1_penalty(optimizer, lam)
    before = [p.detach().clone() for p in (*model.parameters(), unused)]
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    ref_unused = unused.detach().clone().requires_grad_()
    penalty = sum(p.abs().sum() for p in (*reference.parameters(), ref_unused))
    loss = F.cross_entropy(reference(x), y) + lam * penalty
    loss.backward()
    for p, b, r in zip((*model.parameters(), unused), before, (*reference.parameters(), ref_unused)):
        torch.testing.assert_close(p.detach(), b - r.grad)


def test_proximal_l1_soft_thresholds_and_r_f_counts_small_parameters():
    torch.manual_seed(0)
    layer = nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-1, 1, 100).view(10, 10))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    add_l1_penalty(optimizer, 0.4, "proximal")  # threshold lr * lambda = 0.2
    before = layer.weight.detach().clone()
    layer.weight.grad = torch.zeros_like(layer.weight)
    layer.bias.grad = torch.zeros_like(layer.bias)
    optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), before.sign() * (before.abs() - 0.2).clamp_min(0))
    zeros = int((layer.weight == 0).sum()) + int((layer.bias == 0).sum())
    assert zeros > 0 and sparsity(layer)["fraction"] == pytest.approx(zeros / 110)
    with pytest.raises(ValueError, match="optim.l1_step"):
        add_l1_penalty(optimizer, 0.1, "prox")
    with pytest.raises(ValueError, match="optim.l1 must be"):
        build_optimizer(tiny_mmtm(), SimpleNamespace(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, l1=-1.0))


# ------------------------------------------------------------------------------------------- K = 3
def test_three_modalities_measures_and_greedy():
    model = tiny_mmtm(k=3)
    optimizer = sgd(model)
    guided = make("greedy", alpha=0.0).attach(model, optimizer, epochs=2, steps_per_epoch=2, num_classes=CLASSES)
    monitor = StepMonitor.for_model(model, "auto")
    steps = {}
    for batch in batches(k=3, count=6):
        state = {**guided.training_step(model, batch, optimizer), **monitor()}
        for key, value in state.items():
            steps.setdefault(key, []).append(float(value))
    assert {f"mu_{p}/{m}" for p in ("branch", "bypass") for m in MODALITIES} <= set(steps)
    speed = speeds_at(steps, list(MODALITIES), [6])[0]
    s = speed["s"]
    a, b = speed["pair"]
    assert abs(s[a] - s[b]) == pytest.approx(max(s.values()) - min(s.values()))
    assert steps["accelerated"][:3] == [-1, -1, -1] and steps["accelerated"][3] in (0, 1, 2)  # after warm-up
    util = conditional_utilization(model, batches(k=3), batches(k=3, seed=2))
    assert set(util["u"]) == set(MODALITIES) and util["pair"] is not None
    u = util["u"]
    assert abs(util["d_util"]) == pytest.approx(max(u.values()) - min(u.values()))


# ------------------------------------------------------------------------- d_util with identical inputs
def mirrored(model):
    """The same model with the roles of m0 and m1 swapped: encoders, heads, excitations, squeeze columns."""
    twin = copy.deepcopy(model)
    swap = {"m0": "m1", "m1": "m0"}
    state = {}
    for name, value in model.state_dict().items():
        parts = name.split(".")
        parts = [swap.get(p, p) for p in parts]
        if name.startswith("fusion.mmtm.") and name.endswith("squeeze.weight"):
            half = value.shape[1] // 2
            value = torch.cat([value[:, half:], value[:, :half]], dim=1)
        for kind in ("squeeze_mean_", "excite_mean_"):
            if parts[-1].startswith(kind):
                parts[-1] = kind + str(1 - int(parts[-1][len(kind):]))
        state[".".join(parts)] = value
    twin.load_state_dict(state)
    return twin


def train_and_measure(model, train, test):
    torch.set_num_threads(1)
    optimizer = sgd(model, lr=0.1, momentum=0.9)
    balancer = make("vanilla").attach(model, optimizer, epochs=6, steps_per_epoch=len(train), num_classes=CLASSES)
    for _ in range(6):
        for batch in train:
            balancer.training_step(model, batch, optimizer)
    return conditional_utilization(model, train, test)["d_util"]


def test_d_util_of_identical_inputs_is_symmetric_around_zero_over_seeds():
    """Two copies of one input: swapping the modalities' roles (a mirrored initialisation, as likely as the
    original) negates d_util, so over seeds its distribution is symmetric around 0, while single models still
    use the other branch unequally (spread > 0)."""
    train, test = batches(count=6, size=16, identical=True), batches(count=4, size=16, seed=5, identical=True)
    pairs = []
    for seed in range(8):
        model = tiny_mmtm(seed=seed)
        twin = mirrored(model)
        pairs.append((train_and_measure(model, train, test), train_and_measure(twin, train, test)))
    originals = [d for d, _ in pairs]
    assert statistics.pstdev(originals) > 0.05, originals  # models do use the other branch, unequally
    assert abs(statistics.mean(originals)) < statistics.pstdev(originals), originals  # eight seeds alone
    for d, d_twin in pairs:
        assert d_twin == pytest.approx(-d, abs=0.05), pairs
    everything = [d for pair in pairs for d in pair]
    assert abs(statistics.mean(everything)) < 0.1 * statistics.pstdev(everything), pairs


# ----------------------------------------------------------------------------- in a run's record
@pytest.mark.parametrize("balancer", ["greedy", "vanilla"])
def test_a_run_records_d_util_d_speed_and_r_f(make_config, prepared_layout, tmp_path, balancer):
    cfg = make_config(prepared_layout, **{"model.fusion": {"name": "mmtm"}, "balancer.name": balancer,
                                          "balancer.params": {"alpha": 0.0} if balancer == "greedy" else {},
                                          "train.protocols": ["own_head"]})
    rec = experiments.run(cfg, root=tmp_path)
    n = len(rec.steps["loss"]) // len(rec.history)
    for m in ("audio", "visual"):
        for key in (f"mu_branch/{m}", f"mu_bypass/{m}", f"grad_sq/{m}"):
            assert len(rec.steps[key]) == len(rec.steps["loss"]) and all(v > 0 for v in rec.steps[key]), key
    if balancer == "greedy":  # alpha 0: the second epoch re-balances
        assert {"d_speed", "rebalancing", "accelerated"} <= set(rec.steps)
        assert set(rec.steps["rebalancing"][:n]) == {0.0} and 1.0 in rec.steps["rebalancing"][n:]
    for entry in rec.history:
        assert entry["speed"]["steps"] == (entry["epoch"] + 1) * n
    assert rec.final["speed"] == rec.history[rec.best_epoch]["speed"]
    speed = rec.final["speed"]
    assert speed["d_speed"] == pytest.approx(speed["s"]["audio"] - speed["s"]["visual"])
    util = rec.final["test"]["utilization"]
    assert set(util) == {"acc_branch", "acc_cut", "u", "pair", "d_util"}
    for m in ("audio", "visual"):  # f_m is the branch's own head
        assert util["acc_branch"][m] == pytest.approx(rec.final["test"]["unimodal"]["own_head"][m]["acc"])
    assert 0 <= rec.final["sparsity"]["fraction"] < 1


def test_gradient_norms_option_and_run_identity(make_config, prepared_layout, tmp_path):
    cfg = make_config(prepared_layout, **{"train.epochs": 1})
    plain = experiments.run(cfg, root=tmp_path)
    assert not any(k.startswith(("mu_", "grad_sq/")) for k in plain.steps) and "speed" not in plain.final
    on = cfg.replace(**{"train.gradient_norms": "on"})
    assert on.config_hash() != cfg.config_hash()
    logged = experiments.run(on, root=tmp_path)
    assert {k for k in logged.steps if k.startswith(("mu_", "grad_sq/"))} == {"grad_sq/audio", "grad_sq/visual"}
    assert "utilization" not in logged.final["test"] and "sparsity" in logged.final
    with pytest.raises(ValueError, match="train.gradient_norms"):
        experiments.run(cfg.replace(**{"train.gradient_norms": "maybe"}), root=tmp_path)


def test_a_unimodal_run_on_the_mmtm_fusion_trains_the_squeeze_and_excitation_baseline(make_config,
                                                                                        prepared_layout, tmp_path):
    cfg = make_config(prepared_layout, **{"train.epochs": 1, "model.fusion": {"name": "mmtm"},
                                          "balancer.name": "unimodal", "balancer.params": {"modality": "visual"}})
    rec = experiments.run(cfg, root=tmp_path)
    assert set(rec.final["test"]["unimodal"]["model"]) == {"visual"} and "utilization" not in rec.final["test"]
    assert "speed" not in rec.final and 0 <= rec.final["sparsity"]["fraction"] < 1
