"""Which layer sets to remove: all singles, all pairs, or a user's list.

A skip set is a sorted tuple of distinct 0-based decoder-layer indices (the
indices JARVIS uses everywhere); ``()`` is the full model.  Sets files hold one
set per line, layers separated by commas, spaces or ``+``; ``none`` is the full
model; ``#`` starts a comment.  The original study numbered layers from 1, so
docs translate where they compare.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

from quality.errors import StudyError

SkipSet = tuple[int, ...]

FULL: SkipSet = ()


class SetsFileError(StudyError):
    """A sets file is missing or malformed; the message names the file and line."""


def label(skip: SkipSet) -> str:
    """Human- and CSV-friendly name of a skip set: ``none``, ``7`` or ``3+7``."""
    return "+".join(str(i) for i in skip) if skip else "none"


def single_skips(num_layers: int) -> list[SkipSet]:
    """Every one-layer skip set."""
    return [(i,) for i in range(num_layers)]


def double_skips(num_layers: int) -> list[SkipSet]:
    """Every two-layer skip set, i < j (n(n-1)/2 of them: 153 for 18 layers)."""
    return list(combinations(range(num_layers), 2))


def read_sets_file(path: Path) -> list[SkipSet]:
    """Parse a sets file; range checks need the model and happen in :func:`check_range`."""
    path = Path(path)
    if not path.is_file():
        raise SetsFileError(f"sets file {path} does not exist")
    sets: list[SkipSet] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower() == "none":
            sets.append(FULL)
            continue
        fields = [f for f in re.split(r"[\s,+]+", line) if f]
        if not all(re.fullmatch(r"\d+", f) for f in fields):
            raise SetsFileError(f"{path}:{number}: expected 0-based layer numbers separated by commas, got {raw!r}")
        layers = [int(f) for f in fields]
        if len(set(layers)) != len(layers):
            raise SetsFileError(f"{path}:{number}: layer listed twice in {raw!r}")
        sets.append(tuple(sorted(layers)))
    if not sets:
        raise SetsFileError(f"sets file {path} lists no skip sets")
    return sets


def check_range(sets: list[SkipSet], num_layers: int, *, source: str) -> None:
    """Refuse layer numbers the model does not have, naming where they came from."""
    for skip in sets:
        bad = [i for i in skip if i >= num_layers]
        if bad:
            raise SetsFileError(
                f"{source}: skip set {label(skip)} names layer {bad[0]}, but the model has layers 0..{num_layers - 1}"
            )


def choose_sets(num_layers: int, *, single: bool, double: bool, extra: list[SkipSet]) -> list[SkipSet]:
    """The full model first, then the requested sets, each once, in a stable order.

    Double skips bring the single skips with them: the interaction map
    (Δij − Δi − Δj) cannot be drawn without them, and they cost 18 runs
    against 153.  With nothing requested, single skips are the default study.
    """
    if double:
        single = True
    if not (single or extra):
        single = True
    chosen: list[SkipSet] = [FULL]
    if single:
        chosen += single_skips(num_layers)
    if double:
        chosen += double_skips(num_layers)
    chosen += extra
    return list(dict.fromkeys(chosen))
