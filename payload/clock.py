"""The wall clock a node stamps its events and frames with: the host's, plus the skew a ``clock_skew`` fault set.

Hosts of the emulated and local testbeds share one kernel clock, so a node whose clock runs off by some amount
is emulated here, where every wall-clock stamp the node logs is taken.  The testbed writes the offset in
milliseconds to ``clock_skew_ms`` in the node's work directory (its working directory) and sends SIGUSR1; the
node reads it at once.  Monotonic stamps are untouched, as a real skewed wall clock leaves them.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

SKEW_FILE = "clock_skew_ms"
_offset_ns = 0


def wall_ns() -> int:
    """Wall-clock nanoseconds as this node's (possibly skewed) clock reads them."""
    return time.time_ns() + _offset_ns


def offset_ns() -> int:
    return _offset_ns


def read_skew(directory: Path | None = None) -> None:
    """Take the offset from ``SKEW_FILE`` (absent or unreadable: no skew)."""
    global _offset_ns
    try:
        _offset_ns = round(float((directory or Path.cwd()).joinpath(SKEW_FILE).read_text()) * 1_000_000)
    except (OSError, ValueError):
        _offset_ns = 0


def follow_skew() -> None:
    """Read the skew now and on every SIGUSR1 (installed first thing: SIGUSR1's default would end the node)."""
    read_skew()
    signal.signal(signal.SIGUSR1, lambda *_: read_skew())


def write_skew(directory: Path, offset_ms: float) -> None:
    """What a testbed does before it signals the node: the offset, written atomically."""
    tmp = directory / f".{SKEW_FILE}.tmp"
    tmp.write_text(f"{offset_ms:g}\n")
    tmp.replace(directory / SKEW_FILE)
