"""Run store: ``run(cfg) -> RunRecord``, cached by the run's identity.

A run's identity (``run_identity``) is its result-relevant configuration (``ExperimentConfig.identity``: no
presentation switches, no paths), the fingerprint of the prepared data's content and the version of the code
that computes results (``mmlib.identity``); its hash names the run's folder. So a changed dataset or a changed
trainer never serves an old record, and two clones of the project at different paths share their runs.
``<results_root>/<hash>/record.json`` is written atomically once a run finishes; an interrupted run resumes from
``<results_root>/<hash>/checkpoint.pt``. The results root is ``$MMLIB_RESULTS`` or ``results/`` beside params.yaml.

A record is served only when the identity stored in it hashes to the requested run (a record copied or edited
into another run's folder is refused, naming the file); a corrupt record or checkpoint is named with the command
that rebuilds it. Training one run holds ``<hash>/run.lock`` (mmlib.locks): a second process asking for the same
run waits, then reads its record. Embedded data is generated and prepared under its data root's lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from . import locks
from .config import ExperimentConfig, check_arguments, find_params_file, from_dict, stable_hash
from .data.cache import CacheError, TensorCache, atomic_write_bytes, fingerprint_of, load_checked, prepare_command
from .data.loader import source_modality
from .identity import code_version, machine
from .models.multimodal import build_model
from .progress import progress_bar
from .registry import get
from .train import NonFiniteLossError, Trainer

RECORD_VERSION = 2


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
    identity: dict = field(default_factory=dict)  # {"data": content fingerprint, "code": code version}
    machine: dict = field(default_factory=dict)  # CPU / GPU model, threads, versions (mmlib.identity.machine)
    path: str = ""
    version: int = RECORD_VERSION

    @property
    def test_acc(self) -> float:
        return self.final["test"]["acc"]

    def unimodal_acc(self, modality: str, protocol: str | None = None, split: str = "test") -> float:
        """A modality's accuracy inside the model under ``protocol`` (default: the run's first protocol), or a
        unimodal run's own accuracy."""
        uni = self.final[split]["unimodal"]
        protocols = self.config.get("train", {}).get("protocols") or ["zero_feature"]
        table = uni.get(protocol or protocols[0]) or uni.get("model")
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


def prepared_cache(cfg: ExperimentConfig) -> tuple[object, Path]:
    """(dataset, path of its tensor cache), generating and preparing embedded data on first use, under the data
    root's lock (a real dataset's prepared cache is only read)."""
    dataset = get("datasets", cfg.data.dataset)()
    embedded = getattr(dataset, "embedded", False)
    with locks.data_root(cfg.data.root) if embedded else contextlib.nullcontext():
        path = dataset.ensure_prepared(cfg.data.root, cfg.data.audio_recipe, cfg.data.image_size,
                                       cfg.data.skip_bad, generator=cfg.data.generator,
                                       text_length=cfg.data.text_length)
    return dataset, Path(path)


def load_cache(cfg: ExperimentConfig) -> tuple[object, TensorCache]:
    dataset, path = prepared_cache(cfg)
    if getattr(dataset, "embedded", False):
        rebuild = "remove it and run again (embedded data is prepared again on first use)"
    else:
        command = prepare_command(cfg.data.dataset, cfg.data.root, cfg.data.audio_recipe, cfg.data.image_size)
        rebuild = f"prepare it again: {command}"
    cache = TensorCache.load(path, rebuild).carve_validation(cfg.data.val_fraction, cfg.data.split_seed)
    return dataset, cache


def run_identity(cfg: ExperimentConfig) -> dict:
    """What a run's result is a function of: the result-relevant config, the data's content fingerprint and the
    code version (the data is prepared first if it is not yet)."""
    _, path = prepared_cache(cfg)
    return {"config": cfg.identity(), "data": fingerprint_of(path), "code": code_version()}


def run_hash(cfg: ExperimentConfig) -> str:
    """The name of a run's folder in the run store: the hash of its identity."""
    return stable_hash(run_identity(cfg))


