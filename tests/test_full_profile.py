"""The full profile's models run at paper size: for every distinct model and input shape of the full profile,
one training step and one evaluation step on a batch of 2 random inputs at the paper's input shapes (CPU,
fp32), with the step's peak memory. No dataset is generated or read and nothing is downloaded (the BERT-base
text encoder is built from its config when no local copy exists); the shapes come from the configuration
alone (``mmlib.bench.input_shapes``), checked against the trainer's batches on tiny generated data."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from mmlib import bench, experiments, tables
from mmlib.config import experiment_config, load_params, read_yaml_mapping
from mmlib.data.loader import DeviceLoader

FULL = load_params("full")
FULL_SETUPS = list(read_yaml_mapping(Path(FULL["root"]) / "params.yaml")["profiles"]["full"]["setups"])


def _distinct_models() -> dict[str, object]:
    """The full profile's base and every setup of its overlay, one per (encoders, fusion, modalities,
    input shapes)."""
    cfgs = {"base": experiment_config(FULL)}
    cfgs.update({s: tables.cell_config(FULL, tables.Cell(setup=s), 0) for s in FULL_SETUPS})
    distinct = {}
    for name, cfg in cfgs.items():
        key = json.dumps([cfg.model.encoders, cfg.model.fusion, cfg.data.modalities,
                          {m: list(s) for m, s in bench.input_shapes(cfg).items()}], sort_keys=True)
        distinct.setdefault(key, (name, cfg))
    return dict(distinct.values())


MODELS = _distinct_models()


def test_distinct_models_cover_the_full_profile():
    assert set(FULL_SETUPS) - set(MODELS) == {"crema_d", "twitter15"}  # base's model; sarcasm's model
    assert {"base", "ks", "sarcasm", "nvgesture", "colored_mnist", "modelnet40", "nvgesture_greedy",
            "crema_d_dgl", "vggsound", "mosi", "nyuv2"} == set(MODELS)


def test_paper_input_shapes():
    shape = {name: bench.input_shapes(cfg) for name, cfg in MODELS.items()}
    assert shape["base"] == {"audio": (1, 257, 188), "visual": (1, 3, 224, 224), "label": ()}
    assert shape["ks"]["visual"] == (3, 3, 224, 224) and shape["crema_d_dgl"]["audio"] == (1, 257, 299)
    assert shape["vggsound"]["audio"] == (1, 129, 626) and bench.num_classes(MODELS["vggsound"]) == 309
    assert shape["sarcasm"] == {"text": (40,), "image": (1, 3, 224, 224), "label": ()}
    assert shape["nvgesture"] == {"rgb": (8, 3, 224, 224), "flow": (8, 2, 224, 224),
                                  "depth": (8, 1, 224, 224), "label": ()}
    assert shape["colored_mnist"]["color"] == (1, 3, 28, 28)
    assert shape["modelnet40"]["rear"] == (1, 1, 224, 224)
    assert shape["mosi"] == {"audio": (375, 5), "vision": (500, 20), "text": (50, 768), "label": ()}
    assert shape["nyuv2"] == {"rgb": (1, 3, 480, 640), "depth": (1, 1, 480, 640), "label": (480, 640)}
    batch = bench.paper_batch(MODELS["sarcasm"], 2)
    assert batch.inputs["text"].dtype == torch.int64 and int(batch.inputs["text"].max()) < 30522


@pytest.fixture(scope="module")
def measured():
    """Every distinct model's steps, one after another in one fresh process, offline."""
    roots = {name: Path(cfg.data.root).exists() for name, cfg in MODELS.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        results = dict(zip(MODELS, bench.measure_steps(list(MODELS.values()), batch_size=2)))
    assert {name: Path(cfg.data.root).exists() for name, cfg in MODELS.items()} == roots  # none generated
    print("\nfull-profile model  parameters  peak RSS MB  step MB  activations MB (batch 2)  est. GPU GB")
    for name, m in results.items():
        estimate = bench.gpu_memory_estimate(MODELS[name], m)
        step = (m["peak_rss_bytes"] - m["rss_before_bytes"]) / 2**20
        print(f"{name:<18} {m['parameters'] / 1e6:9.1f}M {m['peak_rss_bytes'] / 2**20:12.0f} {step:8.0f} "
              f"{m['activation_bytes'] / 2**20:14.0f} {estimate['estimated_gpu_memory_gb']:22.2f}")
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_one_training_and_one_evaluation_step_at_paper_size(name, measured):
    m, cfg = measured[name], MODELS[name]
    assert torch.isfinite(torch.tensor(m["loss"])), m["loss"]
    assert m["eval_logits"] == m["expected_logits"] and m["eval_finite"]
    shapes = bench.input_shapes(cfg)
    assert m["inputs"] == {k: [2, *s] for k, s in shapes.items() if k != "label"}
    assert m["gradient_bytes"] == m["parameter_bytes"]  # every parameter is trained
    per_parameter = {"sgd": 1 if cfg.optim.momentum else 0, "adam": 2, "adagrad": 1}[cfg.optim.name]
    assert m["optimizer_state_bytes"] >= per_parameter * m["parameter_bytes"]
    assert m["peak_is_step"] and m["peak_rss_bytes"] >= m["forward_peak_rss_bytes"] >= m["rss_before_bytes"]
    assert m["activation_bytes"] > 0 or m["parameters"] < 10**6  # a tiny model's step may fit freed pages
    estimate = bench.gpu_memory_estimate(cfg, m)
    params_gb = m["parameter_bytes"] / 2**30
    assert estimate["estimated_gpu_memory_gb"] >= 2 * params_gb
    assert estimate["batch_size"] == cfg.train.batch_size


# shape-relevant settings of the ci profile with tiny generators: the trainer's batches on generated data
TINY = {"crema_d": {"clips": 24}, "ks": {"clips": 24, "classes": 4}, "sarcasm": {"items": 40},
        "nvgesture": {"clips": 30, "classes": 3, "frames": 4}, "colored_mnist": {"train_images": 60,
                                                                                   "test_images": 30},
        "modelnet40": {"objects": 30, "classes": 3}, "vggsound": {"clips": 24, "classes": 4, "seconds": 3.0},
        "mosi": {"clips": 60, "audio_steps": 20, "vision_steps": 20, "text_steps": 12},
        "nyuv2": {"images": 12, "height": 48, "width": 64}}


@pytest.mark.parametrize("setup", list(TINY))
def test_input_shapes_are_the_trainers_batches(setup, tmp_path):
    params = load_params("ci")
    cfg = tables.cell_config(params, tables.Cell(setup=setup), 0)
    cfg = cfg.replace(**{"data.root": str(tmp_path / setup), "data.generator": {**cfg.data.generator,
                                                                                  **TINY[setup]}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, cache = experiments.load_cache(cfg)
    loader = DeviceLoader(cache.tensors, cache.indices("train"), list(cfg.data.modalities), 2,
                          cfg.data.frames, train=True, augment=cfg.data.augment, device=torch.device("cpu"))
    batch = next(iter(loader))
    shapes = bench.input_shapes(cfg)
    assert {m: tuple(x.shape[1:]) for m, x in batch.inputs.items()} == {m: s for m, s in shapes.items()
                                                                        if m != "label"}
    assert tuple(batch.label.shape[1:]) == shapes["label"] and bench.num_classes(cfg) == cache.num_classes
    made = bench.paper_batch(cfg, 2)
    assert {m: x.dtype for m, x in made.inputs.items()} == {m: x.dtype for m, x in batch.inputs.items()}


def test_show_prints_the_estimated_gpu_memory(capsys, monkeypatch, tmp_path):
    import yaml

    from mmlib.__main__ import main

    monkeypatch.setenv("MMLIB_RESULTS", str(tmp_path))
    assert main(["show", "--profile", "ci", "--set", "train.batch_size=32"]) == 0
    memory = yaml.safe_load(capsys.readouterr().out)["memory"]
    parts = sum(memory[k] for k in ("parameters_gb", "gradients_gb", "optimizer_state_gb", "activations_gb"))
    assert memory["batch_size"] == 32 and memory["estimated_gpu_memory_gb"] == pytest.approx(parts, rel=0.01)
    assert memory["activations_gb"] > 0 and "scaled linearly to batch 32" in memory["basis"]
