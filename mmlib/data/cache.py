"""The tensor cache: every clip decoded once into tensors (uint8 frames, fp16 spectrograms, labels, splits).

``<cache>.pt`` holds the tensors and the meta, with ``meta["fingerprint"]``, a hash of the content written at
prepare time (the same media give the same bytes and the same fingerprint) and checked on every load; media that
hold NaN or inf are refused at prepare time, naming the clip. ``<cache>.json`` beside it holds the fingerprint and
the version of the preparation code, so a run's identity is known without loading the tensors, and a cache
prepared by other code is noticed.

Files are written atomically (``atomic_write_bytes``: a temporary ``.<name>.<pid>.tmp`` renamed into place; the
temporaries of killed writers are removed by the next process that writes into the same directory). Checkpoints
carry a checksum of their content (``save_checked``) that ``load_checked`` verifies: a corrupt file is named, never
loaded. A failed write raises OSError naming the file (a full disk included, which torch reports as a RuntimeError
of its own).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


class CacheError(ValueError):
    """A tensor cache or checkpoint that is missing, corrupt or prepared by other code; the message names the file
    and the command that rebuilds it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


_swept: set[str] = set()  # directories whose temporaries this process has checked


def remove_stale_temporaries(directory: Path) -> None:
    """Remove the ``.<name>.<pid>.tmp`` files of ``directory`` whose writer (``pid``) is no longer alive; each
    directory once per process (a directory of many files is written file by file)."""
    key = str(directory)
    if key in _swept:
        return
    _swept.add(key)
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[: -len(".tmp")].rpartition(".")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                (directory / name).unlink()
            except OSError:
                pass


def _named_os_error(err: BaseException, path: Path) -> OSError | None:
    """The OSError behind a failed write (torch wraps it in a RuntimeError), re-raised with ``path`` as its file."""
    cause = err if isinstance(err, OSError) else err.__context__ if isinstance(err.__context__, OSError) else None
    if cause is None or cause.errno is None:
        return None
    return OSError(cause.errno, os.strerror(cause.errno), str(path))


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same directory and rename: readers never see a partial file.
    Temporaries of killed writers in the same directory are removed first; a write that fails for want of space or
    permission raises OSError naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        named = _named_os_error(err, path)
        if named is None:
            raise
        raise named from err
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


def content_digest(obj) -> str:
    """sha256 of a nested structure of dicts, lists, tuples, tensors and scalars, in order: its type tags, tensor
    dtypes, shapes and bytes, and scalar values: a structure and what ``torch.load`` returns of it digest equally."""
    from ..identity import tensor_bytes

    digest = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            digest.update(f"T{x.dtype}{tuple(x.shape)}|".encode())
            digest.update(tensor_bytes(x))
        elif isinstance(x, dict):
            digest.update(f"D{len(x)}|".encode())
            for k, v in x.items():
                feed(k)
                feed(v)
        elif isinstance(x, (list, tuple)):
            digest.update(f"{'l' if isinstance(x, list) else 't'}{len(x)}|".encode())
            for v in x:
                feed(v)
        else:
            digest.update(f"{type(x).__name__}:{x!r}|".encode())

    feed(obj)
    return digest.hexdigest()


def save_checked(blob: dict, path: Path) -> None:
    """``save_torch`` of ``blob`` with ``"checksum"``: the ``content_digest`` of the rest, checked by
    ``load_checked``."""
    save_torch({**blob, "checksum": content_digest(blob)}, path)


def load_checked(path: Path, rebuild: str, map_location=None) -> dict:
    """A blob written by ``save_checked``, or CacheError naming ``path`` (unreadable, truncated, or content that
    does not match its checksum) and what to do (``rebuild``)."""
    try:
        blob = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as err:  # torch / zip / unpickling errors of every kind on damaged files
        size = path.stat().st_size if path.is_file() else 0
        what = "empty file" if size == 0 else f"unreadable: {type(err).__name__}"
        raise CacheError(f"{path}: corrupt or truncated ({what}); {rebuild}") from err
    if not isinstance(blob, dict) or "checksum" not in blob:
        raise CacheError(f"{path}: carries no checksum (not written by this code, or damaged); {rebuild}")
    stored = blob.pop("checksum")
    if stored != content_digest(blob):
        raise CacheError(f"{path}: content does not match its checksum (corrupt); {rebuild}")
    return blob


def sidecar(path: str | Path) -> Path:
    """``<cache>.json``: the fingerprint and the preparation code's version of the cache at ``path``."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | Path) -> dict:
    """The sidecar's content; ``{}`` when it is missing, ``{"unreadable": reason}`` when it cannot be read."""
    side = sidecar(path)
    if not side.is_file():
        return {}
    try:
        content = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        return {"unreadable": type(err).__name__}
    return content if isinstance(content, dict) else {"unreadable": f"a JSON {type(content).__name__}"}


