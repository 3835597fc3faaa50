"""What a remote testbed has set up, kept on the control machine so ``down`` (even from another process) undoes it.

Remote testbeds (Colosseum, Raspberry Pis) cannot be listed like namespaces,
so every action is recorded *before* it is taken: an RF scenario about to be
started, a radio about to be launched, a route about to be added, a service's
pid.  ``down`` reads the record and undoes exactly those things.  A
transcript (``commands.jsonl``) keeps every remote command with its host,
time and exit code, for the run's provenance and for the tests.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

from experiment.local import state_root


class StateFile:
    """A JSON document in ``$JARVIS_STATE/<kind>/<prefix>/state.json``, saved atomically on every change."""

    def __init__(self, kind: str, prefix: str) -> None:
        self.root = state_root() / kind / prefix
        self.path = self.root / "state.json"
        self.transcript = self.root / "commands.jsonl"
        self._lock = threading.RLock()

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        with self._lock:
            return json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, data: dict) -> None:
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, self.path)

    def update(self, change: Callable[[dict], object]) -> dict:
        """Apply ``change(data)`` to the stored document under the lock and save it; return the result."""
        with self._lock:
            data = self.load()
            change(data)
            self.save(data)
            return data

    def record(self, host: str, command: str, exit_code: int) -> None:
        """Append one remote command to the transcript."""
        line = json.dumps({"wall_ns": time.time_ns(), "host": host, "command": command, "exit": exit_code})
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.transcript.open("a") as out:
                out.write(line + "\n")

    def remove(self) -> None:
        """Forget the testbed: the state file goes, the transcript of what was done stays."""
        with self._lock:
            self.path.unlink(missing_ok=True)
