"""The ESANet-style RGB-D segmentation model: per-pixel logits, the lossless feature packing, the zero_feature
unimodal outputs (independent of the zeroed branch's input), the decoupling DGL needs (a loss on detached features
reaches only the fusion and decoder), parameter groups, and the dense batches of the device loader."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mmlib.data.loader import DeviceLoader
from mmlib.metrics import IGNORE_INDEX
from mmlib.models.multimodal import build_model
from mmlib.models.segmentation import PACKED_PER_WIDTH, pack, pyramid_channels, unpack

CLASSES, B, H, W = 7, 2, 32, 64


def model(fuse_into=None, width=4, seed=0):
    torch.manual_seed(seed)
    spec = SimpleNamespace(encoders={"rgb": {"name": "resnet18_pyramid", "width": width},
                                     "depth": {"name": "resnet18_pyramid", "width": width}},
                           fusion={"name": "esanet", "fuse_into": fuse_into})
    return build_model(spec, {"rgb": 3, "depth": 1}, CLASSES).eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(B, 1, 3, H, W, generator=g), "depth": torch.randn(B, 1, 1, H, W, generator=g)}


@pytest.mark.parametrize("fuse_into", [None, "rgb"])
def test_output_shapes_and_packed_features(fuse_into):
    net, x = model(fuse_into), inputs()
    with torch.no_grad():
        out = net(x)
        assert out.logits.shape == (B, CLASSES, H, W) and torch.isfinite(out.logits).all()
        for m in ("rgb", "depth"):
            assert out.features[m].shape == (B, 4 * PACKED_PER_WIDTH, H // 32, W // 32)
        torch.testing.assert_close(net.fusion(out.features), out.logits)  # the fusion alone decodes the features
        for m, z in net.unimodal_logits(x, out, "zero_feature").items():
            assert z.shape == (B, CLASSES, H, W), m
    assert net.fusion.kind == ("hybrid" if fuse_into else "early")


def test_packing_is_lossless():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, c, 64 // s, 96 // s, generator=g) for c, s in zip((3, 6, 12, 24), (4, 8, 16, 32))]
    packed = pack(maps)
    assert packed.shape == (2, 3 * PACKED_PER_WIDTH, 2, 3) and pyramid_channels(packed.shape[1]) == (3, 6, 12, 24)
    assert all(torch.equal(a, b) for a, b in zip(unpack(packed, (3, 6, 12, 24)), maps))


def test_zero_feature_outputs_ignore_the_zeroed_modality():
    """Side-by-side branches: each unimodal output is a function of its own modality only."""
    net, x = model(), inputs()
    changed = {"rgb": x["rgb"], "depth": torch.randn_like(x["depth"]) * 3}
    with torch.no_grad():
        uni = net.unimodal_logits(x, net(x), "zero_feature")
        uni_depth_changed = net.unimodal_logits(changed, net(changed), "zero_feature")
        torch.testing.assert_close(uni_depth_changed["rgb"], uni["rgb"])
        assert not torch.allclose(uni_depth_changed["depth"], uni["depth"])
        changed = {"rgb": torch.randn_like(x["rgb"]) * 3, "depth": x["depth"]}
        uni_rgb_changed = net.unimodal_logits(changed, net(changed), "zero_feature")
        torch.testing.assert_close(uni_rgb_changed["depth"], uni["depth"])
        assert not torch.allclose(net(changed).logits, net(x).logits)


def test_esanet_layout_feeds_the_fused_map_into_the_rgb_branch():
    """fuse_into=rgb: the depth output stays a function of depth; the RGB features (and so RGB's zero_feature
    output) carry depth, as in ESANet."""
    net, x = model("rgb"), inputs()
    changed = {"rgb": x["rgb"], "depth": torch.randn_like(x["depth"]) * 3}
    with torch.no_grad():
        out, out_changed = net(x), net(changed)
        assert not torch.allclose(out.features["rgb"], out_changed.features["rgb"])
        uni, uni_changed = (net.unimodal_logits(i, o, "zero_feature") for i, o in ((x, out), (changed, out_changed)))
        assert not torch.allclose(uni["rgb"], uni_changed["rgb"])
        other = {"rgb": torch.randn_like(x["rgb"]), "depth": x["depth"]}
        torch.testing.assert_close(net.unimodal_logits(other, net(other), "zero_feature")["depth"], uni["depth"])


def test_dgl_decoupling_on_the_segmentation_model():
    """The multimodal loss on detached features reaches the fusion and decoder only; a unimodal loss through the
    shared decoder with the other features zeroed reaches its own encoder and none of the other's."""
    net, x = model(), inputs()
    net.train()
    labels = torch.randint(0, CLASSES, (B, H, W))
    labels[:, :4] = IGNORE_INDEX
    out = net(x)
    F.cross_entropy(net.fusion({m: f.detach() for m, f in out.features.items()}), labels).backward()
    assert all(p.grad is None for p in net.encoders.parameters())
    assert all(p.grad is not None for p in net.fusion.parameters())
    net.zero_grad(set_to_none=True)
    uni = net.fusion.unimodal(out.features, "depth", "zero_feature")
    F.cross_entropy(uni, labels).backward()
    assert all(p.grad is None for p in net.encoders["rgb"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoders["depth"].parameters())


def test_dgl_step_through_autograd_grad_on_parameter_sets():
    """What a DGL balancer does with this model: the encoders (``model.encoders``) and the fusion with its decoder
    (``model.fusion``) partition the parameters; each unimodal loss (the other branch's features zeroed through the
    shared fusion and decoder), differentiated w.r.t. the encoders, reaches its own encoder only; the multimodal
    loss on detached features, differentiated w.r.t. the fusion, reaches every fusion and decoder parameter and no
    encoder."""
    net, x = model(), inputs()
    net.train()
    labels = torch.randint(0, CLASSES, (B, H, W))
    labels[:, :, :5] = IGNORE_INDEX
    encoders = {m: list(net.encoders[m].parameters()) for m in net.modalities}
    fusion = list(net.fusion.parameters())
    every = [id(p) for ps in (*encoders.values(), fusion) for p in ps]
    assert len(every) == len(set(every)) and set(every) == {id(p) for p in net.parameters()}
    out = net(x)
    flat = [p for ps in encoders.values() for p in ps]
    for m in net.modalities:
        loss = F.cross_entropy(net.fusion.unimodal(out.features, m, "zero_feature"), labels)
        grads = dict(zip(map(id, flat), torch.autograd.grad(loss, flat, allow_unused=True, retain_graph=True)))
        own = [grads[id(p)] for p in encoders[m]]
        assert all(g is not None for g in own) and sum(float(g.abs().sum()) for g in own) > 0, m
        assert all(grads[id(p)] is None for other in net.modalities if other != m for p in encoders[other]), m
    detached = {m: f.detach() for m, f in out.features.items()}
    loss = F.cross_entropy(net.fusion(detached), labels)
    grads = torch.autograd.grad(loss, fusion, retain_graph=True)  # allow_unused=False: every one is reached
    assert all(torch.isfinite(g).all() for g in grads) and all(float(g.abs().sum()) > 0 for g in grads[-2:])
    assert all(g is None for g in torch.autograd.grad(loss, flat, allow_unused=True))


def test_parameter_groups():
    net = model()
    groups = net.parameter_groups()
    listed = [id(p) for ps in groups.values() for p in ps]
    assert len(listed) == len(set(listed)) and set(listed) == {id(p) for p in net.parameters()}
    se_rgb = {id(p) for p in net.fusion.se["rgb"].parameters()}
    assert se_rgb <= {id(p) for p in groups["rgb"]} and se_rgb.isdisjoint({id(p) for p in groups["shared"]})
    assert {id(p) for p in net.fusion.classifier.parameters()} <= {id(p) for p in groups["shared"]}


def test_bad_inputs_and_settings():
    net = model()
    with pytest.raises(ValueError, match="H and W multiples of 32"):
        net({"rgb": torch.randn(1, 1, 3, 40, 64), "depth": torch.randn(1, 1, 1, 40, 64)})
    with pytest.raises(ValueError, match="one frame per item"):
        net({"rgb": torch.randn(1, 2, 3, 64, 64), "depth": torch.randn(1, 2, 1, 64, 64)})
    spec = SimpleNamespace(encoders={"rgb": {"name": "resnet18_pyramid", "width": 4},
                                     "depth": {"name": "resnet18_pyramid", "width": 8}}, fusion={"name": "esanet"})
    with pytest.raises(ValueError, match="two pyramid encoders of one width"):
        build_model(spec, {"rgb": 3, "depth": 1}, CLASSES)
    spec.encoders["depth"]["width"] = 4
    spec.fusion["fuse_into"] = "audio"
    with pytest.raises(ValueError, match="fuse_into must be one of"):
        build_model(spec, {"rgb": 3, "depth": 1}, CLASSES)


def test_dense_batches_share_one_crop_across_modalities_and_labels():
    """Training batches of a dense-label cache: every frame modality and the label map get the same crop and flip
    (labels by nearest sampling, void kept); evaluation batches are untouched."""
    n, h, w = 6, 32, 48
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (n, h, w), generator=g).to(torch.int8)
    label[:, :3] = IGNORE_INDEX
    code = (label.long() + 100).clamp(min=0).to(torch.uint8)  # depth = the label's code: nearest keeps it exact
    tensors = {"rgb": torch.randint(0, 255, (n, 1, 3, h, w), generator=g, dtype=torch.uint8),
               "rgb_count": torch.ones(n, dtype=torch.int16), "depth": code[:, None, None],
               "depth_count": torch.ones(n, dtype=torch.int16), "label": label}
    common = dict(tensors=tensors, indices=torch.arange(n), modalities=["rgb", "depth"], batch_size=3, frames=1,
                  device=torch.device("cpu"), normalize={"depth": ((0.0,), (1.0,))})
    moved = 0
    for batch in DeviceLoader(train=True, augment=True, **common):
        assert batch.label.dtype == torch.int64 and batch.label.shape == (3, h, w)
        served = (batch.inputs["depth"][:, 0, 0] * 255).round().long()
        expected = torch.where(batch.label == IGNORE_INDEX, torch.zeros_like(batch.label), batch.label + 100)
        assert torch.equal(served, expected)
        moved += int((batch.label != label[batch.index].long()).any())
    assert moved > 0  # the crops do change the maps
    for batch in DeviceLoader(train=False, augment=False, **common):
        assert torch.equal(batch.label, label[batch.index].long())
