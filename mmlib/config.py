"""Typed experiment configuration, loaded from params.yaml sections and profiles.

params.yaml holds ``base:`` (an ExperimentConfig), one section per notebook, a ``datasets:`` block with the
embedded generators' parameters, and ``profiles: {ci, demo, full}``: each profile is an overlay with the same
shape as the file, deep-merged over it. Unknown keys and wrong types fail with the dotted key in the message, and
so do values out of range where they enter (a NaN anywhere, a non-finite or non-positive learning rate, zero
epochs, batch or image sizes, a StepLR step of 0, ...: ``ExperimentConfig.check_values``).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

PROFILES = ("ci", "demo", "full")


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans and floats: only true / false (any case) are booleans, so
    ``on``, ``off``, ``yes``, ``no`` are strings; ``3e-4`` is a float (YAML 1.1 wants a dot). DVC reads and writes
    params.yaml as YAML 1.2 (``dvc exp run -S`` rewrites the file and drops the quotes of ``"on"``), so mmlib reads
    it the same way."""


_YAML12 = {
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:float": (r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
                                r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
                                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
}
Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML12]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, (_pattern, _first) in _YAML12.items():
    Yaml12Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def load_yaml(text: str) -> Any:
    """A YAML document read as YAML 1.2 reads its scalars (``Yaml12Loader``)."""
    return yaml.load(text, Loader=Yaml12Loader)
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


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"an integer >= {low}"


def _finite(low: float, strict: bool) -> tuple[Callable[[Any], bool], str]:
    return ((lambda v: math.isfinite(v) and (v > low if strict else v >= low)),
            f"a finite number {'>' if strict else '>='} {low:g}")


# value checks of the fields whose range the code relies on: dotted key -> (test, what the value must be)
VALUE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.frames": _at_least(1),
    "data.image_size": _at_least(1),
    "data.val_fraction": ((lambda v: 0.0 <= v < 1.0), "a number in [0, 1)"),
    "data.text_length": _at_least(1),
    "data.split_seed": _at_least(0),  # numpy's generators take no negative seed
    "optim.name": ((lambda v: v in ("sgd", "adam", "adagrad")), "sgd, adam or adagrad"),
    "optim.lr": _finite(0.0, strict=True),
    "optim.momentum": _finite(0.0, strict=False),
    "optim.weight_decay": _finite(0.0, strict=False),
    "optim.step_size": _at_least(1),
    "optim.gamma": _finite(0.0, strict=True),
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.eval_batch_size": _at_least(1),
    "train.threads": _at_least(0),
    "train.device": ((lambda v: v in ("auto", "cpu", "cuda")), "auto, cpu or cuda"),
    "train.precision": ((lambda v: v in ("auto", "bf16", "fp32")), "auto, bf16 or fp32"),
    "train.select_on": ((lambda v: v in ("val", "test")), "val or test"),
    "train.progress": ((lambda v: v in ("auto", "on", "off")), "auto, on or off"),
}


def _reject_nan(value: Any, where: str) -> None:
    """A NaN is never a setting: raise naming its dotted key, wherever it is (balancer params included)."""
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{where}: must be a number, got nan")
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_nan(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _reject_nan(v, f"{where}[{i}]")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)

    def __post_init__(self):
        self.check_values()

    def check_values(self) -> None:
        """No NaN anywhere, and every ``VALUE_CHECKS`` field in range; else ValueError naming the dotted key."""
        _reject_nan(self.to_dict(), "")
        for key, (ok, what) in VALUE_CHECKS.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if not ok(value):
                raise ValueError(f"{key}: must be {what}, got {value!r}")

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


def check_arguments(fn: Callable, kwargs: dict, where: str) -> None:
    """Keyword arguments for a registered constructor (an encoder, a fusion) checked against its signature before
    the call: an unknown name or a value of the wrong type raises naming ``<where>.<name>``. Lists and tuples stand
    for each other (YAML has only lists); unions and untyped parameters are not checked."""
    target = fn.__init__ if isinstance(fn, type) else fn
    params = inspect.signature(target).parameters
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: leave the types to the constructor
        hints = {}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name, value in kwargs.items():
        key = f"{where}.{name}"
        if name not in known:
            if open_ended:
                continue
            raise KeyError(f"{key}: unknown argument of {getattr(fn, '__name__', fn)}; known: {', '.join(known)}")
        hint = hints.get(name)
        origin = typing.get_origin(hint) or hint
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            continue
        if origin in (bool, int, float, str, list, tuple, dict):
            _check_type(value, hint, key)


def from_dict(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise with the dotted key."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise TypeError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"{', '.join((where + '.' if where else '') + k for k in unknown)}: unknown "
                       f"key{'s' if len(unknown) > 1 else ''}; known: {', '.join(sorted(known))}")
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
    raw = read_yaml_mapping(path, "params.yaml's sections and profiles")
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


BOOLEAN_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
NUMBER = re.compile(r"[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?")


def field_hint(key: str, cls: type = None) -> Any:
    """The type of the ExperimentConfig field at dotted ``key``; None for keys inside a free-form dict
    (``data.generator.*``, ``balancer.params.*``, ``model.encoders.*``) or unknown keys."""
    cls = cls or ExperimentConfig
    hint: Any = cls
    for part in key.split("."):
        if not dataclasses.is_dataclass(hint):
            return None
        hint = typing.get_type_hints(hint).get(part)
        if hint is None:
            return None
    return hint


def parse_value(text: str, hint: Any = None, key: str = "") -> Any:
    """One ``--set`` value as a user means it. A string field takes the text as it is (``train.progress=off`` is
    "off"); a boolean field true / false / yes / no / on / off; a float field any float literal (``3e-4``, ``nan``:
    refused by the value checks). Other values are YAML flow scalars or collections read as YAML 1.2 reads them:
    ``3e-4`` is a number, ``off`` / ``yes`` are strings (YAML 1.1, PyYAML's default, reads them otherwise)."""
    origin = typing.get_origin(hint) or hint
    stripped = text.strip()
    quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
    if origin is str and not quoted:
        return text
    if origin is bool and stripped.lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[stripped.lower()]
    if origin is float:
        try:
            return float(stripped)
        except ValueError:
            pass
    try:
        value = load_yaml(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{key}: {text!r} is not a YAML value ({str(err).splitlines()[0]})") from None
    if isinstance(value, str) and not quoted and NUMBER.fullmatch(stripped):
        return float(stripped)
    return value


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "data.root=/x"]`` -> dotted overrides, each value parsed against its field's type
    (``parse_value``)."""
    out = {}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set {item}: expected key=value, e.g. train.epochs=3")
        key, value = item.split("=", 1)
        key = key.strip()
        out[key] = parse_value(value, field_hint(key), key)
    return out


def read_yaml_mapping(path: str | Path, what: str = "an ExperimentConfig (data, model, optim, train, balancer)"
                      ) -> dict:
    """The mapping a YAML file holds ({} when it is empty); errors name the file: missing, a directory, not YAML,
    or YAML that is not a mapping of ``what``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; pass a YAML file holding {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        reason = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{where}: not valid YAML ({reason}); it must hold {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TypeError(f"{path}: holds a YAML {type(data).__name__}, not a mapping; it must hold {what}")
    return data
