"""Mahimahi delivery traces: a link whose capacity varies over time as measured cellular links do.

A trace file has one integer per line, a time in milliseconds since the trace began, each a *delivery
opportunity*: at that instant the link can deliver ``OPPORTUNITY_BYTES`` (one MTU-sized IP packet; several
small packets may share one, a packet not fitting waits for the next).  Equal times are several opportunities
in the same millisecond; the trace repeats with its last time as the period.  This is the format of
Mahimahi's ``mm-link`` (Netravali et al., USENIX ATC 2015), whose recorded cellular traces, and CellReplay's
5G traces (Sentosa et al., NSDI 2025), drop in as they are (neither is shipped here).  Opportunities that
pass with nothing queued are lost, as in Mahimahi.

A profile names a trace per direction (``uplink: {trace: FILE}``); ``FILE`` is a path (absolute, or relative
to the working directory) or the name of a shipped trace in ``testbed/traces/`` (made by
``scripts/make-traces.py``, seeded).  The userspace shaper serves the direction by the trace instead of
``rate_mbit``; delay, jitter and loss apply as before.  Frames are charged their IP bytes (the Ethernet header
is not on a cellular link), so a full-size frame takes one opportunity, as in Mahimahi.
"""

from __future__ import annotations

import bisect
import math
from functools import lru_cache
from pathlib import Path

from payload.errors import JarvisError

SHIPPED_TRACES = Path(__file__).with_name("traces")
OPPORTUNITY_BYTES = 1504  # Mahimahi's PACKET_SIZE: an MTU of 1500 plus its 4-byte tunnel header
ETHERNET_HEADER = 14
MAX_LINES = 10_000_000


class TraceError(JarvisError, ValueError):
    """A trace file is missing, unreadable or not in Mahimahi's format; the message names the line."""


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED_TRACES.glob("*.trace"))


def resolve_trace(spec: str) -> Path:
    """The trace file ``spec`` names: an existing path, else a shipped trace of that name."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    named = SHIPPED_TRACES / f"{spec}.trace"
    if "/" not in spec and named.is_file():
        return named
    raise TraceError(f"trace {spec!r} is neither a file nor a shipped trace (shipped: {', '.join(shipped())})")


@lru_cache(maxsize=64)
def read_trace(path: str) -> tuple[int, ...]:
    """The opportunity times (ms) of a trace file, checked: integers, never decreasing, ending after 0."""
    try:
        lines = Path(path).read_text().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from None
    times: list[int] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit():
            raise TraceError(f"trace {path}, line {number}: {text[:40]!r} is not a whole number of milliseconds")
        value = int(text)
        if times and value < times[-1]:
            raise TraceError(f"trace {path}, line {number}: {value} ms comes before the line above ({times[-1]})")
        times.append(value)
        if len(times) > MAX_LINES:
            raise TraceError(f"trace {path} has over {MAX_LINES:,} lines")
    if not times or times[-1] <= 0:
        raise TraceError(f"trace {path} holds no opportunity after 0 ms: its period would be zero")
    return tuple(times)


class DeliverySchedule:
    """Serves frames by a trace's opportunities from ``epoch`` (seconds, the caller's clock); pure."""

    def __init__(self, times_ms: tuple[int, ...], epoch: float):
        self.times = [t / 1000 for t in times_ms]
        self.period = times_ms[-1] / 1000
        self.epoch = epoch
        self._index = 0  # opportunities counted from the epoch, over every loop
        self._left = OPPORTUNITY_BYTES

    def time_of(self, index: int) -> float:
        """When opportunity ``index`` (counted from the epoch over every loop) comes."""
        loop, i = divmod(index, len(self.times))
        return self.epoch + loop * self.period + self.times[i]

    def first_at_or_after(self, start: float) -> int:
        """Index of the first opportunity at or after ``start``."""
        loop = max(0, math.floor((start - self.epoch) / self.period))
        i = bisect.bisect_left(self.times, start - self.epoch - loop * self.period)
        return loop * len(self.times) + i

    def departure(self, start: float, frame_bytes: int) -> float:
        """When a frame whose turn comes at ``start`` has been delivered (its last byte's opportunity)."""
        if self.time_of(self._index) < start:
            self._index, self._left = self.first_at_or_after(start), OPPORTUNITY_BYTES
        remaining = max(1, frame_bytes - ETHERNET_HEADER)
        while remaining > self._left:
            remaining -= self._left
            self._index, self._left = self._index + 1, OPPORTUNITY_BYTES
        self._left -= remaining
        return self.time_of(self._index)


def mean_rate_mbit(times_ms: tuple[int, ...], payload_bytes: int = OPPORTUNITY_BYTES) -> float:
    """The trace's delivery rate over a period, counting ``payload_bytes`` per opportunity."""
    return len(times_ms) * payload_bytes * 8 / (times_ms[-1] / 1000) / 1e6


def rate_series_mbit(times_ms: tuple[int, ...], start_s: float, seconds: int, payload_bytes: int) -> list[float]:
    """Delivery rate in each second [start + k, start + k + 1) of the looped trace (``start_s`` from its epoch)."""
    schedule = DeliverySchedule(times_ms, 0.0)
    begin = schedule.first_at_or_after(start_s)
    counts = [0] * seconds
    index = begin
    while (t := schedule.time_of(index)) < start_s + seconds:
        counts[min(seconds - 1, int(t - start_s))] += 1
        index += 1
    return [c * payload_bytes * 8 / 1e6 for c in counts]
