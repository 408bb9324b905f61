"""Every registered fusion with 2 and 3 modalities: forward/backward, unimodal protocols, parameter groups;
the ETMC combination rule; the MMTM running-average switches of the Greedy paper, on every staged encoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from types import SimpleNamespace

from mmlib.models import PROTOCOLS, MultimodalModel, build_model
from mmlib.models.cnn_fusion import MMTM, MMTMFusion
from mmlib.models.feature_fusion import ETMCFusion, dempster_shafer
from mmlib.registry import get, names

BATCH, CLASSES = 3, 5
MODALITIES = ("a", "b", "c")


class FlatEncoder(nn.Module):
    """A linear encoder of flattened (B, 4) inputs, with its own width so dims differ across modalities."""

    def __init__(self, out_dim: int):
        super().__init__()
        self.linear, self.out_dim = nn.Linear(4, out_dim), out_dim

    def forward(self, x):
        return torch.relu(self.linear(x))


def resnet(width):
    return get("encoders", "resnet18")(in_channels=3, width=width)


def vit():
    return get("encoders", "vit")(in_channels=1, width=8, depth=2, heads=2, patch_size=4, input_size=(8, 8),
                                  max_frames=2)


# encoder factory and input shape per fusion family (hybrid fusions need their own encoders)
SETUPS = {
    "mmtm": (lambda i: resnet(4), lambda i: (BATCH, 2, 3, 32, 32) if i == 1 else (BATCH, 3, 32, 32), {}),
    "channel": (lambda i: resnet(4 * (i + 1)), lambda i: (BATCH, 3, 32, 32),
                {"stages": ["layer3", "layer4"]}),
    "mbt": (lambda i: vit(), lambda i: (BATCH, 2, 1, 8, 8) if i == 1 else (BATCH, 1, 8, 8),
            {"fusion_layer": 1, "bottlenecks": 2}),
    "shared_head": (lambda i: FlatEncoder(6), lambda i: (BATCH, 4), {}),  # one head: features of one size
    "esanet": (lambda i: get("encoders", "resnet18_pyramid")(in_channels=1 if i else 3, width=2),
               lambda i: (BATCH, 1, 1 if i else 3, 32, 64), {}),
}
DENSE = {"esanet": (32, 64)}  # segmentation fusions: per-pixel logits (B, classes, H, W), labels (B, H, W)
DEFAULT_SETUP = (lambda i: FlatEncoder(6 + 2 * i), lambda i: (BATCH, 4), {})
SMALL_PARAMS = {"weight": {"attention_dim": 8}, "gated": {"hidden": 8}, "ml_lstm": {"hidden": 8},
                "mlp_mixer": {"dim": 8, "token_hidden": 4, "channel_hidden": 16}}


def build(name: str, k: int, seed: int = 0):
    torch.manual_seed(seed)
    make_encoder, shape, params = SETUPS.get(name, DEFAULT_SETUP)
    modalities = MODALITIES[:k]
    encoders = {m: make_encoder(i) for i, m in enumerate(modalities)}
    fusion = get("fusions", name)({m: e.out_dim for m, e in encoders.items()}, CLASSES,
                                  **params, **SMALL_PARAMS.get(name, {}))
    inputs = {m: torch.randn(shape(i)) for i, m in enumerate(modalities)}
    return MultimodalModel(encoders, fusion), inputs


CASES = [(name, k) for name in names("fusions") for k in (2, 3)]


def _supports(name: str, k: int) -> bool:
    limit = get("fusions", name).max_modalities
    return limit is None or k <= limit


@pytest.mark.parametrize("name,k", CASES)
def test_forward_backward_and_protocols(name, k):
    if not _supports(name, k):
        with pytest.raises(ValueError, match="at most 2 modalities"):
            build(name, k)
        return
    model, inputs = build(name, k)
    fusion = model.fusion
    assert fusion.kind in ("late", "early", "hybrid")
    assert set(fusion.protocols) <= set(PROTOCOLS)
    out = model(inputs)
    pixels = DENSE.get(name, ())
    assert out.logits.shape == (BATCH, CLASSES, *pixels)
    assert torch.isfinite(out.logits).all()
    assert set(out.features) == set(inputs)
    labels = (torch.arange(BATCH) % CLASSES).view(BATCH, *([1] * len(pixels))).expand(BATCH, *pixels)
    loss = F.cross_entropy(out.logits, labels)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    model.eval()
    with torch.no_grad():
        out = model(inputs)
        for protocol in fusion.protocols:
            unimodal = model.unimodal_logits(inputs, out, protocol)
            assert set(unimodal) == set(inputs)
            for m, z in unimodal.items():
                assert z.shape == (BATCH, CLASSES, *pixels), (protocol, m)
                assert torch.isfinite(z).all(), (protocol, m)
    for protocol in set(PROTOCOLS) - set(fusion.protocols) - {"zero_input"}:
        with pytest.raises(ValueError, match="does not support"):
            fusion.unimodal(out.features, "a", protocol)


@pytest.mark.parametrize("name,k", [case for case in CASES if _supports(*case)])
def test_parameter_groups_cover_every_parameter_once(name, k):
    model, _ = build(name, k)
    groups = model.parameter_groups()
    assert set(groups) == {*MODALITIES[:k], "shared"}
    listed = [id(p) for ps in groups.values() for p in ps]
    assert len(listed) == len(set(listed)), "a parameter is in two groups"
    assert set(listed) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", ["weight", "etmc", "sum", "mmtm", "mbt"])
def test_late_and_branch_fusions_own_their_heads(name):
    model, _ = build(name, 2)
    for m in ("a", "b"):
        owned = model.fusion.modality_parameters(m)
        assert owned, f"{name} gives modality {m} no head parameters"
        assert all(any(p is q for q in model.fusion.parameters()) for p in owned)


def test_dempster_shafer_matches_hand_computation():
    # view 1: alpha (3, 1): S = 4, b = (1/2, 0), u = 1/2; view 2: alpha (1, 2): S = 3, b = (0, 1/3), u = 2/3
    # conflict = 1/2 * 1/3 = 1/6; b = (1/3, 1/6) / (5/6) = (0.4, 0.2); u = (1/3) / (5/6) = 0.4;
    # S = 2 / 0.4 = 5, alpha = b * S + 1 = (3, 2)
    combined = dempster_shafer(torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(combined, torch.tensor([[3.0, 2.0]]))


def test_dempster_shafer_is_commutative_and_keeps_belief_plus_uncertainty_one():
    torch.manual_seed(0)
    a1, a2 = torch.rand(4, 6) * 5 + 1, torch.rand(4, 6) * 5 + 1
    ab, ba = dempster_shafer(a1, a2), dempster_shafer(a2, a1)
    torch.testing.assert_close(ab, ba)
    s = ab.sum(-1)
    torch.testing.assert_close(((ab - 1).sum(-1) + 6) / s, torch.ones(4))  # sum(b) + u = 1
    vacuous = torch.ones(4, 6)  # no evidence: combining with it changes nothing
    torch.testing.assert_close(dempster_shafer(a1, vacuous), a1)


def test_etmc_logits_are_the_log_of_the_folded_opinions():
    torch.manual_seed(0)
    dims = {"a": 4, "b": 5, "c": 3}
    fusion = ETMCFusion(dims, CLASSES, pseudo_view=True)
    features = {m: torch.randn(BATCH, d) for m, d in dims.items()}
    alphas = fusion.opinions(features)
    assert list(alphas) == ["a", "b", "c", "pseudo"]
    for alpha in alphas.values():
        assert (alpha > 1).all()
    expected = dempster_shafer(dempster_shafer(dempster_shafer(alphas["a"], alphas["b"]), alphas["c"]),
                               alphas["pseudo"])
    torch.testing.assert_close(fusion(features), expected.log())
    model = MultimodalModel({m: nn.Identity() for m in dims}, fusion)
    out = model(features)
    torch.testing.assert_close(out.extras["alpha"], expected)
    assert set(out.extras["alphas"]) == {"a", "b", "c", "pseudo"}


# -------------------------------------------------------------------------------------------- MMTM (Greedy)
def _mmtm_model(seed=0):
    model, inputs = build("mmtm", 2, seed)
    model.train()
    with torch.no_grad():  # regular training-mode passes record the running averages
        for _ in range(2):
            model({m: torch.randn_like(x) for m, x in inputs.items()})
    model.eval()
    return model, inputs


def _branches(model, inputs):
    with torch.no_grad():
        return model(inputs).extras["branch_logits"]


@pytest.mark.parametrize("switch", ["frozen_gate", "averaged_squeeze"])
def test_mmtm_switch_cuts_the_other_modality_out_of_a_branch(switch):
    model, inputs = _mmtm_model()
    fusion: MMTMFusion = model.fusion
    perturbed = {**inputs, "b": inputs["b"] + torch.randn_like(inputs["b"])}
    before, after = _branches(model, inputs), _branches(model, perturbed)
    assert not torch.allclose(before["a"], after["a"]), "branch a should see modality b without the switch"
    with getattr(fusion, switch)("a"):
        before, after = _branches(model, inputs), _branches(model, perturbed)
    torch.testing.assert_close(before["a"], after["a"])
    assert not torch.allclose(before["b"], after["b"])  # branch b is untouched and still reads its own input
    # outside the block the model is back to normal
    assert not torch.allclose(_branches(model, inputs)["a"], _branches(model, perturbed)["a"])


def test_mmtm_running_averages_update_in_training_mode_only():
    model, inputs = _mmtm_model()
    fusion: MMTMFusion = model.fusion
    module = fusion.mmtm["layer4"]
    seen = module.samples_seen.item()
    assert seen == 2 * BATCH
    assert module.running_excitation("a").abs().sum() > 0
    mean = module.running_squeeze("b").clone()
    model(inputs)  # eval mode
    assert module.samples_seen.item() == seen
    model.train()
    with fusion.frozen_gate("b"):
        model(inputs)  # a re-balancing step does not count as a regular step
    assert module.samples_seen.item() == seen
    model(inputs)
    assert module.samples_seen.item() == seen + BATCH
    assert not torch.equal(module.running_squeeze("b"), mean)
    model.eval()
    with fusion.recording():
        model(inputs)
    assert module.samples_seen.item() == seen + 2 * BATCH
    fusion.reset_running_averages()
    assert module.samples_seen.item() == 0 and module.running_excitation("a").abs().sum() == 0


def test_mmtm_frozen_gate_uses_the_running_average_excitation():
    model, _ = _mmtm_model()
    fusion: MMTMFusion = model.fusion
    module = fusion.mmtm["layer2"]
    maps = {m: torch.randn(BATCH, c, 4, 4) for m, c in module.channels.items()}
    out = module(maps, {"a": 1, "b": 1}, "layer2", frozen_gate=frozenset({"a"}))
    gate = 2 * torch.sigmoid(module.running_excitation("a"))
    torch.testing.assert_close(out["a"], maps["a"] * gate[None, :, None, None])


def test_mmtm_prediction_is_the_mean_of_the_branch_logits_and_switches_check_names():
    model, inputs = _mmtm_model()
    with torch.no_grad():
        out = model(inputs)
    branches = out.extras["branch_logits"]
    torch.testing.assert_close(out.logits, (branches["a"] + branches["b"]) / 2)
    with pytest.raises(KeyError, match="unknown modalities"), model.fusion.frozen_gate("depth"):
        pass
    shared = {id(p) for p in model.fusion.shared_parameters()}
    assert all(id(p) in shared for p in model.fusion.bypass_parameters("a"))


def test_hybrid_fusions_reject_wrong_encoders():
    model, inputs = build("mmtm", 2)
    model.encoders["b"] = FlatEncoder(512)
    with pytest.raises(TypeError, match="needs staged CNN encoders"):
        model(inputs)
    with pytest.raises(TypeError, match="needs staged CNN encoders"):
        MMTMFusion.from_encoders({"a": resnet(4), "b": FlatEncoder(8)}, CLASSES)
    with pytest.raises(ValueError, match="default fusion stages differ"):
        MMTMFusion.from_encoders({"a": resnet(4), "b": STAGED["convnet4"][0]()}, CLASSES)
    with pytest.raises(ValueError, match="stages must be distinct names"):
        MMTMFusion.from_encoders({"a": resnet(4), "b": resnet(4)}, CLASSES, stages=["layer2", "conv3"])
    model, inputs = build("mmtm", 2)
    model.encoders["b"] = resnet(8)  # twice the channels the fusion was built for
    with pytest.raises(ValueError, match="expected"):
        model(inputs)
    with pytest.raises(ValueError, match="one width"):
        get("fusions", "mbt")({"a": 8, "b": 16}, CLASSES)


def test_chained_fusions_need_two_modalities_and_a_valid_order():
    for name in ("affine", "gated"):
        with pytest.raises(ValueError, match="at least two modalities"):
            get("fusions", name)({"a": 4}, CLASSES)
    with pytest.raises(ValueError, match="exactly once"):
        get("fusions", "affine")({"a": 4, "b": 4}, CLASSES, order=["a", "a"])


# ------------------------------------------------------------ MMTM on every staged encoder, K = 2 and 3
STAGED = {  # encoder factory, input shape (B = 4), the MMTM positions the Greedy paper uses
    "resnet18": (lambda: resnet(2), (4, 3, 16, 16), ("layer2", "layer3", "layer4")),
    "i3d": (lambda: get("encoders", "i3d")(in_channels=3, width=2, blocks=(1, 1)), (4, 2, 3, 12, 12),
            ("inception1", "inception2")),
    "convnet4": (lambda: get("encoders", "convnet4")(in_channels=3, width=2), (4, 3, 12, 12),
                 ("conv2", "conv3", "conv4")),
}


def staged_model(encoder: str, k: int, seed: int = 0):
    torch.manual_seed(seed)
    make, shape, _ = STAGED[encoder]
    encoders = {m: make() for m in MODALITIES[:k]}
    model = MultimodalModel(encoders, MMTMFusion.from_encoders(encoders, CLASSES))
    inputs = {m: torch.randn(shape) for m in MODALITIES[:k]}
    model.train()
    with torch.no_grad():
        for _ in range(2):  # regular training-mode passes record the running averages
            model({m: torch.randn_like(x) for m, x in inputs.items()})
    model.eval()
    return model, inputs


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("encoder", sorted(STAGED))
def test_mmtm_on_staged_encoders_cuts_every_other_modality_out_of_a_switched_branch(encoder, k):
    model, inputs = staged_model(encoder, k)
    assert model.fusion.stages == STAGED[encoder][2]
    out = model(inputs)
    F.cross_entropy(out.logits, torch.arange(4) % CLASSES).backward()
    assert all(p.grad is not None for p in model.parameters())
    for m in model.modalities:
        perturbed = {n: x if n == m else x + torch.randn_like(x) for n, x in inputs.items()}
        assert not torch.allclose(_branches(model, inputs)[m], _branches(model, perturbed)[m])
        for switch in ("frozen_gate", "averaged_squeeze"):
            with getattr(model.fusion, switch)(m):
                before, after = _branches(model, inputs), _branches(model, perturbed)
            torch.testing.assert_close(before[m], after[m])
    with torch.no_grad():  # every f'_m at once equals each f'_m on its own
        with model.fusion.averaged_squeeze(*model.modalities):
            together = model(inputs).extras["branch_logits"]
        for m in model.modalities:
            with model.fusion.averaged_squeeze(m):
                torch.testing.assert_close(together[m], model(inputs).extras["branch_logits"][m])


def test_mmtm_on_one_stream_is_a_squeeze_and_excitation_block():
    """The Greedy paper's uni-modal baseline (§6.4): A <- 2 sigmoid(W_e relu(W_s mean(A))) A."""
    module = MMTM({"a": 4})
    maps = {"a": torch.randn(3, 4, 5, 5)}
    with torch.no_grad():
        out = module(maps, {"a": 1}, "s")["a"]
        h = maps["a"].mean(dim=(2, 3))
        gate = 2 * torch.sigmoid(module.excite["a"](torch.relu(module.squeeze(h))))
    torch.testing.assert_close(out, maps["a"] * gate[:, :, None, None])
    spec = SimpleNamespace(encoders={"a": {"name": "convnet4", "width": 2}}, fusion={"name": "mmtm"})
    model = build_model(spec, {"a": 1}, CLASSES)
    assert model(({"a": torch.randn(2, 1, 8, 8)})).logits.shape == (2, CLASSES)


