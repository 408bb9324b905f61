"""ModelNet40 multi-view renders (Su et al. 2015) in the public 12-view layout, as the Greedy paper uses them.

Layout: ``<root>/<class>/<train|test>/<view image>.png``, twelve views of each object rendered around the
vertical axis (30 degrees apart). A view image is named either
- ``<object>_v<view>.png`` with the view 000..011 (0-based; what the embedded stand-in writes), or
- ``<object>.obj.shaded_v<view>.png`` with the view 001..012 (1-based; the ``modelnet40_images_new_12x``
  release, e.g. ``airplane/train/airplane_0001.obj.shaded_v001.png`` is view 0 of object ``airplane_0001``).
  Classes are the folders holding a ``train`` or ``test`` folder (sorted); train and test come from those
  folders.

Views are modalities: view 0 is ``front`` and view 6 ``rear`` (the Greedy paper's m0 and m1), view k otherwise
``view<k>``. ``data.generator.views`` (``ModelNet40Options``, default [0, 6]) names the views the cache holds;
each object must have every one of them (else a named error, or the object is skipped with --skip-bad).
``prepare`` decodes each view once (Pillow), converts it to gray scale, resizes it to ``image_size`` and
writes ``<root>/cache/modelnet40_views<0-6>_img<S>.pt``: per view uint8 (N, 1, 1, S, S) with ``<view>_count``
(one-frame clips, like every image modality), label and split.
"""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import from_dict
from ..registry import register
from .cache import SPLIT_CODES, TensorCache, require_prepared
from .layout import LayoutError, decode_all, report_bad

NUM_VIEWS = 12
SPLITS = ("train", "test")
VIEW_NAMES = {0: "front", 6: "rear"}
# (pattern, number of the first view): the release's 1-based names are tried first (they end like ours)
VIEW_FILE_PATTERNS = ((re.compile(r"^(?P<object>.+)\.obj\.shaded_v(?P<view>\d{3})\.png$"), 1),
                      (re.compile(r"^(?P<object>.+)_v(?P<view>\d{3})\.png$"), 0))


def view_modality(view: int) -> str:
    return VIEW_NAMES.get(view, f"view{view}")


def view_file_name(obj: str, view: int) -> str:
    """The file name the stand-in writes for view 0..11 of ``obj``."""
    return f"{obj}_v{view:03d}.png"


@dataclass
class ModelNet40Options:
    """``data.generator`` of ``modelnet40``: which views go into the cache (also part of the stand-in's)."""

    views: list = field(default_factory=lambda: [0, 6])

    def check(self) -> None:
        bad = [v for v in self.views
               if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < NUM_VIEWS]
        if bad or not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must be distinct view numbers in 0..{NUM_VIEWS - 1}, got {self.views}")

    def options(self) -> "ModelNet40Options":
        """The cache's fields alone (a subclass's other fields describe how its renders were made)."""
        fields = dataclasses.fields(ModelNet40Options)
        return ModelNet40Options(**{f.name: getattr(self, f.name) for f in fields})


@dataclass
class MultiViewObject:
    name: str  # <class>/<split>/<object>
    label: int
    split: str  # train | test
    files: dict[int, Path]  # view -> image


def parse_view_file(name: str) -> tuple[str, int] | None:
    """``(object, view 0..)`` of a view image's file name, or None when it follows neither naming."""
    for pattern, first in VIEW_FILE_PATTERNS:
        match = pattern.match(name)
        if match:
            return match["object"], int(match["view"]) - first
    return None


def scan_split(directory: Path, views: list[int]) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """``{object: {view: file}}`` of one ``<class>/<split>`` folder, and the problems found."""
    objects: dict[str, dict[int, Path]] = defaultdict(dict)
    problems = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() != ".png":
            continue
        parsed = parse_view_file(path.name)
        if parsed is None or not 0 <= parsed[1] < NUM_VIEWS:
            problems.append(f"{path}: not a view image (expected <object>_v000..011.png or "
                            f"<object>.obj.shaded_v001..012.png)")
            continue
        obj, view = parsed
        if view in objects[obj]:
            problems.append(f"{path}: view {view} of object {obj!r} also in {objects[obj][view].name}")
            continue
        objects[obj][view] = path
    complete = {}
    for obj, files in objects.items():
        missing = [v for v in views if v not in files]
        if missing:
            problems.append(f"{directory}: object {obj!r} lacks view(s) {', '.join(map(str, missing))} "
                            f"(e.g. {view_file_name(obj, missing[0])})")
        else:
            complete[obj] = files
    return complete, problems


