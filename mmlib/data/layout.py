"""What every loader of a public dataset layout shares: its error type, the check of its split listings, and
raise-or-skip over bad clips.

A loader collects the problems it finds (a clip listed in two splits, twice, or with two labels; a clip listed
without media; a file that does not decode); by default the first one stops ``prepare`` with an error naming the
file, and with ``--skip-bad`` every one is reported on stderr and its clip left out.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, TypeVar

from .audio import MediaError

Item = TypeVar("Item")
Value = TypeVar("Value")


class LayoutError(ValueError):
    """The dataset directory does not follow the public layout; the message names the file or directory."""


@dataclass(frozen=True)
class Listing:
    """One row of a split file: the clip it names, its label and split, and where it is (``<file>:<line>``)."""

    clip: Hashable
    label: object
    split: str
    where: str


def check_listings(listings: list[Listing], name: Callable[[Hashable], str] = repr
                   ) -> tuple[list[int], list[str]]:
    """The rows to keep and the problems of clips listed more than once: in two splits (train/test leakage) or
    with two labels, every row of the clip is a problem (neither can be trusted); listed twice alike, the first
    row is kept and the repeats are problems. ``name`` words a clip in the messages."""
    rows: dict[Hashable, list[int]] = {}
    for i, item in enumerate(listings):
        rows.setdefault(item.clip, []).append(i)
    keep, problems = [], []
    for clip, where in rows.items():
        first, *others = [listings[i] for i in where]
        also = ", ".join(f"{Path(o.where).name} ({o.split}, label {o.label})" for o in others)
        if any(o.split != first.split for o in others):
            problems.append(f"{first.where}: clip {name(clip)} ({first.split}, label {first.label}) is listed in "
                            f"more than one split, also at {also} (train/test leakage)")
        elif any(repr(o.label) != repr(first.label) for o in others):
            problems.append(f"{first.where}: clip {name(clip)} (label {first.label}) is listed with another label, "
                            f"also at {also}")
        else:
            keep.append(where[0])
            problems += [f"{o.where}: clip {name(clip)} is listed again (first at {Path(first.where).name})"
                         for o in others]
    return sorted(keep), problems


def report_bad(problems: list[str], skip_bad: bool, unit: str = "clips") -> None:
    """Raise on the first problem (naming how many more), or with ``skip_bad`` print each as skipped."""
    if not problems:
        return
    if not skip_bad:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LayoutError(problems[0] + more + f"; pass --skip-bad to skip bad {unit}")
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)


def decode_all(items: Iterable[Item], decode: Callable[[Item], Value], skip_bad: bool, where: object,
               errors: tuple[type[Exception], ...] = (MediaError,),
               describe: Callable[[Item, Exception], str] = lambda item, err: str(err),
               unit: str = "clips") -> list[tuple[Item, Value]]:
    """``(item, decode(item))`` for every item that decodes; an item whose decode raises one of ``errors`` is a
    problem for ``report_bad`` (``describe`` words it). Raises LayoutError, naming ``where`` (the dataset root),
    when no item is left."""
    from ..progress import progress_bar

    items = list(items)
    decoded, problems = [], []
    with progress_bar(len(items), f"prepare {where}", unit=unit.rstrip("s") or "item") as bar:
        for item in items:
            try:
                decoded.append((item, decode(item)))
            except errors as err:
                problems.append(describe(item, err))
            bar.update(1)
    report_bad(problems, skip_bad, unit)
    if not decoded:
        raise LayoutError(f"{where}: no usable {unit}")
    return decoded