def build(cfg: ExperimentConfig, cache: TensorCache, dataset) -> tuple[torch.nn.Module, object]:
    balancer = get("balancers", cfg.balancer.name)(**cfg.balancer.params)
    source = {m: source_modality(m, dataset.modalities) for m in cfg.data.modalities}  # <m>_copy reads <m>
    unknown = [m for m in cfg.data.modalities if source[m] not in dataset.modalities]
    if unknown:
        raise KeyError(f"data.modalities {unknown} are not modalities of {cfg.data.dataset} "
                       f"({list(dataset.modalities)})")
    used = balancer.modalities(list(cfg.data.modalities))
    for where, spec, kind in [(f"model.encoders.{m}", cfg.model.encoders.get(m), "encoders") for m in used] + [
            ("model.fusion", cfg.model.fusion, "fusions")]:
        if isinstance(spec, dict) and "name" in spec:
            check_arguments(get(kind, spec["name"]), {k: v for k, v in spec.items() if k != "name"}, where)
        elif spec is not None:
            raise KeyError(f"{where}: expected a mapping with a name, e.g. {{name: resnet18}}, got {spec!r}")
    torch.manual_seed(cfg.train.seed)
    dims = cache.meta.get("feature_dims", {})  # feature sequences: the width the prepared features have
    model = build_model(cfg.model, {m: dims.get(source[m], dataset.modalities[source[m]]) for m in used},
                        cache.num_classes)
    check_vocabulary(model, cache)
    return model, balancer


def check_vocabulary(model: torch.nn.Module, cache: TensorCache) -> None:
    """A token encoder must embed every id of the cache's vocabulary (``meta["vocab_size"]``)."""
    needed = cache.meta.get("vocab_size")
    for m, encoder in model.encoders.items():
        size = getattr(encoder, "vocab_size", None)
        if needed is not None and size is not None and size < needed:
            raise ValueError(f"model.encoders.{m}.vocab_size is {size}, but the data's vocabulary has {needed} "
                             f"tokens ({cache.meta.get('tokenizer', 'unknown tokenizer')}): set it to >= {needed}")


def pretrain_configs(cfg: ExperimentConfig, modalities: list[str]) -> dict[str, ExperimentConfig]:
    """The unimodal runs whose encoders ``cfg.model.pretrain`` starts from, per modality."""
    if not cfg.model.pretrain:
        return {}
    spec = dict(cfg.model.pretrain)
    epochs = spec.pop("epochs", None)
    if spec or not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"model.pretrain must be {{epochs: N}} with N >= 1, got {cfg.model.pretrain}")
    return {m: cfg.replace(**{"balancer.name": "unimodal", "balancer.params": {"modality": m},
                              "model.pretrain": {}, "train.epochs": epochs}) for m in modalities}


def load_pretrained_encoders(model: torch.nn.Module, cfg: ExperimentConfig, root: str | Path | None) -> None:
    """``model.pretrain: {epochs: N}``: each encoder takes the weights of a unimodal run of N epochs (cached in
    the run store like any run; its checkpoint keeps the selected weights)."""
    for m, sub in pretrain_configs(cfg, model.modalities).items():
        record = run(sub, root)
        checkpoint = Path(record.path).parent / "checkpoint.pt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: the pre-training run kept no weights; retrain it with "
                                    f"`python -m mmlib train ... --force`")
        rebuild = "retrain the pre-training run: `python -m mmlib train ... --force` on its configuration"
        state = load_checked(checkpoint, rebuild, map_location="cpu")["best"]["state"]
        prefix = f"encoders.{m}."
        model.encoders[m].load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