def scan_layout(root: str | Path, views: list[int],
                skip_bad: bool = False) -> tuple[list[str], list[MultiViewObject]]:
    """(classes, objects that have every requested view). Incomplete objects raise (or are skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and any((d / s).is_dir() for s in SPLITS))
    if not classes:
        raise LayoutError(f"{root}: no class folders (expected <class>/train/*.png and <class>/test/*.png)")
    items, problems = [], []
    for label, cls in enumerate(classes):
        for split in SPLITS:
            directory = root / cls / split
            if not directory.is_dir():
                continue
            objects, bad = scan_split(directory, views)
            problems += bad
            items += [MultiViewObject(f"{cls}/{split}/{obj}", label, split, files)
                      for obj, files in sorted(objects.items())]
    report_bad(problems, skip_bad, "objects")
    for split in SPLITS:
        if not any(item.split == split for item in items):
            raise LayoutError(f"{root}: no {split} objects (expected <class>/{split}/<object>_v000.png ...)")
    return classes, items


def load_view(path: Path, size: int) -> np.ndarray:
    """(size, size) uint8 gray scale. Raises OSError / ValueError for unreadable files."""
    from PIL import Image

    with Image.open(path) as img:
        gray = img.convert("L")
        if gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def build_cache(root: str | Path, image_size: int, options: ModelNet40Options, skip_bad: bool = False,
                dataset: str = "modelnet40") -> Path:
    """Decode the requested views of every object once and write the tensor cache. Returns its path."""
    options.check()
    views = sorted(options.views)
    root = Path(root)
    classes, items = scan_layout(root, views, skip_bad)
    decoded = decode_all(items, lambda item: np.stack([load_view(item.files[v], image_size) for v in views]),
                         skip_bad, root, errors=(OSError, ValueError, SyntaxError),  # PIL: unreadable, cut
                         describe=lambda item, err: f"{item.name}: unreadable view image: {err}",
                         unit="objects")
    kept = [item for item, _ in decoded]
    stack = torch.from_numpy(np.stack([image for _, image in decoded]))  # (N, V, S, S)
    tensors = {}
    for j, view in enumerate(views):
        name = view_modality(view)
        tensors[name] = stack[:, j, None, None].clone()  # (N, 1, 1, S, S)
        tensors[f"{name}_count"] = torch.ones(len(kept), dtype=torch.int16)
    tensors["label"] = torch.tensor([item.label for item in kept], dtype=torch.int64)
    tensors["split"] = torch.tensor([SPLIT_CODES[item.split] for item in kept], dtype=torch.int8)
    cache = TensorCache(tensors=tensors, meta={
        "dataset": dataset, "classes": classes, "clips": [item.name for item in kept],
        "modalities": [view_modality(v) for v in views], "views": views, "image_size": image_size,
        "audio_recipe": None})
    path = cache_file(root, views, image_size)
    cache.save(path)
    return path


def cache_file(root: str | Path, views: list[int], image_size: int) -> Path:
    return Path(root) / "cache" / f"modelnet40_views{'-'.join(map(str, sorted(views)))}_img{image_size}.pt"


@register("datasets", "modelnet40")
class ModelNet40:
    """ModelNet40's 12-view renders, prepared from their public layout under ``data.root``; ``data.generator``
    names the views to cache (``ModelNet40Options``)."""

    name = "modelnet40"
    modalities = {view_modality(v): 1 for v in range(NUM_VIEWS)}  # input channels per modality (gray views)
    embedded = False

    def options(self, generator: dict | None) -> ModelNet40Options:
        cfg = from_dict(ModelNet40Options, generator or {}, f"data.generator ({self.name})")
        cfg.check()
        return cfg

    def prepare(self, root: str | Path, recipe: str | None = None, image_size: int = 224,
                skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        return build_cache(root, image_size, self.options(generator), skip_bad, dataset=self.name)

    def cache_path(self, root: str | Path, recipe: str | None = None, image_size: int = 224,
                   generator: dict | None = None, **_) -> Path:
        return cache_file(root, self.options(generator).views, image_size)

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int = 224,
                        skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        path = self.cache_path(root, image_size=image_size, generator=generator)
        return require_prepared(path, self.name, root)
