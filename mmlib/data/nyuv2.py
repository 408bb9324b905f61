"""NYUv2 RGB-D semantic segmentation (40 classes) in its public layout:

- ``<root>/nyu_depth_v2_labeled.mat``: the labelled set, a MATLAB v7.3 file (HDF5, read with h5py). Keys read:
  ``images`` (1449, 3, 640, 480) uint8, ``depths`` (1449, 640, 480) float metres (in-painted), ``labels``
  (1449, 640, 480) uint16 ids of the 894 raw classes, 0 = unlabelled. HDF5 stores MATLAB's column-major arrays
  with the axes reversed, so every image is transposed back to (H, W) = (480, 640). Instead of ``labels``, an
  already mapped ``labels40`` array (same shape, 0..40, 0 = void) is accepted; it is used when present;
- ``<root>/splits.mat``: ``trainNdxs`` (795 x 1) and ``testNdxs`` (654 x 1), 1-based image numbers (the standard
  split of Silberman et al.);
- ``<root>/classMapping40.mat``: ``mapClass`` (1 x 894), the 40-class id (1..40) of each raw class id (Gupta et
  al.'s mapping, as ESANet's preparation reads it), and ``className`` (1 x 40) names when present. Needed only
  without ``labels40``.
``splits.mat`` and ``classMapping40.mat`` are read with scipy.io.loadmat, or h5py when they are v7.3 files.

``prepare`` writes ``<root>/cache/nyuv2_<H>x<W>.pt``: ``rgb`` (N, 1, 3, H, W) uint8 and ``depth`` (N, 1, 1, H, W)
uint8 (frame-shaped, one frame per image, as mmlib.data.loader serves frames), ``label`` (N, H, W) int8 with the
40 classes as 0..39 and void as -100 (mmlib.metrics.IGNORE_INDEX: F.cross_entropy's default ignore_index), and
``split``. H = ``image_size`` (a multiple of 32, the segmentation encoder's stride) and W the multiple of 32
nearest to H x 4/3 (480 x 640 at full size); RGB is resized with antialiased bilinear filtering, depth and labels
with nearest neighbours (as ESANet does). Depth is stored as round(255 d / 10 m), d clipped to [0, 10] m (the
Kinect's range; 3.9 cm steps), and normalised by its train-split mean and std (meta ``normalize``); RGB by the
ImageNet statistics. The meta says ``task: segmentation``; the validation split is carved from train when a run
loads the cache (ESANet and the DGL paper use train and test only).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import IGNORE_INDEX
from ..registry import register
from .cache import SPLIT_CODES, TensorCache, require_prepared
from .layout import LayoutError, report_bad

LABELED_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
MAPPING_FILE = "classMapping40.mat"
MAX_DEPTH_M = 10.0
STRIDE = 32  # input sizes must be multiples of the encoder's output stride
# the 40 classes of Gupta et al. (NYU40), label i + 1 in the mapped maps
NYU40 = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
         "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
         "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
         "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
         "otherfurniture", "otherprop")


def read_mat(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays ``keys`` (and ``optional`` ones when present) of a MATLAB file, v5 (scipy) or v7.3 (h5py)."""
    if not path.is_file():
        raise LayoutError(f"{path}: file not found")
    import h5py
    import scipy.io

    try:
        if h5py.is_hdf5(path):  # a v7.3 file (HDF5, with or without MATLAB's 512-byte header)
            with h5py.File(path, "r") as f:
                found = {k: _h5_value(f, k) for k in (*keys, *optional) if k in f}
        else:
            data = scipy.io.loadmat(path)
            found = {k: data[k] for k in (*keys, *optional) if k in data}
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise LayoutError(f"{path}: not a readable MATLAB file ({err})") from err
    missing = [k for k in keys if k not in found]
    if missing:
        raise LayoutError(f"{path}: missing key(s) {', '.join(missing)}")
    return found


def _h5_value(f, key: str) -> np.ndarray:
    obj = f[key]
    if obj.dtype == object:  # a cell array of strings: references to char arrays (uint16 codes)
        return np.array([["".join(map(chr, f[ref][()].reshape(-1))) for ref in obj[()].reshape(-1)]], dtype=object)
    return obj[()]


def _names(cell) -> list[str]:
    out = []
    for item in np.asarray(cell, dtype=object).reshape(-1):
        while isinstance(item, np.ndarray):
            item = item.reshape(-1)[0] if item.size else ""
        out.append(str(item).strip())
    return out


