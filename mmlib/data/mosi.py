"""CMU-MOSI (binary sentiment; audio, vision, text) in the feature-pickle layout of the MMSA toolkit.

Layout: ``<root>/Processed/unaligned_50.pkl`` (MMSA's default feature file for MOSI), else
``<root>/Processed/aligned_50.pkl``; the same names directly under ``<root>`` are accepted too, and so is a
``.npz`` export beside them (``<stem>.npz`` with arrays named ``<split>/<key>``, read with
``allow_pickle=False``). The first file found in that order is read and named in the cache's meta.

The pickle is a dict ``{"train", "valid", "test"}``; each split a dict of (what MMSA-FET documents; the keys read
here are starred):
- ``vision``* (N, T_v, 20) Facet features, ``audio``* (N, T_a, 5) COVAREP features (MOSEI: 35 / 74);
- ``text``* (N, T_t, 768) BERT features (older files: 300-d GloVe), and/or ``text_bert`` (N, 3, T_t): BERT token
  ids, attention mask, segment ids;
- ``regression_labels``* (N,) sentiment scores in [-3, 3]; ``id``* (N,) ``<video>$_$<clip>``;
- ``audio_lengths`` / ``vision_lengths`` (N,) in the unaligned files, ``raw_text``, ``annotations``,
  ``classification_labels`` (not used).

Aligned files hold T = 50 steps for every modality (word-aligned); unaligned ones keep each modality's own rate
(MOSI: T_a = 375, T_v = 500, T_t = 50). Both are read the same way.

Reading, as MMSA's loader does: the audio's -inf values become 0. Padding is made explicit: steps at or beyond
``audio_lengths`` / ``vision_lengths`` and text steps whose ``text_bert`` mask is 0 are set to 0, so an all-zero
step is padding for the sequence encoders (mmlib.models.sequence). When ``text`` features are present they are the
text modality; a file with ``text_bert`` only gives token ids (N, T_t) int64 (0 = padding) for the ``text_bert``
encoder.

Binary label: positive for a score > 0, negative for a score < 0. A score of exactly 0 (neutral): ``mosi`` drops
the clip ("positive/negative results only", DGL §4.1; MMSA's Non0 acc-2), ``mosi_has0`` counts it as positive
(MMSA's Has0 acc-2, negative vs non-negative). The given ``valid`` split is kept as the val split (nothing is
carved from train).

SECURITY: a pickle can run code while it loads, so the file is never read with ``pickle.load``: a restricted
unpickler resolves only the globals that rebuild numpy arrays and dtypes (``_reconstruct``, ``_frombuffer``,
``scalar``, ``ndarray``, ``dtype``, ``_codecs.encode`` for latin-1 bytes) and builtin containers; any other
global (``os.system``, ``builtins.eval``, a class of another module ...) stops the load with an error naming the
file and the global, before anything is called.
"""
from __future__ import annotations

import builtins
import codecs
import importlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..registry import register
from .cache import SPLIT_CODES, TensorCache, require_prepared
from .layout import LayoutError, report_bad

FEATURE_FILES = ("unaligned_50", "aligned_50")  # in order of preference
FEATURE_DIRS = ("Processed", ".")
SPLITS = {"train": "train", "valid": "val", "test": "test"}  # pickle key -> mmlib split
MODALITIES = ("audio", "vision", "text")
LABELS = ("negative", "positive")
FP16_MAX = float(np.finfo(np.float16).max)
BERT_VOCAB = 30522

_NUMPY_GLOBALS = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}
_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "bytearray", "bytes", "complex", "int", "float", "str",
             "bool", "slice"}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and builtin containers only (see the module docstring)."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                      "numpy._core.numeric") and (module.rsplit(".", 1)[1], name) in _NUMPY_GLOBALS:
            core = "numpy._core" if hasattr(np, "_core") else "numpy.core"
            return getattr(importlib.import_module(f"{core}.{module.rsplit('.', 1)[1]}"), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays, dtypes and "
                                     f"builtin containers are)")


def safe_load_pickle(path: Path) -> object:
    """The object in ``path``, rebuilt by ``NumpyUnpickler``; LayoutError naming the file otherwise."""
    try:
        with path.open("rb") as fh:
            return NumpyUnpickler(io.BufferedReader(fh)).load()
    except pickle.UnpicklingError as err:
        raise LayoutError(f"{path}: refused to unpickle: {err}") from err
    except Exception as err:  # truncated or not a pickle
        raise LayoutError(f"{path}: not a readable feature pickle ({type(err).__name__}: {err})") from err


