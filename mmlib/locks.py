"""Exclusive locks across processes: ``fcntl.flock`` on a lock file.

Two kinds of work take one: generating or preparing a data root (``data_root``: ``<root>/.mmlib.lock``) and
training one run (``<run store>/<hash>/run.lock``, mmlib.experiments.run). A second process that asks for a held
lock waits for it (saying so on stderr), then finds the work done: the stamp and cache of a data root, the record
of a run.

A flock belongs to the open file, so the kernel releases it when its holder exits, however it exits (``kill -9``
included): a lock is never stale, and the next process gets it at once; the lock file that stays behind is empty
and means nothing by itself. Locks are advisory: they order mmlib's own writers, not other programs. They hold on
a local disk; on NFS, Linux emulates flock with byte-range locks (since 2.6.12), which the server must support.
A process may take a lock it already holds (the inner one is a no-op), so nested work needs no bookkeeping.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

DATA_LOCK = ".mmlib.lock"
_held: dict[str, int] = {}  # lock files this process holds -> nesting depth


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold the lock ``path`` (created if missing) for the block; wait while another process holds it.
    ``what`` names the work in the waiting message, e.g. ``run 0123abcd``."""
    path = Path(path)
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {what}: another process holds {path}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def data_root(root: str | Path) -> Iterator[None]:
    """The lock of a data root's generation and preparation. A root that exists but cannot be written needs none
    (nothing can be generated or prepared there), and taking one would write into it."""
    root = Path(root)
    with contextlib.ExitStack() as stack:
        if not root.is_dir() or os.access(root, os.W_OK):
            try:
                stack.enter_context(exclusive(root / DATA_LOCK, f"data root {root}"))
            except OSError as err:  # a read-only file system, or a root this process may read but not write
                if not (err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and root.is_dir()):
                    raise
        yield
