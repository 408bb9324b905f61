"""``synth_nyuv2``: the embedded NYUv2 stand-in, written in the public layout (``nyu_depth_v2_labeled.mat`` as a
MATLAB v7.3 / HDF5 file through h5py, ``splits.mat`` and ``classMapping40.mat`` as MATLAB v5 files) and prepared
by the real loader (``mmlib.data.nyuv2``).

Seeded and procedural indoor scenes seen by a pinhole camera (Kinect-like focal length) at a random height and
pitch: a room of back and side walls, floor and ceiling (each pixel's depth is its ray's nearest plane), floor
objects standing at random depths (cabinet, bed, chair, sofa, table, bookshelf, box: fronto-parallel boxes with
class-specific sizes, a visible top surface when lower than the camera, see-through legs for tables and chairs),
and wall objects on the back wall (door, window, picture: recessed by a few centimetres or flush). Objects are
drawn far to near through a depth buffer. Each class has its own colour (hue, saturation, value, per-instance
``colour_jitter``) and texture (``texture_contrast``); shading darkens with depth and lights top surfaces.

The two modalities are informative in different ways, as in real RGB-D data:
- geometry-defined classes: floor / wall / ceiling (depth gradients), cabinets coloured like the room's walls,
  chairs and tables of one wood colour told apart by shape: depth separates them cheaply;
- colour-defined classes: doors, windows and pictures lie in the wall's plane (flush or nearly), beds and sofas
  have similar geometry: RGB separates them.
The labels are ids of the 894 raw classes (several raw ids per 40-class class, mapped by the written
classMapping40.mat), 0 = unlabelled on a ``void_border``-pixel band along region boundaries (as NYUv2's
unlabelled borders). Knobs (``SynthNYUv2Config``): noise and jitter per modality, object counts, sizes.
"""
from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .nyuv2 import LABELED_FILE, MAPPING_FILE, NYU40, SPLITS_FILE, NYUv2

GENERATOR_VERSION = 1  # bump when a change to the generator changes what it writes
STAMP = "synth_nyuv2.txt"
RAW_CLASSES = 894
WALL, FLOOR, CEILING = 1, 2, 22  # NYU40 ids (1-based)
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: synth_nyuv2 HDF5 schema 1.00 ."

# floor objects: NYU40 id -> (width m, height m, depth m, legs, colour (h, s, v) or None = the walls' colour,
# texture). Chairs and tables share one wood colour; cabinets take the room's wall colour.
WOOD = (0.08, 0.55, 0.55)
FLOOR_OBJECTS = {
    3: ((0.6, 1.2), (0.8, 2.0), 0.5, False, None, "panels"),  # cabinet
    4: ((1.4, 2.0), (0.5, 0.65), 2.0, False, (0.12, 0.12, 0.92), "plain"),  # bed
    5: ((0.45, 0.55), (0.85, 0.95), 0.5, True, WOOD, "grain"),  # chair
    6: ((1.6, 2.2), (0.8, 0.9), 0.9, False, (0.6, 0.55, 0.55), "plain"),  # sofa
    7: ((0.8, 1.6), (0.72, 0.78), 0.8, True, WOOD, "grain"),  # table
    10: ((0.8, 1.2), (1.6, 2.1), 0.35, False, (0.05, 0.5, 0.4), "books"),  # bookshelf
    29: ((0.3, 0.5), (0.3, 0.5), 0.4, False, (0.09, 0.45, 0.7), "plain"),  # box
}
# wall objects: id -> (width m, height m, bottom edge m, recess m, colour, texture)
WALL_OBJECTS = {
    8: ((0.8, 0.9), (2.0, 2.1), (0.0, 0.0), 0.04, (0.07, 0.5, 0.45), "panels"),  # door
    9: ((0.8, 1.5), (1.0, 1.4), (0.8, 1.0), 0.08, (0.57, 0.25, 0.95), "plain"),  # window
    11: ((0.3, 0.8), (0.3, 0.6), (1.2, 1.6), 0.0, None, "picture"),  # picture (random colours)
}


