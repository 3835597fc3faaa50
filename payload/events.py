"""Append-only JSON-lines event log, one ``write(2)`` per event.

Each event is written with a single ``os.write`` on an ``O_APPEND`` descriptor,
so once ``log`` returns the line is in the kernel's page cache: a SIGKILL of the
node a microsecond later cannot lose it (no user-space buffer to flush).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class EventLog:
    """Per-node event log; every event carries wall-clock and monotonic nanoseconds."""

    def __init__(self, path: Path | str, node: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.node = node
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(self, ev: str, **fields) -> dict:
        record = {"ev": ev, "node": self.node, "wall_ns": time.time_ns(), "mono_ns": time.monotonic_ns(), **fields}
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(path: Path | str) -> list[dict]:
    """Read an event log, skipping a torn last line (a node killed mid-write)."""
    events = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