def read_splits(path: Path, count: int) -> dict[int, str]:
    """0-based image index -> train | test, from the 1-based ``trainNdxs`` / ``testNdxs``."""
    data = read_mat(path, ("trainNdxs", "testNdxs"))
    out: dict[int, str] = {}
    for key, split in (("trainNdxs", "train"), ("testNdxs", "test")):
        values = np.asarray(data[key]).reshape(-1)
        if values.size == 0 or not np.issubdtype(values.dtype, np.number) or (values != np.round(values)).any():
            raise LayoutError(f"{path}: {key} must hold integer image numbers, got {values[:5]} ...")
        for v in values.astype(np.int64).tolist():
            if not 1 <= v <= count:
                raise LayoutError(f"{path}: {key} holds {v}, outside 1..{count} (the numbers are 1-based)")
            if v - 1 in out:
                raise LayoutError(f"{path}: image {v} is listed twice ({out[v - 1]}Ndxs and {key})")
            out[v - 1] = split
    return out


def read_mapping(path: Path) -> tuple[np.ndarray, list[str]]:
    """A lookup table raw id -> 40-class id (0 = void; raw 0 stays void) and the 40 class names. A raw id beyond
    the table is reported per image by ``build_cache``."""
    data = read_mat(path, ("mapClass",), ("className",))
    mapping = np.asarray(data["mapClass"]).reshape(-1)
    if mapping.size == 0 or not np.issubdtype(mapping.dtype, np.number):
        raise LayoutError(f"{path}: mapClass must list the 40-class id of every raw class id 1..894, got "
                          f"{mapping.size} entries of {mapping.dtype}")
    if mapping.min() < 0 or mapping.max() > len(NYU40):
        raise LayoutError(f"{path}: mapClass values must be in 0..{len(NYU40)}, got {mapping.min()}..{mapping.max()}")
    names = _names(data["className"]) if "className" in data else list(NYU40)
    if len(names) != len(NYU40):
        raise LayoutError(f"{path}: className lists {len(names)} names, expected {len(NYU40)}")
    return np.concatenate([[0], mapping]).astype(np.int64), names


