"""Command line: python -m mmlib {list,prepare,train,show,sweep,notebook,bench}.

Bad input ends in one line on stderr, ``error: <file, key or value>: <what is wrong>; <what to do>``, and exit
status 2; ``--debug`` (before the command) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
from pathlib import Path

from . import bench, registry


def cmd_list(args) -> int:
    for name in registry.names(args.kind):
        print(name)
    return 0


def cmd_prepare(args) -> int:
    from . import locks
    from .config import experiment_config, load_params
    params = load_params(args.profile)
    if args.setup:  # everything from a params.yaml setup (mmlib.tables)
        from .tables import Cell, cell_config
        cfg = cell_config(params, Cell(setup=args.setup), seed=0)
    else:
        if not (args.dataset and args.root):
            raise ValueError("prepare needs --dataset and --root, or --setup")
        cfg = experiment_config(params)
    configured = cfg.data.dataset  # the profile's generator parameters belong to this dataset
    given = {"data.dataset": args.dataset, "data.root": args.root, "data.audio_recipe": args.recipe,
             "data.image_size": args.image_size}
    cfg = cfg.replace(**{k: v for k, v in given.items() if v is not None}).data  # the values checked as a config's
    dataset = registry.get("datasets", cfg.dataset)()
    options = {"text_length": cfg.text_length}
    embedded = getattr(dataset, "embedded", False)
    generator = cfg.generator if dataset.name == configured else {}  # another dataset takes its defaults
    # a missing root of real data is the loader's error to name, not a directory to create
    with locks.data_root(cfg.root) if embedded or Path(cfg.root).is_dir() else contextlib.nullcontext():
        if embedded:  # generated first, with the generator parameters
            path = dataset.ensure_prepared(cfg.root, cfg.audio_recipe, cfg.image_size, args.skip_bad,
                                           generator=generator, **options)
        else:
            path = dataset.prepare(cfg.root, cfg.audio_recipe, cfg.image_size, args.skip_bad, generator=generator,
                                   **options)
    print(path)
    return 0


def _config(args):
    from .config import (ExperimentConfig, deep_merge, experiment_config, from_dict, load_params, parse_set,
                         read_yaml_mapping)
    overrides = parse_set(args.set or [])
    if args.config:
        d = read_yaml_mapping(args.config)
        base = experiment_config(load_params(args.profile)).to_dict() if args.profile else {}
        cfg = from_dict(ExperimentConfig, deep_merge(base, d))
        return cfg.replace(**overrides) if overrides else cfg
    return experiment_config(load_params(args.profile), args.section, **overrides)


def cmd_train(args) -> int:
    from .experiments import run
    record = run(_config(args), force=args.force)
    print(record.path)
    print(json.dumps({"test": record.final["test"], "val": record.final["val"], "best_epoch": record.best_epoch,
                      "select_on": record.select_on, "data": record.data}, indent=1))
    return 0


def cmd_show(args) -> int:
    """The resolved configuration of a table cell (or of --profile/--section/--set), its run identity and the
    estimated GPU memory of one of its runs."""
    import yaml

    from .config import load_params, stable_hash
    from .experiments import results_root, run_identity
    if args.cell:
        from . import tables
        if not args.section:
            raise ValueError("--cell needs --section (a params.yaml table section, e.g. amss_02_table2)")
        params = load_params(args.profile)
        cell = tables.make_cell(params[args.section], *args.cell)
        cfg = tables.cell_config(params, cell, args.seed, args.section)
    else:
        cfg = _config(args)
    identity = run_identity(cfg)
    run_id = stable_hash(identity)
    record = results_root() / run_id / "record.json"
    print(yaml.safe_dump({"config": cfg.to_dict()}, sort_keys=False, allow_unicode=True).rstrip())
    print(yaml.safe_dump({"identity": {"config_hash": cfg.config_hash(), "data_fingerprint": identity["data"],
                                       "code_version": identity["code"], "run_hash": run_id,
                                       "record": str(record) if record.is_file() else "not trained yet"}},
                         sort_keys=False).rstrip())
    # a GPU's share for one run: parameters, gradients, optimizer state, and the activations of one fp32 CPU
    # training step at batch 2 (its forward peak, in a fresh process) scaled linearly to train.batch_size
    print(yaml.safe_dump({"memory": bench.gpu_memory_estimate(cfg)}, sort_keys=False, width=110).rstrip())
    return 0


EXECUTOR_HELP = """executors (--executor, else params.yaml's executor.name):
  local           here: --workers processes (0: one per GPU, bound to it; replication.workers on a CPU)
  slurm           one SLURM job array through submitit (--partition, --gpus-per-job, --timeout-min)
  submitit_local  the submitit path (pickled jobs, job folders, a process each) here: a check before a cluster

Runs already in the run store ($MMLIB_RESULTS, else results/) are not trained again; jobs write into it (on a
cluster, a filesystem every node shares), and the notebooks (dvc repro) then read the records."""


def cmd_sweep(args) -> int:
    """Train every run of a paper artifact (its stand-ins' calibration, every cell) where the executor
    says."""
    from . import executors, tables
    from .config import load_params
    from .experiments import results_root, sweep

    params = load_params(args.profile)
    executor = executors.executor_config(params, name=args.executor, workers=args.workers,
                                         partition=args.partition, gpus_per_job=args.gpus_per_job,
                                         timeout_min=args.timeout_min)
    cfgs = tables.artifact_configs(params, args.section)
    where = f"{args.section} (profile {params['profile']})"
    if not cfgs:
        print(f"{where}: no runs to train")
        return 0
    root = results_root()
    out = sweep(cfgs, workers=params.get("replication", {}).get("workers", 1), desc=args.section,
                skip_diverged=True, executor=executor, wait=args.wait)
    if executor.name != "local" and not args.wait:
        folder = Path(executor.folder) if executor.folder else root / "jobs"
        print(f"{where}: submitted {len(out)} runs to {executor.name} (of the section's {len(cfgs)}, with "
              f"the pre-training runs they need; the others are in the run store {root}); job logs under "
              f"{folder}")
        print("when they are done, the notebook (dvc repro) or `sweep ... --wait` collects the records")
        return 0
    lost = sum(r is None for r in out)
    print(f"{where}: {len(cfgs)} runs in the run store {root}" + (f" ({lost} diverged: non-finite loss)"
                                                                   if lost else ""))
    return 0


def cmd_notebook(args) -> int:
    from .config import load_params
    from .notebooks import run_notebook
    print(run_notebook(args.path, args.profile or load_params()["profile"], args.reports_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered components")
    p.add_argument("kind", choices=registry.KINDS)
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("prepare", help="validate a dataset's layout and build its tensor cache "
                                       "(embedded datasets are generated first)")
    p.add_argument("--dataset", help="registered dataset name")
    p.add_argument("--root", help="directory in the dataset's public layout")
    p.add_argument("--setup", help="a params.yaml setup: its dataset, root, recipe and generator (profile-aware)")
    p.add_argument("--profile", help="params.yaml profile for defaults (recipe, image size; default: "
                                      "params.yaml's `profile`)")
    p.add_argument("--recipe", help="audio recipe (default: params.yaml base.data.audio_recipe)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--skip-bad", action="store_true", help="report and skip bad clips instead of stopping")
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("train", help="train one configuration (cached by its hash); prints the record path "
                                     "and final metrics as JSON")
    p.add_argument("--config", help="YAML ExperimentConfig (merged over --profile's base when given)")
    p.add_argument("--profile", help="params.yaml profile (default: params.yaml's `profile`, when no --config)")
    p.add_argument("--section", help="params.yaml section whose `experiment` overrides apply")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. train.epochs=3")
    p.add_argument("--force", action="store_true", help="retrain even if a record exists")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("show", help="a configuration (a table cell's with --section/--cell) resolved, with its "
                                    "run identity: config hash, data fingerprint, code version, run hash, record "
                                    "(embedded data is generated and prepared first if needed), and the GPU "
                                    "memory a run needs at its batch size (from one CPU step at batch 2)")
    p.add_argument("--profile", help="params.yaml profile (default: params.yaml's `profile`)")
    p.add_argument("--section", help="params.yaml section (a table section with --cell)")
    p.add_argument("--cell", nargs=2, metavar=("ROW", "COLUMN"), help="a table cell, e.g. AMSS KS/acc")
    p.add_argument("--seed", type=int, default=0, help="seed of the cell's run (default 0)")
    p.add_argument("--config", help="YAML ExperimentConfig (merged over --profile's base when given)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. train.epochs=3")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("sweep", help="train every run of a paper artifact's section (calibration runs and "
                                     "cells) locally or as cluster jobs; without --wait, submit and exit",
                       description=cmd_sweep.__doc__, epilog=EXECUTOR_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", required=True, help="params.yaml table section, e.g. amss_02_table2")
    p.add_argument("--profile", help="params.yaml profile (default: params.yaml's `profile`)")
    p.add_argument("--executor", help="local, slurm or submitit_local (default: params.yaml's executor.name)")
    p.add_argument("--workers", type=int, help="local: processes (0: one per GPU)")
    p.add_argument("--partition", help="slurm: partition (default: the cluster's)")
    p.add_argument("--gpus-per-job", type=int, help="slurm: GPUs per job")
    p.add_argument("--timeout-min", type=int, help="time limit per job, minutes (slurm, submitit_local)")
    p.add_argument("--wait", action="store_true", help="wait for the jobs, showing progress (local always "
                                                       "waits)")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("notebook", help="execute a notebook with papermill into reports/<profile>/... (what each "
                                        "dvc stage runs), showing the sweeps' progress on the terminal")
    p.add_argument("path", help="e.g. notebooks/amss/amss_02_table2.ipynb")
    p.add_argument("--profile", help="params.yaml profile (default: params.yaml's `profile`)")
    p.add_argument("--reports-dir", default="reports", help="reports root, relative to the project")
    p.set_defaults(fn=cmd_notebook)

    p = sub.add_parser("bench", help="throughput benchmark on the current device; writes bench.json")
    bench.add_arguments(p)
    p.set_defaults(fn=bench.main)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except Exception as err:
        message = error_message(err)
        if message is None or args.debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


# what to do after an OSError, by errno
OS_ERROR_HINTS = {
    errno.ENOSPC: "free space on that disk, or write elsewhere (MMLIB_RESULTS for runs, data.root for data)",
    errno.EDQUOT: "free space in your quota, or write elsewhere (MMLIB_RESULTS for runs, data.root for data)",
    errno.EACCES: "make it writable, or write elsewhere (MMLIB_RESULTS for runs, data.root for data)",
    errno.EPERM: "make it writable, or write elsewhere (MMLIB_RESULTS for runs, data.root for data)",
    errno.EROFS: "the file system is read-only: write elsewhere (MMLIB_RESULTS for runs, data.root for data)",
}


def error_message(err: Exception) -> str | None:
    """The one line a user sees for ``err``, or None for an error that is not about the input (a bug: its
    traceback is shown). Input errors are the project's (LayoutError, MediaError, CacheError, NonFiniteLossError:
    ValueError / FloatingPointError), the configuration's (KeyError, TypeError, ValueError naming the key), and an
    OSError about a file (missing, not writable, a full disk), worded with its path."""
    from .train import NonFiniteLossError

    if isinstance(err, OSError):
        name = err.filename if err.filename is not None else None
        if name is None:
            return " ".join(str(err).split()) if isinstance(err, (FileNotFoundError, FileExistsError)) else None
        hint = OS_ERROR_HINTS.get(err.errno, "check the path")
        return f"{name}: {err.strerror or err}; {hint}"
    if isinstance(err, (KeyError, TypeError, ValueError, NonFiniteLossError)):
        text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
        return " ".join(str(text).split())  # one line
    return None


if __name__ == "__main__":
    sys.exit(main())
