"""Progress of long work (sweeps, prepare, notebooks run by dvc) on the terminal, never in notebook outputs.

A bar goes to ``$MMLIB_PROGRESS`` when it is set (a file the notebook runner, ``python -m mmlib notebook``, shows
on its terminal while papermill executes the notebook), else to stderr when stderr is a terminal, else nowhere:
inside a Jupyter kernel stderr is not a terminal, so nothing enters the cell outputs that nbval compares.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, TextIO

from tqdm import tqdm

ENV = "MMLIB_PROGRESS"


@contextlib.contextmanager
def progress_stream() -> Iterator[TextIO | None]:
    """Where progress goes now: the ``$MMLIB_PROGRESS`` file, a terminal's stderr, or None."""
    target = os.environ.get(ENV)
    if target:
        with open(target, "a", buffering=1, encoding="utf-8") as fh:
            yield fh
    elif sys.stderr is not None and sys.stderr.isatty():
        yield sys.stderr
    else:
        yield None


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "run") -> Iterator[tqdm]:
    """A tqdm bar (done / total, rate, ETA) on the progress stream; a silent one when there is none."""
    with progress_stream() as stream:
        bar = tqdm(total=total, desc=desc, unit=unit, file=stream, disable=stream is None or total == 0,
                   dynamic_ncols=True, mininterval=1.0, ascii=stream is not sys.stderr)
        try:
            yield bar
        finally:
            bar.close()
