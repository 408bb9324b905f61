"""``synth_modelnet40``: the embedded ModelNet40 stand-in, procedural 3D objects rendered into the public
12-view layout.

Each of ModelNet40's 40 classes (the first ``classes`` of them, in their sorted order) is a composite of
primitives (boxes and pyramids, cylinders and cones, ellipsoids, tori) in a fixed arrangement: a table is a
top on four legs, a lamp a base, a pole and a conical shade, a wardrobe a tall box, a dresser a wide one.
Classes differ by their parts and proportions; every object jitters them (``part_jitter``, ``stretch``), may
carry class-free clutter parts (``clutter``), and stands at its own yaw about the vertical axis
(``yaw_jitter``) and size (``scale``).

Rendering, in numpy and vectorised over points: the object's surface is sampled densely (points with normals,
about ``density`` points per pixel area), projected orthographically from 12 cameras around the vertical axis
(30 degrees apart, ``elevation`` degrees above the horizon), z-buffered (the nearest front-facing point per
pixel), shaded by a Lambert light fixed to the camera (per-object jitter ``light_jitter``) on a white
background as the public renders, pinholes between samples filled from their neighbours, gray noise added
(``noise``). View 0 looks at the object's front (+z), view 6 at its rear; the class cues (the parts' layout)
show from both sides. The views are written as ``<class>/<train|test>/<class>_<id:04d>_v<view:03d>.png`` and
prepared by the real path (``mmlib.data.modelnet40``); ``views`` (which views the cache holds) sits in the
same ``data.generator`` block but does not enter the stamp.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import from_dict
from ..registry import register
from .cache import atomic_write_bytes, ensure_generated, is_prepared
from .modelnet40 import NUM_VIEWS, SPLITS, ModelNet40, ModelNet40Options, view_file_name

GENERATOR_VERSION = 1  # bump when a change to the generator changes the files it writes
STAMP = "synth_modelnet40.txt"
WINDOW = 1.05  # the image spans [-WINDOW, WINDOW] of the normalised object (which fits the unit sphere)
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(ModelNet40Options))


class Part(NamedTuple):
    kind: str  # box | cylinder | ellipsoid | torus; box and cylinder along their local y axis
    center: tuple
    half: tuple  # half-sizes along the local axes
    rot: tuple = (0.0, 0.0, 0.0)  # degrees about x, then y, then z
    taper: float = 1.0  # box / cylinder: top size over bottom size (0: pyramid / cone)
    minor: float = 0.3  # torus: tube radius over ring radius


def box(c, h, rot=(0.0, 0.0, 0.0), taper=1.0) -> Part:
    return Part("box", c, h, rot, taper)


def cyl(c, h, rot=(0.0, 0.0, 0.0), taper=1.0) -> Part:
    return Part("cylinder", c, h, rot, taper)


def ell(c, h) -> Part:
    return Part("ellipsoid", c, h)


def ring(c, h, rot=(0.0, 0.0, 0.0), minor=0.3) -> Part:
    return Part("torus", c, h, rot, 1.0, minor)


def legs(x: float, z: float, height: float, thick: float = 0.04) -> tuple[Part, ...]:
    return tuple(box((sx * x, height / 2, sz * z), (thick, height / 2, thick))
                 for sx in (-1, 1) for sz in (-1, 1))


ALONG_X, ALONG_Z = (0.0, 0.0, 90.0), (90.0, 0.0, 0.0)  # a cylinder's / torus's axis turned onto x / z
# ModelNet40's classes (sorted, as its folders) and the parts of each; y is up, the front faces +z
SHAPES: dict[str, tuple[Part, ...]] = {
    "airplane": (ell((0, 0.5, 0), (0.2, 0.2, 1.0)), box((0, 0.5, 0.1), (1.0, 0.03, 0.22)),
                 box((0, 0.78, -0.85), (0.03, 0.26, 0.12)), box((0, 0.55, -0.85), (0.36, 0.02, 0.08))),
    "bathtub": (box((0, 0.05, 0), (0.5, 0.05, 1.0)), box((0.46, 0.3, 0), (0.04, 0.3, 1.0)),
                box((-0.46, 0.3, 0), (0.04, 0.3, 1.0)), box((0, 0.3, 0.96), (0.5, 0.3, 0.04)),
                box((0, 0.3, -0.96), (0.5, 0.3, 0.04))),
    "bed": (box((0, 0.25, 0), (0.7, 0.25, 1.0)), box((0, 0.55, -1.0), (0.7, 0.55, 0.05)),
            ell((0, 0.55, -0.75), (0.45, 0.08, 0.15))),
    "bench": (box((0, 0.45, 0), (1.0, 0.04, 0.25)), *legs(0.9, 0.2, 0.43)),
    "bookshelf": (box((0.5, 1.0, 0), (0.04, 1.0, 0.3)), box((-0.5, 1.0, 0), (0.04, 1.0, 0.3)),
                  box((0, 1.98, 0), (0.54, 0.04, 0.3)), box((0, 0.04, 0), (0.54, 0.04, 0.3)),
                  box((0, 1.0, -0.28), (0.5, 1.0, 0.02)),
                  *(box((0, y, 0), (0.5, 0.03, 0.28)) for y in (0.5, 1.0, 1.5))),
    "bottle": (cyl((0, 0.6, 0), (0.3, 0.6, 0.3)), cyl((0, 1.35, 0), (0.3, 0.15, 0.3), taper=0.35),
               cyl((0, 1.7, 0), (0.1, 0.2, 0.1))),
    "bowl": (cyl((0, 0.2, 0), (0.5, 0.2, 0.5), taper=1.5), ring((0, 0.4, 0), (0.78, 0.05, 0.78), minor=0.06)),
    "car": (box((0, 0.35, 0), (0.5, 0.2, 1.0)), box((0, 0.72, -0.1), (0.45, 0.18, 0.55), taper=0.8),
            *(cyl((sx * 0.5, 0.18, sz * 0.6), (0.18, 0.08, 0.18), ALONG_X)
              for sx in (-1, 1) for sz in (-1, 1))),
    "chair": (box((0, 0.9, 0), (0.45, 0.05, 0.45)), *legs(0.4, 0.4, 0.86),
              box((0, 1.45, -0.42), (0.45, 0.5, 0.04))),
    "cone": (cyl((0, 0.75, 0), (0.6, 0.75, 0.6), taper=0.0),),
    "cup": (cyl((0, 0.5, 0), (0.4, 0.5, 0.4), taper=1.15), ring((0.48, 0.5, 0), (0.25, 0.06, 0.25), ALONG_Z)),
    "curtain": (*(cyl((x, 1.0, 0.04 * (-1) ** k), (0.17, 1.0, 0.1))
                  for k, x in enumerate((-0.85, -0.51, -0.17, 0.17, 0.51, 0.85))),
                cyl((0, 2.05, 0), (0.03, 1.05, 0.03), ALONG_X)),
    "desk": (box((0, 0.75, 0), (1.0, 0.04, 0.5)), box((0.75, 0.37, 0), (0.22, 0.37, 0.45)),
             box((-0.75, 0.37, 0), (0.22, 0.37, 0.45)), box((0, 0.45, -0.45), (0.55, 0.25, 0.02))),
    "door": (box((0, 1.0, 0), (0.5, 1.0, 0.05)), ell((0.38, 1.0, 0.08), (0.05, 0.05, 0.05)),
             ell((0.38, 1.0, -0.08), (0.05, 0.05, 0.05))),
    "dresser": (box((0, 0.5, 0), (0.8, 0.5, 0.4)),
                *(box((0, y, 0.42), (0.25, 0.03, 0.02)) for y in (0.2, 0.5, 0.8))),
    "flower_pot": (cyl((0, 0.35, 0), (0.4, 0.35, 0.4), taper=1.3), ell((0, 1.0, 0), (0.45, 0.4, 0.45))),
    "glass_box": (box((0, 0.5, 0), (0.5, 0.5, 0.5)), box((0, 1.03, 0), (0.55, 0.03, 0.55)),
                  box((0, 0.03, 0), (0.55, 0.03, 0.55))),
    "guitar": (ell((0, 0.6, 0), (0.45, 0.5, 0.12)), ell((0, 1.25, 0), (0.33, 0.35, 0.11)),
               box((0, 2.0, 0), (0.06, 0.55, 0.04)), box((0, 2.65, 0), (0.1, 0.12, 0.04))),
    "keyboard": (box((0, 0.05, 0), (1.0, 0.05, 0.35)), box((0, 0.12, 0.02), (0.9, 0.03, 0.28))),
    "lamp": (cyl((0, 0.04, 0), (0.35, 0.04, 0.35)), cyl((0, 0.8, 0), (0.04, 0.8, 0.04)),
             cyl((0, 1.55, 0), (0.5, 0.3, 0.5), taper=0.5)),
    "laptop": (box((0, 0.03, 0), (0.6, 0.03, 0.4)),
               box((0, 0.4, -0.48), (0.6, 0.38, 0.02), rot=(-15.0, 0, 0))),
    "mantel": (box((0.75, 0.5, 0.1), (0.2, 0.5, 0.2)), box((-0.75, 0.5, 0.1), (0.2, 0.5, 0.2)),
               box((0, 0.85, 0.1), (0.95, 0.15, 0.2)), box((0, 0.5, -0.15), (0.95, 0.5, 0.1)),
               box((0, 1.04, 0.05), (1.15, 0.04, 0.35))),
    "monitor": (box((0, 1.0, 0), (0.8, 0.5, 0.04)), box((0, 0.35, -0.05), (0.06, 0.3, 0.04)),
                box((0, 0.03, 0), (0.3, 0.03, 0.25))),
    "night_stand": (box((0, 0.45, 0), (0.35, 0.35, 0.35)), box((0, 0.6, 0.36), (0.1, 0.02, 0.02)),
                    *legs(0.3, 0.3, 0.12)),
    "person": (cyl((0.12, 0.45, 0), (0.09, 0.45, 0.09)), cyl((-0.12, 0.45, 0), (0.09, 0.45, 0.09)),
               box((0, 1.2, 0), (0.25, 0.33, 0.14), taper=1.1), ell((0, 1.75, 0), (0.14, 0.16, 0.14)),
               cyl((0.34, 1.15, 0), (0.06, 0.38, 0.06)), cyl((-0.34, 1.15, 0), (0.06, 0.38, 0.06))),
    "piano": (box((0, 0.8, -0.1), (0.8, 0.5, 0.3)), box((0, 0.75, 0.25), (0.75, 0.04, 0.12)),
              box((0.7, 0.35, 0.25), (0.04, 0.35, 0.04)), box((-0.7, 0.35, 0.25), (0.04, 0.35, 0.04))),
    "plant": (cyl((0, 0.25, 0), (0.25, 0.25, 0.25), taper=1.2), ell((0, 0.9, 0), (0.3, 0.45, 0.3)),
              ell((0.3, 1.2, 0.1), (0.25, 0.3, 0.2)), ell((-0.25, 1.3, -0.1), (0.22, 0.3, 0.22))),
    "radio": (box((0, 0.35, 0), (0.6, 0.35, 0.2)), cyl((0.3, 0.35, 0.2), (0.18, 0.02, 0.18), ALONG_Z),
              cyl((-0.3, 0.35, 0.2), (0.18, 0.02, 0.18), ALONG_Z),
              cyl((0.45, 1.0, -0.1), (0.02, 0.35, 0.02), rot=(0, 0, -20.0))),
    "range_hood": (box((0, 0.5, 0), (0.8, 0.3, 0.5), taper=0.3), box((0, 1.3, -0.1), (0.2, 0.5, 0.2))),
    "sink": (box((0, 0.4, 0), (0.6, 0.4, 0.4)), box((0, 0.83, 0), (0.65, 0.03, 0.45)),
             cyl((0, 1.0, -0.3), (0.04, 0.15, 0.04)), box((0, 1.12, -0.2), (0.03, 0.03, 0.12))),
    "sofa": (box((0, 0.25, 0), (1.0, 0.25, 0.45)), box((0, 0.65, -0.35), (1.0, 0.4, 0.1)),
             box((0.9, 0.45, 0), (0.1, 0.2, 0.45)), box((-0.9, 0.45, 0), (0.1, 0.2, 0.45))),
    "stairs": tuple(box((0, 0.1 * (k + 1), 0.6 - 0.3 * k), (0.5, 0.1 * (k + 1), 0.15)) for k in range(5)),
    "stool": (cyl((0, 0.8, 0), (0.35, 0.05, 0.35)),
              *(cyl((0.25 * np.cos(a), 0.4, 0.25 * np.sin(a)), (0.035, 0.4, 0.035)) for a in (0.5, 2.6, 4.7)),
              ring((0, 0.35, 0), (0.25, 0.02, 0.25), minor=0.1)),
    "table": (box((0, 0.75, 0), (1.0, 0.04, 0.6)), *legs(0.9, 0.5, 0.72)),
    "tent": (box((0, 0.6, 0), (0.8, 0.6, 0.8), taper=0.0),),
    "toilet": (ell((0, 0.4, 0.15), (0.3, 0.3, 0.4)), cyl((0, 0.2, 0.1), (0.2, 0.2, 0.25)),
               box((0, 0.8, -0.35), (0.35, 0.3, 0.12)), ring((0, 0.68, 0.15), (0.3, 0.04, 0.38), minor=0.2)),
    "tv_stand": (box((0, 0.3, 0), (1.0, 0.3, 0.35)), box((0, 0.62, 0), (1.05, 0.03, 0.38)),
                 box((0, 0.3, 0.36), (0.02, 0.25, 0.02))),
    "vase": (ell((0, 0.6, 0), (0.4, 0.6, 0.4)), cyl((0, 1.3, 0), (0.15, 0.2, 0.15)),
             ring((0, 1.5, 0), (0.18, 0.04, 0.18))),
    "wardrobe": (box((0, 1.0, 0), (0.7, 1.0, 0.4)), box((0.08, 1.0, 0.42), (0.02, 0.2, 0.02)),
                 box((-0.08, 1.0, 0.42), (0.02, 0.2, 0.02)), box((0, 2.03, 0), (0.75, 0.03, 0.45))),
    "xbox": (box((0, 0.55, 0), (0.15, 0.55, 0.5)), box((0.16, 0.9, 0), (0.01, 0.02, 0.3)),
             box((0, 0.02, 0), (0.25, 0.02, 0.3))),
}
CLASSES = tuple(sorted(SHAPES))
assert len(CLASSES) == 40


@dataclass
class SynthModelNet40Config(ModelNet40Options):
    objects: int = 1200  # total objects (train + test), classes balanced
    classes: int = 10  # the first ``classes`` ModelNet40 classes
    test_fraction: float = 0.2
    seed: int = 0
    render_size: int = 32  # square PNGs, pixels
    elevation: float = 30.0  # camera height above the horizon, degrees
    yaw_jitter: float = 30.0  # each object's yaw uniform in +- this many degrees (180: any yaw)
    scale: float = 0.2  # each object's size uniform in [1 - scale, 1] of the frame
    part_jitter: float = 0.15  # std of the log of each part's half-sizes (and a quarter of it for positions)
    stretch: float = 0.1  # std of the log of the whole object's per-axis stretch
    clutter: float = 0.0  # mean number of class-free random parts added to an object (Poisson)
    light_jitter: float = 10.0  # std of the light direction's jitter per object, degrees
    noise: float = 0.02  # std of gray noise added to every pixel (values in [0, 1])
    density: float = 6.0  # surface samples per pixel area (holes between them are filled)

    def fingerprint(self) -> str:
        """The rendering fields only (the views to cache are chosen at prepare time)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in OPTION_FIELDS}
        blob = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        super().check()
        if not 2 <= self.classes <= len(CLASSES):
            raise ValueError(f"synth_modelnet40.classes must be in [2, {len(CLASSES)}], got {self.classes}")
        if not 0 < self.test_fraction < 1 or self.objects < 2 * self.classes:
            raise ValueError(f"synth_modelnet40: need 0 < test_fraction < 1 and objects >= 2 * classes, got "
                             f"{self.test_fraction}, {self.objects}")
        if self.render_size < 8 or self.density <= 0 or not 0 <= self.scale < 1:
            raise ValueError(f"synth_modelnet40: need render_size >= 8, density > 0, 0 <= scale < 1; got "
                             f"{self.render_size}, {self.density}, {self.scale}")
        for name in ("part_jitter", "stretch", "clutter", "light_jitter", "noise", "yaw_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"synth_modelnet40.{name} must be >= 0, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------------------
# Surfaces: each primitive as parametric patches over (u, v) in [0, 1]^2, in its local frame (half-sizes 1)


def _patches(kind: str, taper: float, minor: float):
    """[(surface(u, v) -> (n, 3), inner(u, v) -> (n, 3) a point the outward normal points away from)]."""
    two_pi = 2 * np.pi
    centre = lambda u, v: np.zeros((len(u), 3))  # noqa: E731  (convex primitives: their centre)
    if kind == "box":
        def side(axis: int, sign: float):
            def f(u, v):
                s, a = 1 + (taper - 1) * v, 2 * u - 1
                p = np.stack([a * s, 2 * v - 1, a * s], axis=1)
                p[:, axis] = sign * s
                return p
            return f
        faces = [side(axis, sign) for axis in (0, 2) for sign in (1.0, -1.0)]
        faces.append(lambda u, v: np.stack([2 * u - 1, -np.ones_like(u), 2 * v - 1], axis=1))
        if taper > 0:
            faces.append(lambda u, v: np.stack([taper * (2 * u - 1), np.ones_like(u), taper * (2 * v - 1)],
                                               axis=1))
        return [(f, centre) for f in faces]
    if kind == "cylinder":
        def wall(u, v):
            r = 1 + (taper - 1) * v
            return np.stack([r * np.cos(two_pi * u), 2 * v - 1, r * np.sin(two_pi * u)], axis=1)

        def cap(y: float, r: float):
            return lambda u, v: np.stack([r * v * np.cos(two_pi * u), np.full_like(u, y),
                                          r * v * np.sin(two_pi * u)], axis=1)
        faces = [wall, cap(-1.0, 1.0)] + ([cap(1.0, taper)] if taper > 0 else [])
        return [(f, centre) for f in faces]
    if kind == "ellipsoid":
        return [(lambda u, v: np.stack([np.sin(np.pi * v) * np.cos(two_pi * u), np.cos(np.pi * v),
                                        np.sin(np.pi * v) * np.sin(two_pi * u)], axis=1), centre)]
    if kind == "torus":  # ring radius R and tube radius r, scaled so that x, z and y each span [-1, 1]
        big, small = 1 / (1 + minor), minor / (1 + minor)

        def tube(u, v):
            reach = big + small * np.cos(two_pi * v)
            return np.stack([reach * np.cos(two_pi * u), np.sin(two_pi * v), reach * np.sin(two_pi * u)],
                            axis=1)
        return [(tube, lambda u, v: np.stack([big * np.cos(two_pi * u), np.zeros_like(u),
                                              big * np.sin(two_pi * u)], axis=1))]
    raise ValueError(f"unknown primitive kind {kind!r}")


def rotation(degrees) -> np.ndarray:
    """The matrix of rotations about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=1)


GRID = ((np.mgrid[0:9, 0:9].reshape(2, -1) + 0.5) / 9)  # where a patch's largest area element is looked for


def sample_part(part: Part, per_area: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 3), outward unit normals (n, 3)) on ``part``'s surface, at least ``per_area`` points per
    unit area everywhere (more where the parametrisation is denser)."""
    linear = rotation(part.rot) * np.asarray(part.half, float)  # local -> world: linear @ p + centre
    cofactor = np.linalg.det(linear) * np.linalg.inv(linear).T  # maps local normals (cross products) to world
    eps = 1e-4
    points, normals = [], []

    def local_frame(surface, u, v):
        """The local surface points and the cross product of their tangents (central differences)."""
        n = len(u)
        p = surface(np.concatenate([u, u + eps, u - eps, u, u]), np.concatenate([v, v, v, v + eps, v - eps]))
        return p[:n], _cross(p[n:2 * n] - p[2 * n:3 * n], p[3 * n:4 * n] - p[4 * n:]) / (4 * eps * eps)

    for surface, inner in _patches(part.kind, part.taper, part.minor):
        _, cross = local_frame(surface, *GRID)
        bound = 1.2 * np.linalg.norm(cross @ cofactor.T, axis=1).max()  # >= the patch's area element
        count = int(np.ceil(per_area * bound)) + 8
        u, v = rng.random(count), rng.random(count)
        p, cross = local_frame(surface, u, v)
        cross = cross @ cofactor.T
        length = np.sqrt((cross * cross).sum(1))
        keep = length > 1e-9 * max(bound, 1e-12)  # drop degenerate points (a cone's apex)
        p, n = p[keep] @ linear.T + part.center, cross[keep] / length[keep, None]
        outward = ((p - inner(u[keep], v[keep]) @ linear.T - part.center) * n).sum(1) >= 0
        points.append(p)
        normals.append(np.where(outward[:, None], n, -n))
    return np.concatenate(points), np.concatenate(normals)


def object_parts(cfg: SynthModelNet40Config, label: int, rng: np.random.Generator) -> list[Part]:
    """The class's parts with this object's jitter and clutter, normalised to fit the unit sphere."""
    stretch = np.exp(rng.normal(0, cfg.stretch, 3))
    parts = []
    for part in SHAPES[CLASSES[label]]:
        half = np.asarray(part.half) * np.exp(rng.normal(0, cfg.part_jitter, 3))
        centre = np.asarray(part.center) + rng.normal(0, cfg.part_jitter / 4, 3) * np.asarray(part.half)
        parts.append(part._replace(center=tuple(centre * stretch), half=tuple(half * stretch)))
    corners = np.array([(sx, sy, sz) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    boxes = np.concatenate([(corners * p.half) @ rotation(p.rot).T + p.center for p in parts])
    low, high = boxes.min(0), boxes.max(0)
    for _ in range(rng.poisson(cfg.clutter)):  # class-free parts inside the object's bounding box
        kind = ("box", "cylinder", "ellipsoid")[rng.integers(3)]
        size = (high - low).max()
        parts.append(Part(kind, tuple(rng.uniform(low, high)), tuple(rng.uniform(0.05, 0.2, 3) * size),
                          tuple(rng.uniform(-45, 45, 3))))
        extra = parts[-1]
        boxes = np.concatenate([boxes, (corners * extra.half) @ rotation(extra.rot).T + extra.center])
    middle = (boxes.min(0) + boxes.max(0)) / 2
    factor = rng.uniform(1 - cfg.scale, 1) / np.linalg.norm(boxes - middle, axis=1).max()
    return [p._replace(center=tuple((np.asarray(p.center) - middle) * factor),
                       half=tuple(np.asarray(p.half) * factor)) for p in parts]


# ------------------------------------------------------------------------------------------------------------
# Rendering


def render_views(points: np.ndarray, normals: np.ndarray, yaw: float, light: np.ndarray,
                 cfg: SynthModelNet40Config) -> np.ndarray:
    """(12, S, S) float images in [0, 1] of one object: view k from azimuth ``yaw`` + 30 k degrees."""
    s = cfg.render_size
    elevation = np.deg2rad(cfg.elevation)
    ce, se = np.cos(elevation), np.sin(elevation)
    a = np.deg2rad(yaw + 360.0 * np.arange(NUM_VIEWS) / NUM_VIEWS)
    ca, sa, zero = np.cos(a), np.sin(a), np.zeros(NUM_VIEWS)
    # the camera's right, up and backward (towards the camera) axes in object coordinates, per view: the
    # object turned by -azimuth about y, then tilted towards the camera by the elevation about x
    right = np.stack([ca, zero, -sa], 1)
    up = np.stack([-se * sa, np.full(NUM_VIEWS, ce), -se * ca], 1)
    back = np.stack([ce * sa, np.full(NUM_VIEWS, se), ce * ca], 1)
    lit = light[0] * right + light[1] * up + light[2] * back  # the light direction in object coordinates

    def along(v: np.ndarray, axis: np.ndarray) -> np.ndarray:  # (n, 3) . (12, 3) -> (12, n)
        v, axis = v.astype(np.float32), axis.astype(np.float32)
        return axis[:, :1] * v[:, 0] + axis[:, 1:2] * v[:, 1] + axis[:, 2:] * v[:, 2]

    col = np.floor((along(points, right) / WINDOW + 1) / 2 * s).astype(np.int64)
    row = np.floor((1 - along(points, up) / WINDOW) / 2 * s).astype(np.int64)
    inside = (col >= 0) & (col < s) & (row >= 0) & (row < s)
    ok = (along(normals, back) > 0) & inside  # front-facing, inside the frame
    key = ((np.arange(NUM_VIEWS)[:, None] * s + row) * s + col)[ok]
    depth = along(points, back)[ok]
    shade = 0.15 + 0.7 * np.clip(along(normals, lit)[ok], 0, 1)
    nearest = np.full(NUM_VIEWS * s * s, -np.inf, dtype=np.float32)
    np.maximum.at(nearest, key, depth)  # z-buffer: the nearest depth per pixel of each view
    win = depth >= nearest[key]
    images = np.full(NUM_VIEWS * s * s, -1.0, dtype=np.float32)
    np.maximum.at(images, key[win], shade[win])  # the nearest point's shade (the brighter one on a tie)
    return fill_pinholes(images.reshape(NUM_VIEWS, s, s).astype(np.float64))


def fill_pinholes(images: np.ndarray) -> np.ndarray:
    """Empty pixels (< 0) with at least 6 of their 8 neighbours covered take the neighbours' mean; the rest of
    the empty pixels become the white background."""
    covered = images >= 0
    padded_cover = np.pad(covered, ((0, 0), (1, 1), (1, 1)))
    padded = np.pad(np.where(covered, images, 0.0), ((0, 0), (1, 1), (1, 1)))
    h, w = images.shape[1:]
    count, total = np.zeros(images.shape), np.zeros(images.shape)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == dx == 1:
                continue
            count += padded_cover[:, dy:dy + h, dx:dx + w]
            total += padded[:, dy:dy + h, dx:dx + w]
    hole = ~covered & (count >= 6)
    return np.where(covered, images, np.where(hole, total / np.maximum(count, 1), 1.0))


def render_object(cfg: SynthModelNet40Config, label: int, rng: np.random.Generator) -> np.ndarray:
    """(12, S, S) uint8 views of a new object of class ``label``."""
    per_area = cfg.density * (cfg.render_size / (2 * WINDOW)) ** 2
    sampled = [sample_part(p, per_area, rng) for p in object_parts(cfg, label, rng)]
    points, normals = (np.concatenate(x) for x in zip(*sampled))
    yaw = rng.uniform(-cfg.yaw_jitter, cfg.yaw_jitter)
    light = np.array([-0.3, 0.3, 0.9]) + rng.normal(0, np.deg2rad(cfg.light_jitter), 3)
    images = render_views(points, normals, yaw, light / np.linalg.norm(light), cfg)
    images = images + rng.normal(0, cfg.noise, images.shape) if cfg.noise > 0 else images
    return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def generate(root: str | Path, cfg: SynthModelNet40Config) -> Path:
    """Write every object's 12 views under ``root/<class>/<split>/``, then the stamp."""
    cfg.check()
    root = Path(root)
    rng, render_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))
    labels = np.array([i % cfg.classes for i in range(cfg.objects)])
    is_test = np.zeros(cfg.objects, dtype=bool)
    for c in range(cfg.classes):  # the same test share of every class
        members = np.flatnonzero(labels == c)
        n_test = max(1, int(round(cfg.test_fraction * len(members))))
        is_test[rng.choice(members, size=n_test, replace=False)] = True
    for label in range(cfg.classes):
        cls = CLASSES[label]
        for split in SPLITS:
            (root / cls / split).mkdir(parents=True, exist_ok=True)
        # numbered per class, train objects first, as the release numbers them
        members = [i for split in SPLITS
                   for i in np.flatnonzero((labels == label) & (is_test == (split == "test")))]
        for number, i in enumerate(members, start=1):
            views = render_object(cfg, label, render_rng)
            folder = root / cls / SPLITS[int(is_test[i])]
            for view in range(NUM_VIEWS):  # plain writes (the stamp, written last, marks them complete)
                (folder / view_file_name(f"{cls}_{number:04d}", view)).write_bytes(png_bytes(views[view]))
    # written last: the files are complete
    atomic_write_bytes(root / STAMP, lambda tmp: tmp.write_text(cfg.fingerprint() + "\n"))
    return root


@register("datasets", "synth_modelnet40")
class SynthModelNet40(ModelNet40):
    """Embedded ModelNet40 stand-in: renders generated on first use, then the real ModelNet40 path."""

    name = "synth_modelnet40"
    embedded = True

    def generator_config(self, generator: dict | None) -> SynthModelNet40Config:
        cfg = from_dict(SynthModelNet40Config, generator or {}, f"datasets.{self.name}")
        cfg.check()
        return cfg

    def options(self, generator: dict | None) -> ModelNet40Options:
        return self.generator_config(generator).options()

    def ensure_prepared(self, root: str | Path, recipe: str | None = None, image_size: int = 224,
                        skip_bad: bool = False, generator: dict | None = None, **_) -> Path:
        cfg = self.generator_config(generator)
        root = Path(root)
        ensure_generated(root, STAMP, cfg, generate, self.name)
        path = self.cache_path(root, image_size=image_size, generator=generator)
        if not is_prepared(path):
            self.prepare(root, image_size=image_size, skip_bad=skip_bad, generator=generator)
        return path