def load_npz(path: Path) -> dict:
    """A ``.npz`` export: arrays named ``<split>/<key>`` -> ``{split: {key: array}}`` (no pickled objects)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            out: dict[str, dict] = {}
            for name in archive.files:
                split, _, key = name.partition("/")
                if not key:
                    raise LayoutError(f"{path}: array {name!r} is not named <split>/<key>")
                out.setdefault(split, {})[key] = archive[name]
            return out
    except LayoutError:
        raise
    except Exception as err:
        raise LayoutError(f"{path}: not a readable .npz export ({type(err).__name__}: {err})") from err


def find_feature_file(root: Path) -> Path:
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    tried = []
    for stem in FEATURE_FILES:
        for sub in FEATURE_DIRS:
            for ext in (".pkl", ".npz"):
                path = (root / sub / f"{stem}{ext}") if sub != "." else root / f"{stem}{ext}"
                tried.append(str(path.relative_to(root)))
                if path.is_file():
                    return path
    raise LayoutError(f"{root}: no MMSA feature file (looked for {', '.join(tried)})")


def read_features(path: Path) -> dict:
    data = load_npz(path) if path.suffix == ".npz" else safe_load_pickle(path)
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: expected a dict with keys {', '.join(SPLITS)}, got {type(data).__name__}")
    missing = [s for s in SPLITS if s not in data]
    if missing:
        raise LayoutError(f"{path}: missing split(s) {', '.join(missing)} (has {', '.join(map(str, data))})")
    return data


def _array(split: dict, key: str, where: str, ndim: int) -> np.ndarray:
    if key not in split:
        raise LayoutError(f"{where}: missing key {key!r} (has {', '.join(map(str, split))})")
    value = np.asarray(split[key])
    if value.ndim != ndim or (ndim > 1 and not np.issubdtype(value.dtype, np.number)):
        raise LayoutError(f"{where}[{key!r}]: expected a numeric array of {ndim} dimensions, got shape "
                          f"{value.shape} dtype {value.dtype}")
    return value


def _zero_beyond(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    steps = np.arange(x.shape[1])[None, :]
    return np.where((steps < lengths.reshape(-1, 1))[..., None], x, 0.0)


def read_split(path: Path, key: str, split: dict) -> dict[str, np.ndarray | list]:
    """One split's arrays, padding made explicit, audio -inf set to 0; non-finite values elsewhere are
    problems (per clip)."""
    where = f"{path}[{key!r}]"
    if not isinstance(split, dict):
        raise LayoutError(f"{where}: expected a dict of arrays, got {type(split).__name__}")
    audio = _array(split, "audio", where, 3).astype(np.float32)
    vision = _array(split, "vision", where, 3).astype(np.float32)
    n = len(audio)
    audio[np.isneginf(audio)] = 0.0  # as MMSA's loader
    for name, x in (("audio", audio), ("vision", vision)):
        if f"{name}_lengths" in split:
            lengths = np.asarray(split[f"{name}_lengths"]).reshape(-1)
            if len(lengths) != len(x):
                raise LayoutError(f"{where}[{name + '_lengths'!r}]: {len(lengths)} lengths for {len(x)} clips")
            x[...] = _zero_beyond(x, lengths)
    mask = None
    if "text_bert" in split:
        ids_mask = _array(split, "text_bert", where, 3)
        if ids_mask.shape[1] != 3:
            raise LayoutError(f"{where}['text_bert']: expected (N, 3, T) ids / mask / segments, got "
                              f"{ids_mask.shape}")
        mask = ids_mask[:, 1] > 0
    if "text" in split:
        text = _array(split, "text", where, 3).astype(np.float32)
        if mask is not None:
            if mask.shape != text.shape[:2]:
                raise LayoutError(f"{where}: text_bert mask {mask.shape} does not match text {text.shape[:2]}")
            text = np.where(mask[..., None], text, 0.0).astype(np.float32)
        kind = "features"
    elif mask is not None:
        text = np.where(mask, np.rint(ids_mask[:, 0]), 0).astype(np.int64)
        kind = "bert_ids"
    else:
        raise LayoutError(f"{where}: missing key 'text' (features) or 'text_bert' (token ids)")
    for name in ("regression_labels", "id"):
        if name not in split:
            raise LayoutError(f"{where}: missing key {name!r} (has {', '.join(map(str, split))})")
    scores = np.asarray(split["regression_labels"]).reshape(-1)
    if not np.issubdtype(scores.dtype, np.number):
        raise LayoutError(f"{where}['regression_labels']: expected numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    ids = [str(i) for i in np.asarray(split["id"]).reshape(-1)]
    sizes = {"audio": n, "vision": len(vision), "text": len(text), "regression_labels": len(scores),
             "id": len(ids)}
    if len(set(sizes.values())) != 1:
        raise LayoutError(f"{where}: the arrays disagree on the number of clips ({sizes})")
    return {"audio": audio, "vision": vision, "text": text, "score": scores, "id": ids, "text_kind": kind}


def _clip_problems(path: Path, key: str, arrays: dict) -> list[tuple[int, str]]:
    problems = []
    for m in MODALITIES:
        x = arrays[m]
        if not np.issubdtype(x.dtype, np.floating):
            continue
        bad = ~np.isfinite(x).all(axis=(1, 2))
        big = np.abs(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)).max(axis=(1, 2)) > FP16_MAX
        for i in np.flatnonzero(bad | big):
            what = "non-finite values" if bad[i] else f"values beyond the float16 range (±{FP16_MAX:g})"
            problems.append((int(i), f"{path}[{key!r}]: clip {arrays['id'][i]!r} has {what} in {m!r}"))
    bad_score = ~np.isfinite(arrays["score"])
    problems += [(int(i), f"{path}[{key!r}]: clip {arrays['id'][i]!r} has a non-finite regression label")
                 for i in np.flatnonzero(bad_score)]
    return problems


def _pad_time(arrays: list[np.ndarray]) -> np.ndarray:
    """Splits may hold different T (MMSA pads each split to its own length): zero-pad to the longest."""
    t = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays])


def build_cache(root: str | Path, zero_score: str, dataset: str, skip_bad: bool = False) -> Path:
    """Read the feature file and write the tensor cache ``<root>/cache/<stem>_<rule>.pt``."""
    if zero_score not in ("drop", "positive"):
        raise ValueError(f"zero_score must be drop or positive, got {zero_score!r}")
    root = Path(root)
    path = find_feature_file(root)
    data = read_features(path)
    parts, problems, dropped = [], [], {}
    for key, split in SPLITS.items():
        arrays = read_split(path, key, data[key])
        bad = _clip_problems(path, key, arrays)
        problems += [msg for _, msg in bad]
        keep = np.ones(len(arrays["id"]), dtype=bool)
        keep[[i for i, _ in bad]] = False
        zero = arrays["score"] == 0
        if zero_score == "drop":
            dropped[split] = int((zero & keep).sum())
            keep &= ~zero
        parts.append((split, arrays, keep))
    report_bad(problems, skip_bad)
    kinds = {a["text_kind"] for _, a, _ in parts}
    if len(kinds) != 1:
        raise LayoutError(f"{path}: the splits hold different text kinds ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    tensors: dict[str, torch.Tensor] = {}
    for m in MODALITIES:
        stacked = _pad_time([a[m][keep] for _, a, keep in parts])
        tensors[m] = torch.from_numpy(stacked.astype(np.int64 if m == "text" and kind == "bert_ids"
                                                     else np.float16))
    scores = np.concatenate([a["score"][keep] for _, a, keep in parts])
    clips = [i for _, a, keep in parts for i, k in zip(a["id"], keep) if k]
    if len(set(clips)) != len(clips):
        dup = next(c for c in clips if clips.count(c) > 1)
        raise LayoutError(f"{path}: clip id {dup!r} appears twice")
    splits = [SPLIT_CODES[split] for split, a, keep in parts for k in keep if k]
    if not clips or SPLIT_CODES["train"] not in splits:
        raise LayoutError(f"{path}: no usable train clips")
    tensors.update(label=torch.from_numpy((scores > 0 if zero_score == "drop" else scores >= 0).astype(np.int64)),
                   score=torch.from_numpy(scores.astype(np.float32)),
                   split=torch.tensor(splits, dtype=torch.int8))
    meta = {"dataset": dataset, "classes": list(LABELS), "clips": clips, "modalities": list(MODALITIES),
            "feature_file": str(path.relative_to(root)), "text_kind": kind, "audio_recipe": None,
            "feature_dims": {m: int(tensors[m].shape[-1]) for m in MODALITIES if tensors[m].dim() == 3},
            "zero_score": zero_score, "zero_scores_dropped": dropped}
    if kind == "bert_ids":
        meta.update(tokenizer="bert-base-uncased ids from the feature file", vocab_size=BERT_VOCAB)
    cache = TensorCache(tensors=tensors, meta=meta)
    out = cache_file(root, path, zero_score)
    cache.save(out)
    return out


def cache_file(root: Path, feature_file: Path, zero_score: str) -> Path:
    return Path(root) / "cache" / f"{feature_file.stem}_{'non0' if zero_score == 'drop' else 'has0'}.pt"


@register("datasets", "mosi")
class MOSI:
    """The real CMU-MOSI from MMSA's feature file under ``data.root``; neutral (score 0) clips dropped."""

    name = "mosi"
    zero_score = "drop"
    labels = LABELS
    modalities = {"audio": 5, "vision": 20, "text": 768}  # MMSA's MOSI feature dims (the encoders' in_channels)
    embedded = False

    def prepare(self, root: str | Path, recipe: str | None = None, image_size: int | None = None,
                skip_bad: bool = False, **_) -> Path:
        return build_cache(root, self.zero_score, self.name, skip_bad)

    def cache_path(self, root: str | Path, *_, **__) -> Path:
        return cache_file(Path(root), find_feature_file(Path(root)), self.zero_score)

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int | None = None,
                        skip_bad: bool = False, **_) -> Path:
        return require_prepared(self.cache_path(root), self.name, root)


@register("datasets", "mosi_has0")
class MOSIHas0(MOSI):
    """CMU-MOSI with neutral (score 0) clips counted as positive (negative vs non-negative)."""

    name = "mosi_has0"
    zero_score = "positive"