def output_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(image_size, the multiple of 32 nearest to image_size x width / height)."""
    if image_size < STRIDE or image_size % STRIDE:
        raise ValueError(f"data.image_size for NYUv2 is the stored height and must be a multiple of {STRIDE}, "
                         f"got {image_size}")
    return image_size, max(STRIDE, STRIDE * round(image_size * width / height / STRIDE))


def resize(rgb: np.ndarray, depth: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    """rgb (3, H, W) uint8 antialiased bilinear; depth and label nearest."""
    x = torch.from_numpy(rgb).float()[None]
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    near = torch.from_numpy(np.stack([depth.astype(np.float32), label.astype(np.float32)]))[None]
    near = F.interpolate(near, size=size, mode="nearest")[0]
    return x.round().clamp(0, 255).to(torch.uint8).numpy(), near[0].numpy(), near[1].numpy().astype(np.int64)


def build_cache(root: str | Path, image_size: int, skip_bad: bool = False, dataset: str = "nyuv2") -> Path:
    """Read the labelled .mat image by image and write the tensor cache. Returns its path."""
    import h5py

    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset directory not found")
    mat = root / LABELED_FILE
    if not mat.is_file():
        raise LayoutError(f"{mat}: file not found (the labelled NYUv2 set, MATLAB v7.3)")
    try:
        f = h5py.File(mat, "r")
    except OSError as err:
        raise LayoutError(f"{mat}: not an HDF5 (MATLAB v7.3) file ({err})") from err
    with f:
        label_key = "labels40" if "labels40" in f else "labels"
        missing = [k for k in ("images", "depths", label_key) if k not in f]
        if missing:
            raise LayoutError(f"{mat}: missing dataset(s) {', '.join(missing)} (has {', '.join(f)})")
        images, depths, labels = f["images"], f["depths"], f[label_key]
        if images.ndim != 4 or images.shape[1] != 3:
            raise LayoutError(f"{mat}: images must be (N, 3, W, H) as HDF5 stores MATLAB's H x W x 3 x N, "
                              f"got {images.shape}")
        n, _, width, height = images.shape
        for name, ds in (("depths", depths), (label_key, labels)):
            if ds.shape != (n, width, height):
                raise LayoutError(f"{mat}: {name} must be {(n, width, height)} like images, got {ds.shape}")
        splits = read_splits(root / SPLITS_FILE, n)
        if label_key == "labels40":
            lut, classes, source = np.arange(len(NYU40) + 1), list(NYU40), "labels40"
        else:
            lut, classes = read_mapping(root / MAPPING_FILE)
            source = f"labels mapped by {MAPPING_FILE}:mapClass"
        size = output_size(height, width, image_size)
        kept, rgbs, deps, labs, problems = [], [], [], [], []
        from ..progress import progress_bar

        with progress_bar(len(splits), f"prepare {root}", unit="image") as bar:
            for i in sorted(splits):
                rgb = np.asarray(images[i]).transpose(0, 2, 1)  # (3, W, H) -> (3, H, W)
                depth = np.asarray(depths[i], dtype=np.float64).T
                raw = np.asarray(labels[i]).T.astype(np.int64)
                bar.update(1)
                if not np.isfinite(depth).all():
                    problems.append(f"{mat}: depths of image {i + 1} hold non-finite values")
                    continue
                if raw.min() < 0 or raw.max() >= len(lut):
                    problems.append(f"{mat}: {label_key} of image {i + 1} holds id {raw.max()}, outside the "
                                    f"mapping's 0..{len(lut) - 1} ({source})")
                    continue
                rgb, depth, label40 = resize(rgb, depth, lut[raw], size)
                kept.append(i)
                rgbs.append(rgb)
                deps.append(np.rint(np.clip(depth / MAX_DEPTH_M, 0, 1) * 255).astype(np.uint8))
                labs.append(label40)
    report_bad(problems, skip_bad, unit="images")
    if not kept:
        raise LayoutError(f"{root}: no usable images")
    label = np.stack(labs) - 1  # 1..40 -> 0..39; void (0) -> -1
    label[label < 0] = IGNORE_INDEX
    split = np.array([SPLIT_CODES[splits[i]] for i in kept], dtype=np.int8)
    depth = torch.from_numpy(np.stack(deps))[:, None, None]  # (N, 1, 1, H, W)
    train_depth = depth[torch.from_numpy(split == SPLIT_CODES["train"])].float().div_(255.0)
    if train_depth.numel() == 0:
        raise LayoutError(f"{root / SPLITS_FILE}: no usable train images")
    cache = TensorCache(
        tensors={
            "rgb": torch.from_numpy(np.stack(rgbs))[:, None],  # (N, 1, 3, H, W) uint8
            "rgb_count": torch.ones(len(kept), dtype=torch.int16),
            "depth": depth,
            "depth_count": torch.ones(len(kept), dtype=torch.int16),
            "label": torch.from_numpy(label.astype(np.int8 if len(classes) < 128 else np.int16)),
            "split": torch.from_numpy(split),
        },
        meta={"dataset": dataset, "task": "segmentation", "classes": classes, "ignore_index": IGNORE_INDEX,
              "clips": [f"nyuv2_{i + 1:04d}" for i in kept], "modalities": ["rgb", "depth"],
              "image_size": image_size, "size": list(size), "audio_recipe": None, "label_source": source,
              "depth_max_m": MAX_DEPTH_M,
              "normalize": {"depth": [[round(float(train_depth.mean()), 4)],
                                      [round(max(float(train_depth.std()), 1e-3), 4)]]}},
    )
    path = cache_file(root, size)
    cache.save(path)
    return path


def cache_file(root: str | Path, size: tuple[int, int]) -> Path:
    return Path(root) / "cache" / f"nyuv2_{size[0]}x{size[1]}.pt"


def stored_size(root: Path, image_size: int) -> tuple[int, int]:
    """The cache's (H, W) for ``image_size``, from the labelled file's image shape (without reading it)."""
    import h5py

    mat = root / LABELED_FILE
    if not mat.is_file():
        raise LayoutError(f"{mat}: file not found (the labelled NYUv2 set, MATLAB v7.3)")
    with h5py.File(mat, "r") as f:
        _, _, width, height = f["images"].shape
    return output_size(height, width, image_size)


@register("datasets", "nyuv2")
class NYUv2:
    """The real NYUv2 labelled set (40 classes, 795 / 654 split), prepared from its public files under
    ``data.root``. Modalities ``rgb`` (3 channels) and ``depth`` (1)."""

    name = "nyuv2"
    labels = NYU40
    modalities = {"rgb": 3, "depth": 1}
    embedded = False

    def prepare(self, root: str | Path, recipe: str | None = None, image_size: int = 480, skip_bad: bool = False,
                **_) -> Path:
        return build_cache(root, image_size, skip_bad, dataset=self.name)

    def cache_path(self, root: str | Path, recipe: str | None = None, image_size: int = 480, **_) -> Path:
        return cache_file(root, stored_size(Path(root), image_size))

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int = 480,
                        skip_bad: bool = False, **_) -> Path:
        return require_prepared(self.cache_path(root, recipe, image_size), self.name, root)