def test_mmtm_squeezes_3d_maps_over_time_and_space():
    module = MMTM({"a": 3, "b": 4})
    maps = {"a": torch.randn(2, 3, 5, 4, 4), "b": torch.randn(2, 4, 2, 3, 3)}  # (B, C, T, H, W)
    with torch.no_grad():
        out = module(maps, {"a": 1, "b": 1}, "s", record=True)
    squeezes = [maps[m].mean(dim=(2, 3, 4)) for m in ("a", "b")]
    torch.testing.assert_close(module.running_squeeze("a"), squeezes[0].mean(0))
    for i, m in enumerate(("a", "b")):
        gate = 2 * torch.sigmoid(module._excite(squeezes, m))
        torch.testing.assert_close(out[m], maps[m] * gate[:, :, None, None, None])


def test_mmtm_running_averages_are_exact_means_of_each_modalitys_own_values():
    """Eq. 6 and 13: the mean over every recorded sample (batches of any size) of each modality's own squeeze
    and excitation; the public code's bug (the second modality's average fed from the first's gate) is absent,
    which different channel counts would expose."""
    torch.manual_seed(0)
    module = MMTM({"a": 3, "b": 5})
    squeezes, excitations = {"a": [], "b": []}, {"a": [], "b": []}
    with torch.no_grad():
        for size in (2, 5, 3, 1):
            maps = {"a": torch.randn(size, 3, 4, 4), "b": torch.randn(size, 5, 2, 2)}
            module(maps, {"a": 1, "b": 1}, "s", record=True)
            h = [maps[m].mean(dim=(2, 3)) for m in ("a", "b")]
            for i, m in enumerate(("a", "b")):
                squeezes[m].append(h[i])
                excitations[m].append(module._excite(h, m))
    assert float(module.samples_seen) == 11
    for m in ("a", "b"):
        torch.testing.assert_close(module.running_squeeze(m), torch.cat(squeezes[m]).mean(0))
        torch.testing.assert_close(module.running_excitation(m), torch.cat(excitations[m]).mean(0))


def test_mmtm_from_build_model_with_frames_folded_into_the_batch():
    spec = SimpleNamespace(encoders={"a": {"name": "convnet4", "width": 2}, "b": {"name": "resnet18", "width": 2}},
                           fusion={"name": "channel", "stages": ["conv3"]})
    with pytest.raises(ValueError, match="stages must be distinct names"):
        build_model(spec, {"a": 3, "b": 1}, CLASSES)
    spec = SimpleNamespace(encoders={m: {"name": "convnet4", "width": 2} for m in "ab"}, fusion={"name": "mmtm"})
    model = build_model(spec, {"a": 3, "b": 1}, CLASSES)
    out = model({"a": torch.randn(2, 3, 3, 8, 8), "b": torch.randn(2, 1, 8, 8)})  # a: 3 frames
    assert out.logits.shape == (2, CLASSES)