def is_prepared(path: str | Path) -> bool:
    """The cache exists and was prepared by the current preparation code."""
    from ..identity import data_code_version

    return Path(path).is_file() and read_sidecar(path).get("prepared_by") == data_code_version()


def prepare_command(dataset: str, root: str | Path, recipe: str | None = None,
                    image_size: int | None = None) -> str:
    """The command line that prepares a real dataset's cache."""
    options = (f" --recipe {recipe}" if recipe else "") + (f" --image-size {image_size}" if image_size else "")
    return f"python -m mmlib prepare --dataset {dataset} --root {root}{options}"


def require_prepared(path: Path, dataset: str, root: str | Path, recipe: str | None = None,
                     image_size: int | None = None) -> Path:
    """``path`` if it holds a cache prepared by the current code; else an error naming the prepare command."""
    if not is_prepared(path):
        side = read_sidecar(path)
        if not path.is_file():
            state, where = "does not exist", path
        elif not side or "unreadable" in side:
            state = "sidecar is missing" if not side else f"sidecar is unreadable ({side['unreadable']})"
            where = sidecar(path)
        else:
            state, where = "was prepared by other mmlib code", path
        raise FileNotFoundError(f"{where}: the tensor cache {state}; run "
                                f"`{prepare_command(dataset, root, recipe, image_size)}`")
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
    ``cfg.fingerprint()``; a stamp of other parameters raises rather than mixing two datasets. Generation holds
    the data root's lock (mmlib.locks): a second process waits, then finds the stamp (its own parameters: the data
    is used; others: the error above)."""
    from .. import locks

    stamp = root / stamp_name
    if stamp.is_file() and stamp.read_text().strip() == cfg.fingerprint():
        return
    with locks.data_root(root):
        if stamp.is_file():
            found = stamp.read_text().strip()
            if found == cfg.fingerprint():
                return
            raise FileExistsError(f"{root}: holds {dataset} generated with other parameters ({found} != "
                                  f"{cfg.fingerprint()}); remove it or pick another data.root")
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

    def check_finite(self, path: Path) -> None:
        """Every floating-point tensor holds finite values only; else CacheError naming the clips that do not."""
        for name, t in self.tensors.items():
            if t.is_floating_point():
                bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1) if t.dim() else ~torch.isfinite(t)
                if bad.any():
                    rows = torch.nonzero(bad.reshape(-1)).flatten().tolist()
                    clips = [self.meta["clips"][i] for i in rows] if "clips" in self.meta else rows
                    raise CacheError(f"{path}: {name} of clip(s) {', '.join(map(str, clips[:5]))}"
                                     f"{f' and {len(clips) - 5} more' if len(clips) > 5 else ''} hold NaN or inf; "
                                     f"fix or remove those clips (or pass --skip-bad to skip bad clips)")

    def save(self, path: str | Path) -> None:
        """Write the cache (deterministic bytes) with its fingerprint, then the sidecar. Non-finite media are
        refused (``check_finite``)."""
        from ..identity import data_code_version

        path = Path(path)
        self.check_finite(path)
        self.meta = {**self.meta, "fingerprint": self.fingerprint(), "prepared_by": data_code_version()}
        save_torch({"tensors": self.tensors, "meta": self.meta}, path)
        side = json.dumps({k: self.meta[k] for k in ("fingerprint", "prepared_by", "dataset")
                           if k in self.meta}, sort_keys=True, indent=1)
        atomic_write_bytes(sidecar(path), lambda tmp: tmp.write_text(side + "\n"))

    @classmethod
    def load(cls, path: str | Path, rebuild: str = "prepare the dataset again (`python -m mmlib prepare ...`)"
             ) -> "TensorCache":
        """Load and check the content against the fingerprint written at prepare time; CacheError names the file
        and what to do (``rebuild``)."""
        path = Path(path)
        try:
            blob = torch.load(path, weights_only=True)
            cache = cls(tensors=blob["tensors"], meta=blob["meta"])
        except FileNotFoundError:
            raise
        except Exception as err:
            what = "an empty file" if path.is_file() and path.stat().st_size == 0 else type(err).__name__
            raise CacheError(f"{path}: unreadable tensor cache ({what}); {rebuild}") from err
        stored = cache.meta.get("fingerprint")
        if stored is None or stored != cache.fingerprint():
            raise CacheError(f"{path}: content does not match its fingerprint (corrupt or changed after prepare); "
                             f"{rebuild}")
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
