"""Run store: ``run(cfg) -> RunRecord``, cached by the configuration's canonical hash.

``<results_root>/<hash>/record.json`` is written atomically once a run finishes; an interrupted run resumes from
``<results_root>/<hash>/checkpoint.pt``. The results root is ``$MMLIB_RESULTS`` or ``results/`` beside params.yaml.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .config import ExperimentConfig, find_params_file, from_dict
from .data.cache import TensorCache, atomic_write_bytes
from .models.multimodal import build_model
from .registry import get
from .train import Trainer

RECORD_VERSION = 1


@dataclass
class RunRecord:
    config: dict
    hash: str
    final: dict  # {"val": metrics, "test": metrics} of the selected checkpoint
    best_epoch: int
    select_on: str
    history: list
    steps: dict
    data: dict  # dataset name, whether embedded, recipe, sizes
    device: str
    precision: str
    train_seconds: float
    path: str = ""
    version: int = RECORD_VERSION

    @property
    def test_acc(self) -> float:
        return self.final["test"]["acc"]

    def unimodal_acc(self, modality: str, protocol: str = "zero_feature", split: str = "test") -> float:
        uni = self.final[split]["unimodal"]
        table = uni.get(protocol) or uni.get("model")
        return table[modality]["acc"]

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        d = json.loads(Path(path).read_text())
        d["path"] = str(path)
        return cls(**d)


def results_root() -> Path:
    if os.environ.get("MMLIB_RESULTS"):
        return Path(os.environ["MMLIB_RESULTS"])
    try:
        return find_params_file().parent / "results"
    except FileNotFoundError:
        return Path.cwd() / "results"


def load_cache(cfg: ExperimentConfig) -> tuple[object, TensorCache]:
    dataset = get("datasets", cfg.data.dataset)()
    path = dataset.ensure_prepared(cfg.data.root, cfg.data.audio_recipe, cfg.data.image_size, cfg.data.skip_bad,
                                   generator=cfg.data.generator, text_length=cfg.data.text_length)
    cache = TensorCache.load(path).carve_validation(cfg.data.root, cfg.data.val_fraction, cfg.data.split_seed)
    return dataset, cache


def build(cfg: ExperimentConfig, cache: TensorCache, dataset) -> tuple[torch.nn.Module, object]:
    balancer = get("balancers", cfg.balancer.name)(**cfg.balancer.params)
    unknown = [m for m in cfg.data.modalities if m not in dataset.modalities]
    if unknown:
        raise KeyError(f"data.modalities {unknown} are not modalities of {cfg.data.dataset} "
                       f"({list(dataset.modalities)})")
    used = balancer.modalities(list(cfg.data.modalities))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, {m: dataset.modalities[m] for m in used}, cache.num_classes)
    return model, balancer


def run(cfg: ExperimentConfig, root: str | Path | None = None, force: bool = False) -> RunRecord:
    """Train ``cfg`` (or return its cached record)."""
    run_dir = Path(root or results_root()) / cfg.hash()
    record_path = run_dir / "record.json"
    if record_path.is_file() and not force:
        return RunRecord.load(record_path)
    dataset, cache = load_cache(cfg)
    model, balancer = build(cfg, cache, dataset)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_blob = json.dumps(cfg.to_dict(), indent=1, sort_keys=True)
    atomic_write_bytes(run_dir / "config.json", lambda tmp: tmp.write_text(config_blob))
    if force and (run_dir / "checkpoint.pt").exists():
        (run_dir / "checkpoint.pt").unlink()
    result = Trainer(cfg, model, balancer, cache, run_dir).fit()
    record = RunRecord(
        config=cfg.to_dict(), hash=cfg.hash(), data={
            "dataset": cfg.data.dataset, "embedded": bool(getattr(dataset, "embedded", False)),
            "audio_recipe": cfg.data.audio_recipe, "clips": len(cache),
            "train": len(cache.indices("train")), "val": len(cache.indices("val")),
            "test": len(cache.indices("test")), "classes": cache.meta["classes"]},
        **{k: result[k] for k in ("final", "best_epoch", "select_on", "history", "steps", "device", "precision",
                                  "train_seconds")})
    blob = json.dumps(dataclasses.asdict(record), indent=1)
    atomic_write_bytes(record_path, lambda tmp: tmp.write_text(blob))
    record.path = str(record_path)
    return record


def sweep(cfgs: Iterable[ExperimentConfig], root: str | Path | None = None) -> list[RunRecord]:
    return [run(cfg, root) for cfg in cfgs]


def config_from(d: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, d)


def grid(params: dict, section: str, methods: dict[str, dict], seeds: list[int], **dotted) -> dict[str, list[RunRecord]]:
    """Run every ``label -> balancer spec ({name, params})`` for every seed of a params.yaml section."""
    from .config import experiment_config

    out = {}
    for label, spec in methods.items():
        unknown = set(spec) - {"name", "params"}
        if unknown:
            raise KeyError(f"{section}.methods.{label}: unknown key(s) {sorted(unknown)}; use name and params")
        out[label] = [run(experiment_config(params, section, **{"balancer.name": spec["name"],
                                                               "balancer.params": spec.get("params", {}),
                                                               "train.seed": seed}, **dotted))
                      for seed in seeds]
    return out