@contextlib.contextmanager
def cpu_threads(threads: int):
    """torch's CPU thread count set to ``threads`` for the block (0: left as it is)."""
    if threads < 0:
        raise ValueError(f"train.threads must be >= 0, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_record(path: Path, identity: dict) -> RunRecord:
    """The record at ``path`` if the identity stored in it is ``identity`` (its hash, recomputed, names the
    run); else CacheError naming the file: unreadable, or another run's record (copied or edited into the folder)."""
    run_id = stable_hash(identity)
    redo = f"remove {path.parent} or retrain with `python -m mmlib train ... --force`"
    try:
        record = RunRecord.load(path)
        stored = {"config": config_from(record.config).identity(),
                  **{k: record.identity[k] for k in ("data", "code")}}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise CacheError(f"{path}: unreadable run record ({type(err).__name__}: {err}); {redo}") from err
    if record.hash != run_id:
        raise CacheError(f"{path}: holds the record of run {record.hash}, not of {run_id}; {redo}")
    if stable_hash(stored) != run_id:
        differ = [k for k in ("config", "data", "code") if stored[k] != identity[k]]
        raise CacheError(f"{path}: the record's own identity ({', '.join(differ)}) is not that of run {run_id}; "
                         f"{redo}")
    return record


DIVERGED = "diverged.json"  # beside a run's folder files: its loss became non-finite (no record, ever)


def diverged(run_dir: Path, run_id: str) -> str | None:
    """The error of a run that diverged (its loss became non-finite) in this folder, None if it did not."""
    path = run_dir / DIVERGED
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return marker.get("error") if isinstance(marker, dict) and marker.get("hash") == run_id else None


def run(cfg: ExperimentConfig, root: str | Path | None = None, force: bool = False) -> RunRecord:
    """Train ``cfg`` (or return the record of the same run: same config, data content and code). A second
    process training the same run waits for the first and returns its record. A run whose loss became
    non-finite raises NonFiniteLossError, and raises it again (without retraining) until ``force``."""
    identity = run_identity(cfg)
    run_id = stable_hash(identity)
    run_dir = Path(root or results_root()) / run_id
    record_path = run_dir / "record.json"
    if not force:
        if record_path.is_file():
            return load_record(record_path, identity)
        if error := diverged(run_dir, run_id):
            raise NonFiniteLossError(f"{error} (recorded in {run_dir / DIVERGED}; retrain with --force)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with locks.exclusive(run_dir / "run.lock", f"run {run_id}"):
        if record_path.is_file() and not force:  # trained by another process while this one waited
            return load_record(record_path, identity)
        try:
            return _train(cfg, identity, run_dir, root, force)
        except NonFiniteLossError as err:  # remembered, so a sweep over a learning-rate range does not retrain it
            blob = json.dumps({"hash": run_id, "error": str(err)}, indent=1)
            atomic_write_bytes(run_dir / DIVERGED, lambda tmp: tmp.write_text(blob))
            raise


def _train(cfg: ExperimentConfig, identity: dict, run_dir: Path, root: str | Path | None,
           force: bool) -> RunRecord:
    run_id = stable_hash(identity)
    dataset, cache = load_cache(cfg)
    if cache.meta.get("fingerprint") != identity["data"]:
        raise CacheError(f"{cfg.data.root}: the tensor cache changed while this run started; run again")
    model, balancer = build(cfg, cache, dataset)
    if cfg.model.pretrain:
        load_pretrained_encoders(model, cfg, root)
    config_blob = json.dumps({"identity": identity, "config": cfg.to_dict()}, indent=1, sort_keys=True)
    atomic_write_bytes(run_dir / "config.json", lambda tmp: tmp.write_text(config_blob))
    if force and (run_dir / "checkpoint.pt").exists():
        (run_dir / "checkpoint.pt").unlink()
    with cpu_threads(cfg.train.threads):
        result = Trainer(cfg, model, balancer, cache, run_dir, run_id=run_id).fit()
        where = machine()
    record = RunRecord(
        config=cfg.to_dict(), hash=run_id, data={
            "dataset": cfg.data.dataset, "embedded": bool(getattr(dataset, "embedded", False)),
            "audio_recipe": cfg.data.audio_recipe, "clips": len(cache),
            "train": len(cache.indices("train")), "val": len(cache.indices("val")),
            "test": len(cache.indices("test")), "classes": cache.meta["classes"]},
        identity={"data": identity["data"], "code": identity["code"]}, machine=where,
        **{k: result[k] for k in ("final", "best_epoch", "select_on", "history", "steps", "device", "precision",
                                  "train_seconds")})
    blob = json.dumps(dataclasses.asdict(record), indent=1)
    record_path = run_dir / "record.json"
    atomic_write_bytes(record_path, lambda tmp: tmp.write_text(blob))
    record.path = str(record_path)
    return record


def _run_in_worker(cfg_dict: dict, root: str) -> str | None:
    """A sweep worker's run: the record's path, or None when the run diverged (non-finite loss)."""
    try:
        return run(config_from(cfg_dict), root).path
    except NonFiniteLossError:
        return None


def sweep(cfgs: Iterable[ExperimentConfig], root: str | Path | None = None, workers: int = 1,
          desc: str = "runs", skip_diverged: bool = False, executor=None, wait: bool = True) -> list:
    """Records of ``cfgs`` in order. Configurations without a record are trained once each, where ``executor``
    (mmlib.executors.ExecutorConfig; default local) says: locally by ``workers`` processes (on a CUDA host one
    per visible GPU, each bound to its GPU; set ``train.threads`` so that workers x threads fits the cores), or
    as a submitit job array (SLURM) whose jobs write into the same run store; ``wait=False`` returns the
    submitted jobs (one per run to train; the local executor always waits). A run whose loss became non-finite
    raises, or with ``skip_diverged`` is None in the list.
    Progress (runs done / to train, ETA) goes to the terminal or ``$MMLIB_PROGRESS``, never to stdout."""
    from . import executors

    cfgs = list(cfgs)
    root = Path(root or results_root())
    executor = executor or executors.ExecutorConfig()
    ids = [run_hash(c) for c in cfgs]  # prepares each dataset here, once, before any worker reads it

    def done(h: str) -> bool:
        return (root / h / "record.json").is_file() or diverged(root / h, h) is not None

    todo = {h: c for h, c in zip(ids, cfgs) if not done(h)}
    pre = {run_hash(s): s for c in todo.values() for s in pretrain_configs(c, c.data.modalities).values()}
    pre = {h: s for h, s in pre.items() if not done(h) and h not in todo}
    with progress_bar(len(pre) + len(todo), desc) as bar:
        tick = lambda _: bar.update(1)  # noqa: E731
        if executor.name == "local":
            gpus = executors.visible_gpus()
            count = executor.workers or (len(gpus) if gpus else workers)
            for stage in (pre, todo):  # pre-training runs first: the others load their weights
                executors.run_local(_run_in_worker, [(c.to_dict(), str(root)) for c in stage.values()], count,
                                    gpus if count > 1 else (), on_done=tick)
        else:  # one job array; a job whose pre-training run is missing trains it first, under its lock
            jobs = executors.submit(_run_in_worker, [(c.to_dict(), str(root)) for c in {**pre, **todo}.values()],
                                    executor, Path(executor.folder or root / "jobs"))
            if not wait:
                return jobs
            executors.wait(jobs, on_done=tick)
    out = []
    for h, cfg in zip(ids, cfgs):
        if skip_diverged and diverged(root / h, h) is not None:
            out.append(None)
        else:
            out.append(run(cfg, root))
    return out


def config_from(d: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, d)


def grid(params: dict, section: str, methods: dict[str, dict], seeds: list[int], workers: int = 1,
         **dotted) -> dict[str, list[RunRecord]]:
    """Run every ``label -> balancer spec ({name, params})`` for every seed of a params.yaml section
    (``workers`` processes in parallel; see ``sweep``)."""
    from .config import experiment_config

    cfgs = {}
    for label, spec in methods.items():
        unknown = set(spec) - {"name", "params"}
        if unknown:
            raise KeyError(f"{section}.methods.{label}: unknown key(s) {sorted(unknown)}; use name and params")
        cfgs[label] = [experiment_config(params, section, **{"balancer.name": spec["name"],
                                                             "balancer.params": spec.get("params", {}),
                                                             "train.seed": seed}, **dotted) for seed in seeds]
    records = iter(sweep([c for cs in cfgs.values() for c in cs], workers=workers, desc=section))
    return {label: [next(records) for _ in cs] for label, cs in cfgs.items()}
