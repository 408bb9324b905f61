"""Duplicated inputs (the Greedy paper §6.2): ``<m>_copy`` reads ``<m>``'s tensor with an encoder of its
own; and NVGesture's RGB + depth through I3D encoders, the Greedy paper's third setting."""
from __future__ import annotations

import pytest
import torch

from mmlib import experiments
from mmlib.config import ExperimentConfig, ModelConfig, from_dict
from mmlib.data.loader import DeviceLoader, source_modality
from mmlib.models.multimodal import build_model

CPU = torch.device("cpu")


def tensors(n: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"gray": torch.randint(0, 256, (n, 1, 1, 16, 16), generator=g, dtype=torch.uint8),
            "gray_count": torch.ones(n, dtype=torch.int16),
            "color": torch.randint(0, 256, (n, 1, 3, 16, 16), generator=g, dtype=torch.uint8),
            "color_count": torch.ones(n, dtype=torch.int16),
            "audio": torch.randn(n, 1, 8, 10, generator=g).half(),
            "label": torch.arange(n) % 3, "split": torch.zeros(n, dtype=torch.int8)}


def batches(modalities: list[str], augment: bool = True) -> list[dict[str, torch.Tensor]]:
    loader = DeviceLoader(tensors(), torch.arange(12), modalities, batch_size=4, frames=1, train=True,
                          augment=augment, device=CPU, seed=3)
    return [b.inputs for b in loader]


def test_source_modality():
    available = {"gray": 1, "rgb_copy": 3, "rgb": 3}
    assert source_modality("gray_copy", available) == "gray" and source_modality("gray", available) == "gray"
    assert source_modality("rgb_copy", available) == "rgb_copy"  # a modality of that name is itself
    assert source_modality("depth_copy", available) == "depth_copy"  # nothing to copy: left to the caller


@pytest.mark.parametrize("modality", ["gray", "audio"])
def test_a_copy_is_served_the_very_batch_tensor(modality):
    """Same pixels and the same random crop: the copy is the source's batch tensor itself."""
    for inputs in batches([modality, "color", f"{modality}_copy"]):
        assert inputs[f"{modality}_copy"] is inputs[modality]


def test_a_copy_does_not_change_what_the_other_modalities_draw():
    with_copy, without = batches(["gray", "gray_copy", "color"]), batches(["gray", "color"])
    for a, b in zip(with_copy, without):
        assert torch.equal(a["color"], b["color"]) and torch.equal(a["gray"], b["gray"])
    for copy, source in zip(batches(["gray_copy"]), batches(["gray"])):  # alone: what its source would read
        assert torch.equal(copy["gray_copy"], source["gray"])


def test_a_modality_missing_from_the_cache_is_named():
    with pytest.raises(KeyError, match=r"data\.modalities \['depth_copy'\] are not in the tensor cache "
                                       r"\(it holds \['audio', 'color', 'gray'\]\)"):
        batches(["gray", "depth_copy"])


def test_a_copy_gets_its_own_encoder_from_its_sources_spec():
    cfg = from_dict(ModelConfig, {"encoders": {"gray": {"name": "resnet18", "width": 4}},
                                  "fusion": {"name": "sum"}})
    torch.manual_seed(0)
    model = build_model(cfg, {"gray": 1, "gray_copy": 1}, num_classes=3)
    a, b = model.encoders["gray"], model.encoders["gray_copy"]
    assert a is not b and type(a) is type(b) and a.out_dim == b.out_dim
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # initialised apart
    groups = model.parameter_groups()
    assert {id(p) for p in groups["gray"]}.isdisjoint(id(p) for p in groups["gray_copy"])
    own = from_dict(ModelConfig, {"encoders": {"gray": {"name": "resnet18", "width": 4},
                                               "gray_copy": {"name": "resnet18", "width": 8}},
                                  "fusion": {"name": "sum"}})
    assert build_model(own, {"gray": 1, "gray_copy": 1}, 3).encoders["gray_copy"].out_dim == 2 * a.out_dim
    with pytest.raises(KeyError, match="no entry for modality 'depth_copy'"):
        build_model(cfg, {"gray": 1, "depth_copy": 1}, 3)


def test_two_identical_inputs_end_to_end(tmp_path):
    """[gray, gray_copy]: the run trains two encoders on the same images, and the cache holds gray once."""
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_colored_mnist", "root": str(tmp_path / "data"),
                 "modalities": ["gray", "gray_copy"],
                 "augment": True, "val_fraction": 0.2, "generator": {"train_images": 40, "test_images": 20}},
        "model": {"encoders": {"gray": {"name": "resnet18", "width": 4}}, "fusion": {"name": "sum"}},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 32, "progress": "off", "device": "cpu",
                  "threads": 1},
    })
    rec = experiments.run(cfg, root=tmp_path / "results")
    assert set(rec.final["test"]["unimodal"]["zero_feature"]) == {"gray", "gray_copy"}
    _, cache = experiments.load_cache(cfg)
    assert "gray_copy" not in cache.tensors
    with pytest.raises(KeyError, match=r"data\.modalities \['depth_copy'\] are not modalities of "
                                       r"synth_colored_mnist"):
        experiments.build(cfg.replace(**{"data.modalities": ["gray", "depth_copy"]}), cache,
                          experiments.prepared_cache(cfg)[0])


@pytest.mark.parametrize("modalities", [["rgb", "depth"], ["depth", "depth_copy"]])
def test_nvgesture_rgb_and_depth_through_i3d(tmp_path, modalities):
    """The Greedy paper's NVGesture setting (RGB and depth, I3D branches) on a tiny stand-in, and its
    duplicated variant."""
    torch.set_num_threads(1)
    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": "synth_nvgesture", "root": str(tmp_path / "data"), "modalities": modalities,
                 "frames": 4, "image_size": 16, "val_fraction": 0.2,
                 "generator": {"clips": 24, "classes": 4, "frames": 4, "frame_size": 16,
                               "test_fraction": 0.25}},
        "model": {"encoders": {m: {"name": "i3d", "width": 2, "blocks": [1, 1]} for m in ("rgb", "depth")},
                  "fusion": {"name": "sum"}},
        "optim": {"lr": 0.01},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "progress": "off", "device": "cpu",
                  "threads": 1},
    })
    rec = experiments.run(cfg, root=tmp_path / "results")
    assert set(rec.final["test"]["unimodal"]["zero_feature"]) == set(modalities)
    assert 0 <= rec.final["test"]["acc"] <= 1
