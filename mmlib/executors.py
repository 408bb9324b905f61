"""Where a sweep's runs train: local processes (one per GPU on a multi-GPU host), or a cluster through submitit.

Runs are independent and named by their identity, so the run store is the only coordination: a job trains one
configuration into ``<run store>/<hash>/`` (a lock per hash makes two workers on one hash safe; a run whose
pre-training run is missing trains it first, under that run's lock), and a later ``sweep`` or notebook reads
the records. ``ExecutorConfig`` comes from params.yaml's ``executor`` block (``executor_config``) and the
command line (``python -m mmlib sweep``):

- ``local``: ``workers`` spawned processes on this machine; on a CUDA host ``workers: 0`` means one per GPU, and
  each process sees one GPU only (``CUDA_VISIBLE_DEVICES``), so an 8-GPU node trains eight cells at once;
- ``slurm``: one SLURM job array through submitit (partition, GPUs / CPUs / memory per job, time limit, how many
  array tasks at once), job folders and logs under ``<run store>/jobs``;
- ``submitit_local``: the same submitit path (pickling, job folders, one process per job) on this machine, for
  tests and for a check before a cluster.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

EXECUTORS = ("local", "slurm", "submitit_local")


@dataclass
class ExecutorConfig:
    name: str = "local"  # local | slurm | submitit_local
    workers: int = 0  # local: processes (0: one per visible GPU on CUDA, else 1)
    partition: str = ""  # slurm partition ("" : the cluster's default)
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 64
    timeout_min: int = 24 * 60  # per job
    array_parallelism: int = 64  # array tasks running at once
    folder: str = ""  # job folders and logs ("" : <run store>/jobs)
    setup: list = field(default_factory=list)  # shell lines run before each SLURM job (module load, activate)

    def __post_init__(self):
        if self.name not in EXECUTORS:
            raise ValueError(f"executor.name must be one of {', '.join(EXECUTORS)}, got {self.name!r}")
        for key in ("workers", "gpus_per_job", "cpus_per_job", "mem_gb", "timeout_min", "array_parallelism"):
            value = getattr(self, key)
            if value < (0 if key in ("workers", "gpus_per_job") else 1):
                raise ValueError(f"executor.{key} must be >= {0 if key in ('workers', 'gpus_per_job') else 1}, "
                                 f"got {value}")


def executor_config(params: dict | None = None, **overrides) -> ExecutorConfig:
    """params.yaml's ``executor`` block (a profile's ``executor`` merged over it) with ``overrides`` on top
    (None: not given); unknown keys and wrong types raise naming ``executor.<key>``."""
    from .config import from_dict

    block = dict((params or {}).get("executor") or {})
    block.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(ExecutorConfig, block, "executor")


def visible_gpus() -> list[str]:
    """The GPUs this process may use (ids as CUDA_VISIBLE_DEVICES names them), [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [g.strip() for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def local_workers(cfg: ExecutorConfig, gpus: Sequence[str]) -> int:
    """Processes of the local executor: ``workers``, or one per GPU (at least one) when it is 0."""
    return cfg.workers or max(1, len(gpus))


def _bind_gpu(queue) -> None:  # a local worker's initializer: this process sees one GPU only
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())


def run_local(fn: Callable, arguments: list[tuple], workers: int, gpus: Sequence[str] = (),
              on_done: Callable[[object], None] = lambda result: None) -> list:
    """``fn(*args)`` for each of ``arguments`` in ``workers`` spawned processes (in this process when 1), in any
    order; ``on_done`` is called with each result. With ``gpus``, worker i is bound to ``gpus[i % len(gpus)]``."""
    if workers <= 1 or len(arguments) <= 1:
        results = []
        for args in arguments:
            results.append(fn(*args))
            on_done(results[-1])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    init, initargs = None, ()
    if gpus:
        queue = context.Manager().Queue()
        for i in range(workers):
            queue.put(gpus[i % len(gpus)])
        init, initargs = _bind_gpu, (queue,)
    results = []
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init, initargs=initargs) as pool:
        futures = [pool.submit(fn, *args) for args in arguments]
        for future in as_completed(futures):
            results.append(future.result())
            on_done(results[-1])
    return results


def submitit_executor(cfg: ExecutorConfig, folder: Path):
    """A submitit executor for ``cfg`` (``slurm`` or ``submitit_local``), job folders under ``folder``."""
    try:
        import submitit
    except ImportError as err:  # pragma: no cover - submitit is a pinned requirement
        raise ImportError("executor.name slurm / submitit_local needs submitit (pip install submitit)") from err
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.name == "slurm":
        executor = submitit.AutoExecutor(folder=str(folder / "%A_%a"), cluster="slurm")
        executor.update_parameters(
            timeout_min=cfg.timeout_min, gpus_per_node=cfg.gpus_per_job, cpus_per_task=cfg.cpus_per_job,
            mem_gb=cfg.mem_gb, slurm_array_parallelism=cfg.array_parallelism, name="mmlib",
            **({"slurm_partition": cfg.partition} if cfg.partition else {}),
            **({"slurm_setup": list(cfg.setup)} if cfg.setup else {}))
    else:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="local")
        executor.update_parameters(timeout_min=cfg.timeout_min, gpus_per_node=0, cpus_per_task=1, name="mmlib")
    return executor


def submit(fn: Callable, arguments: list[tuple], cfg: ExecutorConfig, folder: Path) -> list:
    """Submit ``fn(*args)`` for each of ``arguments`` as one job array; returns the submitit jobs."""
    executor = submitit_executor(cfg, folder)
    if not arguments:
        return []
    columns = list(zip(*arguments))
    return executor.map_array(fn, *columns)


def wait(jobs: list, on_done: Callable[[object], None] = lambda result: None, poll_s: float = 2.0) -> list:
    """Wait for submitit ``jobs``, calling ``on_done`` with each result as it finishes; a failed job raises with
    its log folder named."""
    pending, results = list(jobs), []
    while pending:
        finished = [job for job in pending if job.done()]
        for job in finished:
            try:
                result = job.result()
            except Exception as err:
                raise RuntimeError(f"job {job.job_id} failed (logs: {job.paths.folder}): "
                                   f"{str(err).strip().splitlines()[-1] if str(err).strip() else err!r}") from err
            results.append(result)
            on_done(result)
            pending.remove(job)
        if pending:
            time.sleep(poll_s)
    return results
