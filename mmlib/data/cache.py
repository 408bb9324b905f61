"""The tensor cache: every clip decoded once into tensors (uint8 frames, fp16 spectrograms, labels, splits)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


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

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), lambda tmp: torch.save({"tensors": self.tensors, "meta": self.meta}, tmp))

    @classmethod
    def load(cls, path: str | Path) -> "TensorCache":
        blob = torch.load(path, weights_only=True)
        return cls(tensors=blob["tensors"], meta=blob["meta"])

    def indices(self, split: str) -> torch.Tensor:
        return torch.nonzero(self.tensors["split"] == SPLIT_CODES[split]).flatten()

    def carve_validation(self, root: str | Path, fraction: float, seed: int) -> "TensorCache":
        """Move a stratified, seeded ``fraction`` of train to val; the clip list is saved beside the data
        (``val_seed<S>_frac<F>.csv``) and reused when it exists."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {fraction}")
        path = Path(root) / f"val_seed{seed}_frac{fraction:.2f}.csv"
        clips = self.meta["clips"]
        if path.is_file():
            with path.open(newline="") as fh:
                val_names = {row[0] for row in csv.reader(fh) if row}
        else:
            rng = np.random.default_rng(seed)
            labels = self.tensors["label"].numpy()
            train = self.indices("train").numpy()
            chosen = []
            for c in np.unique(labels[train]):
                members = train[labels[train] == c]
                k = int(round(fraction * len(members)))
                chosen.extend(rng.choice(members, size=k, replace=False).tolist())
            val_names = {clips[i] for i in chosen}
            rows = "".join(f"{clips[i]},{self.meta['classes'][labels[i]]}\n" for i in sorted(chosen))
            atomic_write_bytes(path, lambda tmp: tmp.write_text(rows))
        split = self.tensors["split"].clone()
        for i, name in enumerate(clips):
            if name in val_names:
                if split[i] != SPLIT_CODES["train"]:
                    raise ValueError(f"{path}: clip {name!r} is not in the train split")
                split[i] = SPLIT_CODES["val"]
        return TensorCache(tensors={**self.tensors, "split": split}, meta={**self.meta, "val_file": path.name})