@dataclass
class SynthNYUv2Config:
    images: int = 300  # NYUv2 has 1,449 (795 train, 654 test)
    test_fraction: float = 0.45
    seed: int = 0
    height: int = 120  # written image size (NYUv2: 480 x 640)
    width: int = 160
    floor_objects: float = 3.0  # mean number of floor objects per scene (Poisson)
    wall_objects: float = 1.5  # mean number of door / window / picture per scene (Poisson)
    rgb_noise: float = 0.04  # std of per-pixel colour noise (pixel values in [0, 1])
    colour_jitter: float = 0.06  # per-instance jitter of hue, saturation and value (larger: colours overlap)
    texture_contrast: float = 0.12  # amplitude of the class textures
    illumination: float = 0.25  # spread of the scene's global brightness (uniform, +/-)
    depth_noise: float = 0.01  # relative std of per-pixel depth noise
    depth_holes: float = 0.0  # fraction of pixels with missing depth (0 m); the labelled set's depths are filled
    void_border: int = 1  # width in pixels of the unlabelled band along region boundaries (0: none)

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"synth_nyuv2.test_fraction must be in (0, 1), got {self.test_fraction}")
        n_test = int(round(self.test_fraction * self.images))
        if n_test < 1 or self.images - n_test < 2:
            raise ValueError(f"synth_nyuv2: images={self.images} leaves too few train or test images")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"synth_nyuv2: height and width must be >= 16, got {self.height} x {self.width}")
        for name in ("depth_holes",):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"synth_nyuv2.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("floor_objects", "wall_objects", "rgb_noise", "colour_jitter", "texture_contrast",
                     "illumination", "depth_noise", "void_border"):
            if getattr(self, name) < 0:
                raise ValueError(f"synth_nyuv2.{name} must be >= 0, got {getattr(self, name)}")


def raw_ids(label40: int) -> list[int]:
    """The raw (894-class) ids that map to ``label40``: label40, label40 + 40, ... (the written mapping)."""
    return list(range(label40, RAW_CLASSES + 1, len(NYU40)))


def class_mapping() -> np.ndarray:
    """mapClass (1, 894): raw id r -> ((r - 1) mod 40) + 1."""
    return (np.arange(RAW_CLASSES) % len(NYU40) + 1).astype(np.float64)[None]


