"""Append-only JSON-lines event log, one ``write(2)`` per event, checked against the run-data schema.

Each event is written with a single ``os.write`` on an ``O_APPEND`` descriptor,
so once ``log`` returns the line is in the kernel's page cache: a SIGKILL of the
node a microsecond later cannot lose it (no user-space buffer to flush).  Every
event is checked against :mod:`payload.schema` before it is written, so what a
node logs is what collection and analysis expect to read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from payload.clock import wall_ns
from payload.schema import check_event, emitter_of

Clock = Callable[[], tuple[int, int]]


def system_clock() -> tuple[int, int]:
    """(wall ns, monotonic ns) now."""
    return wall_ns(), time.monotonic_ns()


class EventLog:
    """Per-node event log; every event carries wall-clock and monotonic nanoseconds.

    ``clock`` gives those stamps: the system clocks on a node, simulated ones
    when :mod:`experiment.synth` writes a run whose answers are known.
    """

    def __init__(self, path: Path | str, node: int, *, clock: Clock = system_clock):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.node = node
        self.emitter = emitter_of(node)
        self.clock = clock
        self.failed: str | None = None  # why the log could not be written, once it could not
        self.on_failure: Callable[[str], None] | None = None  # told once, when that happens
        self._encode = json.JSONEncoder(separators=(",", ":")).encode
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(self, ev: str, **fields) -> dict:
        """Write one event of kind ``ev``; an undeclared kind or field is a bug (EventSchemaError).

        A write that fails (a full disk, a file size limit) is not retried or
        looped over: the log records why in ``failed`` and tells ``on_failure``
        once; what was written before stays.
        """
        check_event(ev, fields, self.emitter)
        wall, mono = self.clock()
        record = {"ev": ev, "node": self.node, "wall_ns": wall, "mono_ns": mono, **fields}
        if self.failed is None:
            try:
                os.write(self._fd, (self._encode(record) + "\n").encode())
            except OSError as exc:
                self.failed = f"cannot write its event log {self.path}: {exc.strerror or exc}"
                if self.on_failure is not None:
                    self.on_failure(self.failed)
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def parse_event_line(line: str) -> dict | None:
    """One log line as an event, or None for a blank or torn one (a node killed mid-write)."""
    line = line.strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def read_events(path: Path | str) -> list[dict]:
    """Read an event log, skipping a torn last line (a node killed mid-write)."""
    with open(path, encoding="utf-8") as handle:
        return [event for line in handle if (event := parse_event_line(line)) is not None]
