"""The tensor cache: every clip decoded once into tensors (uint8 frames, fp16 spectrograms, labels, splits).

``<cache>.pt`` holds the tensors and the meta, with ``meta["fingerprint"]``, a hash of the content written at
prepare time (the same media give the same bytes and the same fingerprint) and checked on every load.
``<cache>.json`` beside it holds the fingerprint and the version of the preparation code, so a run's identity
is known without loading the tensors, and a cache prepared by other code is noticed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class CacheError(ValueError):
    """A tensor cache that is missing, corrupt or prepared by other code; the message names the file."""


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same directory and rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_torch(obj, path: Path) -> None:
    """``torch.save`` through an open file, atomically: the archive's inner name is fixed (``archive/``), so the
    same object gives the same bytes whatever the temporary file was called."""
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            torch.save(obj, fh)
    atomic_write_bytes(path, write)


def sidecar(path: str | Path) -> Path:
    """``<cache>.json``: the fingerprint and the preparation code's version of the cache at ``path``."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | Path) -> dict:
    side = sidecar(path)
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return {}


def is_prepared(path: str | Path) -> bool:
    """The cache exists and was prepared by the current preparation code."""
    from ..identity import data_code_version

    return Path(path).is_file() and read_sidecar(path).get("prepared_by") == data_code_version()


def require_prepared(path: Path, dataset: str, root: str | Path) -> Path:
    """``path`` if it holds a cache prepared by the current code; else an error naming the prepare command."""
    if not is_prepared(path):
        state = "was prepared by other mmlib code" if path.is_file() else "does not exist"
        raise FileNotFoundError(f"{path}: the tensor cache {state}; run "
                                f"`python -m mmlib prepare --dataset {dataset} --root {root}`")
    return path


def fingerprint_of(path: str | Path) -> str:
    """The content fingerprint of a prepared cache (from its sidecar)."""
    fingerprint = read_sidecar(path).get("fingerprint")
    if not fingerprint:
        raise CacheError(f"{sidecar(path)}: missing or unreadable; prepare the dataset again "
                         f"(`python -m mmlib prepare ...`)")
    return fingerprint


def ensure_generated(root: Path, stamp_name: str, cfg, generate, dataset: str) -> None:
    """Generate an embedded dataset under ``root`` unless its stamp (written last by ``generate``) holds
    ``cfg.fingerprint()``; a stamp of other parameters raises rather than mixing two datasets."""
    stamp = root / stamp_name
    if stamp.is_file() and stamp.read_text().strip() == cfg.fingerprint():
        return
    if stamp.is_file():
        raise FileExistsError(f"{root} holds {dataset} generated with other parameters "
                              f"({stamp.read_text().strip()} != {cfg.fingerprint()}); remove it or pick "
                              f"another data.root")
    from ..progress import progress_stream

    with progress_stream() as stream:
        if stream is not None:
            print(f"generating {dataset} under {root} ...", file=stream, flush=True)
    generate(root, cfg)


@dataclass
class TensorCache:
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):  # dense row-major storage, whatever strides a loader built (or an older cache holds)
        self.tensors = {name: t.contiguous() for name, t in self.tensors.items()}

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    def fingerprint(self) -> str:
        from ..identity import content_fingerprint

        return content_fingerprint(self.tensors, self.meta, skip_meta=("fingerprint", "prepared_by", "val_split"))

    def save(self, path: str | Path) -> None:
        """Write the cache (deterministic bytes) with its fingerprint, then the sidecar."""
        from ..identity import data_code_version

        path = Path(path)
        self.meta = {**self.meta, "fingerprint": self.fingerprint(), "prepared_by": data_code_version()}
        save_torch({"tensors": self.tensors, "meta": self.meta}, path)
        side = json.dumps({k: self.meta[k] for k in ("fingerprint", "prepared_by", "dataset")
                           if k in self.meta}, sort_keys=True, indent=1)
        atomic_write_bytes(sidecar(path), lambda tmp: tmp.write_text(side + "\n"))

    @classmethod
    def load(cls, path: str | Path) -> "TensorCache":
        """Load and check the content against the fingerprint written at prepare time."""
        path = Path(path)
        try:
            blob = torch.load(path, weights_only=True)
            cache = cls(tensors=blob["tensors"], meta=blob["meta"])
        except FileNotFoundError:
            raise
        except Exception as err:
            raise CacheError(f"{path}: unreadable tensor cache ({type(err).__name__}); prepare the dataset again "
                             f"(`python -m mmlib prepare ...`)") from err
        stored = cache.meta.get("fingerprint")
        if stored is None or stored != cache.fingerprint():
            raise CacheError(f"{path}: content does not match its fingerprint (corrupt or changed after prepare); "
                             f"prepare the dataset again (`python -m mmlib prepare ...`)")
        return cache

    def indices(self, split: str) -> torch.Tensor:
        return torch.nonzero(self.tensors["split"] == SPLIT_CODES[split]).flatten()

    def carve_validation(self, fraction: float, seed: int) -> "TensorCache":
        """Move a stratified, seeded ``fraction`` of train to val, in memory: the split is a function of the
        cache's content, the seed and the fraction (all part of a run's identity); nothing is written.

        A dataset that ships its own validation split (MOSI's ``valid``) keeps it and nothing is carved. Dense
        labels (segmentation maps) have no per-item class to stratify on: a seeded uniform ``fraction`` of train
        moves to val."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {fraction}")
        if bool((self.tensors["split"] == SPLIT_CODES["val"]).any()):
            return TensorCache(tensors=dict(self.tensors),
                               meta={**self.meta, "val_split": "given by the dataset (data.val_fraction unused)"})
        rng = np.random.default_rng(seed)
        train = self.indices("train").numpy()
        if self.tensors["label"].dim() > 1:
            k = int(round(fraction * len(train)))
            chosen = rng.choice(train, size=k, replace=False).tolist()
        else:
            labels = self.tensors["label"].numpy()
            chosen = []
            for c in np.unique(labels[train]):
                members = train[labels[train] == c]
                k = int(round(fraction * len(members)))
                chosen.extend(rng.choice(members, size=k, replace=False).tolist())
        split = self.tensors["split"].clone()
        split[torch.as_tensor(sorted(chosen), dtype=torch.long)] = SPLIT_CODES["val"]
        return TensorCache(tensors={**self.tensors, "split": split},
                           meta={**self.meta, "val_split": f"seed {seed}, fraction {fraction:g} of train"})

    def validation_clips(self) -> list[str]:
        """Names of the clips in the val split (given by the dataset, or after ``carve_validation``)."""
        return [self.meta["clips"][i] for i in self.indices("val").tolist()]