def _rgb(hsv, jitter: float, rng: np.random.Generator) -> np.ndarray:
    h, s, v = hsv
    h = (h + rng.normal(0, jitter)) % 1.0
    s, v = (float(np.clip(x + rng.normal(0, jitter), 0, 1)) for x in (s, v))
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _texture(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) zero-mean pattern in [-1, 1] for a region of ``shape`` pixels."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "grain":  # wood grain: fine horizontal waves
        return np.repeat(np.sin(yy * 1.3 + 2 * np.sin(xx * 0.15 + rng.uniform(0, 6)))[..., None], 3, axis=2)
    if kind == "panels":  # vertical panel lines
        period = max(3, w // max(1, int(rng.integers(2, 4))))
        return np.repeat(np.where(xx % period < 1, -1.0, 0.2)[..., None], 3, axis=2)
    if kind == "books":  # shelves every ~quarter height, books of random colours between them
        shelf = np.where(yy % max(3, h // 4) < 1, -1.0, 0.0)[..., None]
        widths = np.cumsum(rng.integers(1, 4, size=w))
        colours = rng.uniform(-1, 1, size=(w + 1, 3))
        books = colours[np.searchsorted(widths, xx, side="right").clip(max=w)]
        return np.clip(books * 0.8 + shelf, -1, 1)
    if kind == "picture":  # a frame around random colour blobs
        inner = rng.uniform(-1, 1, size=(max(1, h // 4), max(1, w // 4), 3))
        img = np.kron(inner, np.ones((4, 4, 1)))[:h, :w]
        img = np.pad(img, [(0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)], mode="edge")
        border = (yy < 1) | (xx < 1) | (yy >= h - 1) | (xx >= w - 1)
        img[border] = -1.0
        return img
    return np.zeros((h, w, 3))


def render(cfg: SynthNYUv2Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: rgb (H, W, 3) uint8, depth (H, W) float metres, raw labels (H, W) int (0 = unlabelled)."""
    h, w = cfg.height, cfg.width
    f = 0.81 * w  # the Kinect's 518 px at 640 wide
    cx, v0 = w / 2 + rng.normal(0, 0.02 * w), h / 2 + rng.normal(0, 0.08 * h)
    cam, room_h = rng.uniform(1.2, 1.6), rng.uniform(2.5, 3.0)
    back, half = rng.uniform(3.0, 6.0), rng.uniform(1.8, 3.0)
    vv, uu = np.mgrid[0:h, 0:w] + 0.5
    ray_x, ray_y = (uu - cx) / f, (v0 - vv) / f  # per unit depth; y up
    inf = np.full((h, w), np.inf)
    side = np.where(ray_x != 0, half / np.maximum(np.abs(ray_x), 1e-9), inf)  # the left or right wall
    planes = {  # depth along the optical axis where each ray meets each plane
        WALL: np.minimum(np.full((h, w), back), side),
        FLOOR: np.where(ray_y < 0, cam / np.maximum(-ray_y, 1e-9), inf),
        CEILING: np.where(ray_y > 0, (room_h - cam) / np.maximum(ray_y, 1e-9), inf),
    }
    stack = np.stack(list(planes.values()))
    depth = stack.min(axis=0)
    label40 = np.array(list(planes))[stack.argmin(axis=0)]
    on_back = (label40 == WALL) & np.isclose(depth, back)
    wall_hsv = (rng.uniform(0, 1), rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95))
    colours = {WALL: (_rgb(wall_hsv, cfg.colour_jitter, rng), "plain"),
               FLOOR: (_rgb((rng.choice([0.07, 0.1, 0.6]), 0.4, 0.45), cfg.colour_jitter, rng), "grain"),
               CEILING: (_rgb((0.1, 0.03, 0.97), cfg.colour_jitter, rng), "plain")}
    rgb = np.zeros((h, w, 3))
    for cls, (colour, texture) in colours.items():
        mask = label40 == cls
        rgb[mask] = colour + cfg.texture_contrast * 0.5 * _texture(texture, (h, w), rng)[mask]
    shade = np.ones((h, w))
    # wall objects on the back wall, then floor objects far to near
    for _ in range(int(rng.poisson(cfg.wall_objects))):
        cls = int(rng.choice(list(WALL_OBJECTS)))
        (w0, w1), (h0, h1), (b0, b1), recess, hsv, texture = WALL_OBJECTS[cls]
        ow, oh, bottom = rng.uniform(w0, w1), rng.uniform(h0, h1), rng.uniform(b0, b1)
        x0 = rng.uniform(-half + 0.1, half - 0.1 - ow)
        z = back + recess
        u0, u1 = cx + f * x0 / back, cx + f * (x0 + ow) / back
        top, bot = v0 - f * (bottom + oh - cam) / back, v0 - f * (bottom - cam) / back
        mask = on_back & (uu >= u0) & (uu < u1) & (vv >= top) & (vv < bot)
        if not mask.any():
            continue
        colour = _rgb(hsv, cfg.colour_jitter, rng) if hsv else rng.uniform(0.2, 0.9, size=3)
        rgb = _paint(rgb, mask, colour, texture, cfg, rng)
        depth[mask], label40[mask] = z, cls
    objects = []
    for _ in range(int(rng.poisson(cfg.floor_objects))):
        cls = int(rng.choice(list(FLOOR_OBJECTS)))
        (w0, w1), (h0, h1), extent, legs, hsv, texture = FLOOR_OBJECTS[cls]
        ow, oh = rng.uniform(w0, w1), rng.uniform(h0, h1)
        z = rng.uniform(1.0, max(1.1, back - extent - 0.1))
        x0 = rng.uniform(-half, half - ow)
        objects.append((z, cls, ow, oh, extent, legs, hsv, texture, x0))
    for z, cls, ow, oh, extent, legs, hsv, texture, x0 in sorted(objects, reverse=True):
        u0, u1 = cx + f * x0 / z, cx + f * (x0 + ow) / z
        columns = (uu >= u0) & (uu < u1)
        front_top, ground = v0 - f * (oh - cam) / z, v0 + f * cam / z
        front = columns & (vv >= front_top) & (vv < ground)
        obj_depth = np.full((h, w), z)
        if legs:  # a slab on top (chairs: and a back rest), legs at the sides, see-through below
            slab = 0.06 if cls == 7 else 0.45  # a chair's seat-and-back panel is its upper half
            leg = max(1.0, 0.06 * f / z)
            keep = (vv < front_top + f * slab / z) | (uu < u0 + leg) | (uu >= u1 - leg)
            front &= keep
        top_surface = np.zeros((h, w), dtype=bool)
        if oh < cam:  # the top is visible: rows where the ray meets the plane y = oh - cam within the extent
            t = np.where(ray_y < 0, (cam - oh) / np.maximum(-ray_y, 1e-9), np.inf)
            top_surface = columns & (t >= z) & (t < z + extent) & (vv < front_top)
            obj_depth = np.where(top_surface, t, obj_depth)
        mask = (front | top_surface) & (obj_depth < depth)
        if not mask.any():
            continue
        colour = _rgb(hsv if hsv else wall_hsv, cfg.colour_jitter, rng)
        rgb = _paint(rgb, mask, colour, texture, cfg, rng)
        shade = np.where(top_surface & mask, 1.15, np.where(mask, 0.9, shade))
        depth[mask], label40[mask] = obj_depth[mask], cls
    brightness = 1.0 + rng.uniform(-cfg.illumination, cfg.illumination)
    rgb = rgb * shade[..., None] * brightness * (1.0 - 0.04 * np.clip(depth, 0, 8))[..., None]
    rgb = rgb + rng.normal(0, cfg.rgb_noise, size=rgb.shape)
    depth = depth * (1 + rng.normal(0, cfg.depth_noise, size=depth.shape))
    if cfg.depth_holes:
        depth[rng.random(depth.shape) < cfg.depth_holes] = 0.0
    raw = _raw_labels(label40, cfg.void_border, rng)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32), raw


def _paint(rgb, mask, colour, texture, cfg, rng):
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    pattern = _texture(texture, (ys.max() - y0 + 1, xs.max() - x0 + 1), rng)
    out = rgb.copy()
    out[ys, xs] = colour + cfg.texture_contrast * pattern[ys - y0, xs - x0]
    return out


def _raw_labels(label40: np.ndarray, border: int, rng: np.random.Generator) -> np.ndarray:
    """40-class ids -> raw ids (one raw id per class and image, among those mapping to it); 0 on a ``border``-
    pixel band where neighbouring pixels differ."""
    raw = np.zeros_like(label40)
    for cls in np.unique(label40):
        raw[label40 == cls] = rng.choice(raw_ids(int(cls)))
    if border:
        edge = np.zeros(label40.shape, dtype=bool)
        edge[:-1] |= label40[:-1] != label40[1:]
        edge[:, :-1] |= label40[:, :-1] != label40[:, 1:]
        for _ in range(border - 1):  # widen the band
            grown = edge.copy()
            grown[1:] |= edge[:-1]
            grown[:, 1:] |= edge[:, :-1]
            edge = grown
        raw[edge] = 0
    return raw


def write_labeled_mat(path: Path, rgb: np.ndarray, depth: np.ndarray, raw: np.ndarray) -> None:
    """The labelled set as MATLAB v7.3 stores it: HDF5 with a 512-byte MATLAB header, arrays with their axes
    reversed (images (N, 3, W, H) for MATLAB's H x W x 3 x N), each tagged with its MATLAB class."""
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", userblock_size=512, track_order=True) as f:
            for name, array, cls in (("images", rgb.transpose(0, 3, 2, 1), "uint8"),
                                     ("depths", depth.transpose(0, 2, 1), "single"),
                                     ("labels", raw.transpose(0, 2, 1).astype(np.uint16), "uint16")):
                ds = f.create_dataset(name, data=np.ascontiguousarray(array), track_times=False)
                ds.attrs["MATLAB_class"] = np.bytes_(cls)
        with tmp.open("r+b") as fh:
            fh.write(MATLAB_HEADER.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")

    atomic_write_bytes(path, write)


def generate(root: str | Path, cfg: SynthNYUv2Config) -> Path:
    """Write nyu_depth_v2_labeled.mat, splits.mat, classMapping40.mat and the stamp under ``root``."""
    import scipy.io

    cfg.check()
    root = Path(root)
    rng, scene_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))
    scenes = [render(cfg, scene_rng) for _ in range(cfg.images)]
    rgb, depth, raw = (np.stack(parts) for parts in zip(*scenes))
    write_labeled_mat(root / LABELED_FILE, rgb, depth, raw)
    order = rng.permutation(cfg.images)
    n_test = int(round(cfg.test_fraction * cfg.images))
    splits = {"trainNdxs": np.sort(order[n_test:]) + 1, "testNdxs": np.sort(order[:n_test]) + 1}  # 1-based
    atomic_write_bytes(root / SPLITS_FILE, lambda tmp: scipy.io.savemat(
        tmp, {k: v.astype(np.float64)[:, None] for k, v in splits.items()}))
    names = np.empty((1, len(NYU40)), dtype=object)
    names[0, :] = list(NYU40)
    atomic_write_bytes(root / MAPPING_FILE, lambda tmp: scipy.io.savemat(
        tmp, {"mapClass": class_mapping(), "className": names}))
    atomic_write_bytes(root / STAMP, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))  # last: complete
    return root


@register("datasets", "synth_nyuv2")
class SynthNYUv2(NYUv2):
    """Embedded NYUv2 stand-in: generated on first use, then prepared by the real NYUv2 path."""

    name = "synth_nyuv2"
    embedded = True

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int = 96,
                        skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        cfg = from_dict(SynthNYUv2Config, generator or {}, "datasets.synth_nyuv2")
        cfg.check()
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, self.name)
        path = self.cache_path(root, recipe, image_size)
        if not is_prepared(path):
            self.prepare(root, recipe, image_size, skip_bad)
        return path
