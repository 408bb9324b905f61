"""Typed experiment configuration, loaded from params.yaml sections and profiles.

params.yaml holds ``base:`` (an ExperimentConfig), one section per notebook, a ``datasets:`` block with the
embedded generators' parameters, and ``profiles: {ci, demo, full}``: each profile is an overlay with the same
shape as the file, deep-merged over it. Unknown keys and wrong types fail with the dotted key in the message.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("ci", "demo", "full")
# fields that never change a result: presentation switches, and where the data lives (its content is part of a
# run's identity through the prepared cache's fingerprint, mmlib.experiments.run_identity)
NOT_IDENTITY = ("train.progress", "data.root")


@dataclass
class DataConfig:
    dataset: str = "synth_av"  # registered dataset name
    root: str = "data/embedded/demo/synth_av"  # the dataset's public on-disk layout lives here
    modalities: list = field(default_factory=lambda: ["audio", "visual"])
    audio_recipe: str = "stft_257x188"  # named spectrogram recipe (mmlib.data.audio)
    frames: int = 1  # frames per clip fed to the visual encoder
    image_size: int = 224  # frames are stored at image_size x image_size in the cache
    augment: bool = True  # random resized crop + horizontal flip on train batches (done on the device)
    val_fraction: float = 0.1  # validation split carved from train
    split_seed: int = 0
    skip_bad: bool = False  # report and skip bad clips instead of stopping
    text_length: int = 40  # tokens per text (text modalities), padded / truncated
    generator: dict = field(default_factory=dict)  # an embedded dataset's generator parameters (e.g. SynthAVConfig)


@dataclass
class ModelConfig:
    encoders: dict = field(default_factory=lambda: {"audio": {"name": "resnet18"}, "visual": {"name": "resnet18"}})
    fusion: dict = field(default_factory=lambda: {"name": "concat"})
    # {} trains the encoders from scratch; {epochs: N} starts each encoder from a unimodal model trained N
    # epochs on the same training split (in-domain pre-training; no external weights are fetched)
    pretrain: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adagrad
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    step_size: int = 70  # StepLR step, in epochs
    gamma: float = 0.1
    l1: float = 0.0  # lambda of L' = L + lambda ||theta||_1 (greedy.md §6.3), for every balancer
    l1_step: str = "subgradient"  # subgradient (lambda sign(theta) added to the gradients) | proximal


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp32
    channels_last: bool = True  # used on cuda only
    compile: bool = False  # torch.compile the model
    threads: int = 0  # CPU threads of this run (0: torch's default); CPU results depend on it, so it is hashed
    select_on: str = "val"  # checkpoint selection split: val | test (the public code's protocol; label it)
    protocols: list = field(default_factory=lambda: ["zero_feature"])  # unimodal-logit protocols evaluated
    probes: list = field(default_factory=list)  # per-epoch probes on the train split (mmlib.probes): suppression
    track_test: bool = True  # evaluate test each epoch for curves (selection never looks at it unless select_on=test)
    progress: str = "auto"  # auto (a tqdm bar only in terminals) | on | off
    # per-step squared gradient norms logged into record.steps (mmlib.utilization): auto = for MMTM-style fusions
    # (Greedy's mu per branch and bypass, and each encoder's), on = each encoder's for any model too, off
    gradient_norms: str = "auto"


@dataclass
class BalancerConfig:
    name: str = "naive"
    params: dict = field(default_factory=dict)  # validated by the balancer's own dataclass


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The result-relevant configuration: ``to_dict()`` without the ``NOT_IDENTITY`` fields."""
        d = self.to_dict()
        for key in NOT_IDENTITY:
            section, name = key.split(".")
            d[section].pop(name)
        return d

    def config_hash(self) -> str:
        """Hash of ``identity()``. A run's hash also covers its data and code (mmlib.experiments.run_hash)."""
        return stable_hash(self.identity())

    def replace(self, **dotted: Any) -> "ExperimentConfig":
        """A copy with dotted overrides, e.g. ``cfg.replace(**{"train.seed": 1})``."""
        d = self.to_dict()
        for key, value in dotted.items():
            set_dotted(d, key, value)
        return from_dict(ExperimentConfig, d)


def stable_hash(obj: Any) -> str:
    """First 16 hex digits of the sha256 of ``obj`` as canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation) or annotation
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is bool and not isinstance(value, bool):
        raise TypeError(f"{where}: expected a boolean, got {value!r}")
    if origin is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{where}: expected an integer, got {value!r}")
    if origin in (str, float, list, dict, tuple) and not isinstance(value, origin):
        raise TypeError(f"{where}: expected {origin.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise with the dotted key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise TypeError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"unknown key(s) {', '.join((where + '.' if where else '') + k for k in unknown)}; "
                       f"known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, key)
        else:
            kwargs[name] = _check_type(copy.deepcopy(value), hint, key)
    return cls(**kwargs)


def deep_merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def find_params_file(start: Path | None = None) -> Path:
    """params.yaml of the project: searched upwards from ``start`` (notebooks run from notebooks/...)."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file():
            return d / "params.yaml"
    raise FileNotFoundError(f"no params.yaml in {here} or any parent directory")


def load_params(profile: str | None = None, path: str | Path | None = None) -> dict:
    """The whole params.yaml with ``profiles[profile]`` merged over it; ``profile`` defaults to the file's
    top-level ``profile`` (what ``dvc repro`` runs). Keys ``profile`` and ``root`` are set."""
    path = Path(path) if path else find_params_file()
    raw = yaml.safe_load(path.read_text()) or {}
    profile = profile or raw.get("profile") or "demo"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
    profiles = raw.pop("profiles", {}) or {}
    missing = [p for p in PROFILES if p not in profiles]
    if missing:
        raise KeyError(f"{path}: profiles {missing} are missing")
    params = deep_merge(raw, profiles[profile])
    params["profile"] = profile
    params["root"] = str(path.parent)
    return params


def experiment_config(params: dict, section: str | None = None, **dotted: Any) -> ExperimentConfig:
    """``base`` merged with ``params[section]['experiment']`` (if any), then dotted overrides.

    Relative ``data.root`` paths are resolved against the project root, so notebooks can run from anywhere.
    """
    d = copy.deepcopy(params.get("base", {}))
    if section is not None:
        if section not in params:
            raise KeyError(f"params.yaml has no section {section!r}")
        d = deep_merge(d, params[section].get("experiment", {}))
    for key, value in dotted.items():
        set_dotted(d, key, value)
    cfg = from_dict(ExperimentConfig, d)
    root = Path(cfg.data.root)
    if not root.is_absolute() and "root" in params:
        cfg.data.root = str(Path(params["root"]) / root)
    return cfg


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "data.root=/x"]`` -> dotted overrides; values parsed as YAML scalars."""
    out = {}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out
