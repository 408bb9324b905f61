"""What a result is tied to: the version of the code that computes it, the content of the data it was trained on,
and the machine that produced it.

- ``code_version()``: a hash of mmlib's result-computing source, taken over each module's syntax tree without
  comments or docstrings, so any change to what the code does changes it, and nobody has to remember a bump.
  Modules that only present results (``PRESENTATION_MODULES``) are left out: restyling a figure keeps every run.
- ``data_code_version()``: the same over the preparation code (``mmlib/data`` but the batch loader); a tensor
  cache prepared by other code is prepared again (embedded data) or refused (real data).
- ``content_fingerprint(tensors, meta)``: a hash of a tensor cache's content (names, dtypes, shapes, bytes, and
  its meta), written into the cache at prepare time.
- ``machine()``: CPU / GPU model, thread count and library versions, recorded in every run and report.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
# modules that aggregate, display or schedule results but never change what a run computes
PRESENTATION_MODULES = frozenset({
    "__main__.py", "artifact.py", "bench.py", "calibration.py", "executors.py", "identity.py", "notebooks.py",
    "locks.py", "paper.py", "progress.py", "report.py", "tables.py",
})
# modules of mmlib/data that do not prepare data (the batch loader runs at train time)
NOT_PREPARATION = frozenset({"loader.py"})


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def source_hash(files: list[Path], root: Path) -> str:
    """sha256 over (path relative to ``root``, syntax tree without comments and docstrings) of each file."""
    digest = hashlib.sha256()
    for path in sorted(files):
        tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(ast.dump(tree, include_attributes=False).encode() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of every mmlib module that computes results (all but ``PRESENTATION_MODULES``)."""
    files = [p for p in package_dir.rglob("*.py")
             if not (p.parent == package_dir and p.name in PRESENTATION_MODULES)]
    return source_hash(files, package_dir)


@functools.cache
def data_code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of the code that generates and prepares datasets (``mmlib/data`` without the batch loader)."""
    data_dir = package_dir / "data"
    files = [p for p in data_dir.rglob("*.py") if p.name not in NOT_PREPARATION]
    return source_hash(files, package_dir)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes in row-major order, without a copy when it is already dense."""
    return memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def content_fingerprint(tensors: dict[str, torch.Tensor], meta: dict, skip_meta: tuple[str, ...] = ()) -> str:
    """sha256 of a tensor cache's content: every tensor (name, dtype, shape, bytes) and the meta (as sorted JSON,
    without the keys in ``skip_meta``)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        digest.update(tensor_bytes(t))
    kept = {k: v for k, v in meta.items() if k not in skip_meta}
    digest.update(json.dumps(kept, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _static_machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def machine() -> dict:
    """The machine a result is computed on (numbers move between CPU models and thread counts): CPU model and
    count, GPU model (None without CUDA), torch's current thread count, torch / python versions, platform."""
    return {**_static_machine(), "torch_threads": torch.get_num_threads()}
