"""The one state store every testbed keeps on the control machine: a JSON document saved atomically.

A testbed records what it creates *before* creating it (namespaces, an RF
scenario, a radio, a route, a service's pid), so ``down`` (even from another
process, even after a crash) undoes exactly that.  The document is written
to a temporary file and renamed into place, so a reader never sees half of
it, and with mode 0600, because it may name secrets' locations and the
deployment key.  Remote testbeds also keep a transcript (``commands.jsonl``
beside the document) of every remote command with its host, time and exit
code, for the run's provenance and for the tests.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from testbed.interface import TestbedError

PRIVATE = 0o600


def state_root() -> Path:
    """Where testbeds keep their state (override with ``JARVIS_STATE``); each kind and prefix has a directory."""
    return Path(os.environ.get("JARVIS_STATE", "/tmp/jarvis-state"))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by this user only (it may hold a key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StateStore:
    """A JSON document at ``path``; ``load`` gives None when there is none (the testbed is not up)."""

    def __init__(self, path: Path, *, what: str = "testbed state") -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.transcript = self.root / "commands.jsonl"
        self.what = what
        self._lock = threading.RLock()

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict | None:
        with self._lock:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                return None
            except json.JSONDecodeError as exc:
                raise TestbedError(f"{self.what} {self.path} is corrupt ({exc}); remove what it lists by hand, "
                                   "then the file") from None
            if not isinstance(data, dict):
                raise TestbedError(f"{self.what} {self.path} is not a JSON object; remove it")
            return data

    def save(self, data: dict) -> None:
        with self._lock:
            write_private(self.path, json.dumps(data, indent=2))

    def update(self, change: Callable[[dict], object]) -> dict:
        """Apply ``change(data)`` to the stored document under the lock and save it; return the document."""
        with self._lock:
            data = self.load() or {}
            change(data)
            self.save(data)
            return data

    def record(self, host: str, command: str, exit_code: int) -> None:
        """Append one remote command to the transcript."""
        line = json.dumps({"wall_ns": time.time_ns(), "host": host, "command": command, "exit": exit_code})
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.transcript.open("a", encoding="utf-8") as out:
                out.write(line + "\n")

    def remove(self) -> None:
        """Forget the testbed: the document goes, the transcript of what was done stays."""
        with self._lock:
            self.path.unlink(missing_ok=True)
