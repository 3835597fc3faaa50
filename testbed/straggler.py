"""A straggler by duty cycle: a node alive and answering, but ``factor`` times slower.

Every ``SLOW_PERIOD_S`` the node's processes run for ``1/factor`` of the period and are stopped (SIGSTOP) for
the rest, then continued (SIGCONT), by a thread of the controlling process; CPU-bound work then takes about
``factor`` times as long, and no single stop (4 ms at 5x) comes near a heartbeat or ack deadline, so the node
is slow, never silent.  The period is short enough that one decode step (a few to tens of milliseconds of
compute) spans several cycles and slows by about ``factor`` however it falls; a Python thread keeps a 1 ms run
window to a tenth of a millisecond.  Stopping the
thread (``heal``, or the run's end) leaves the processes running.  For testbeds whose nodes this machine can
signal (local, emu); a controller that dies mid-cycle may leave a node stopped until ``fab down``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

SLOW_PERIOD_S = 0.005


class DutyCycle:
    """Stop and continue a node's processes (``send(sig)`` signals all of them) so it runs 1/``factor`` of the time."""

    def __init__(self, send: Callable[[signal.Signals], None], factor: float, period_s: float = SLOW_PERIOD_S):
        if factor <= 1:
            raise ValueError(f"a slow factor must be above 1, got {factor}")
        self.send = send
        self.run_s = period_s / factor
        self.stop_s = period_s - self.run_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jarvis-straggler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._done.is_set():
                self.send(signal.SIGSTOP)
                if self._done.wait(self.stop_s):
                    break
                self.send(signal.SIGCONT)
                time.sleep(self.run_s)
        finally:
            self.send(signal.SIGCONT)

    def stop(self) -> None:
        """End the cycle with the processes running."""
        self._done.set()
        self._thread.join(timeout=5)


class Stragglers:
    """The slowdowns a testbed has running, one per node name (a new one for a node replaces its old one)."""

    def __init__(self) -> None:
        self._cycles: dict[str, DutyCycle] = {}
        self._lock = threading.Lock()

    def start(self, name: str, send: Callable[[signal.Signals], None], factor: float) -> None:
        cycle = DutyCycle(send, factor)
        with self._lock:
            old, self._cycles[name] = self._cycles.get(name), cycle
        if old is not None:
            old.stop()
        cycle.start()

    def stop(self, names: list[str]) -> list[str]:
        """End the slowdowns of ``names`` that are running; return those names."""
        with self._lock:
            cycles = {n: self._cycles.pop(n) for n in names if n in self._cycles}
        for cycle in cycles.values():
            cycle.stop()
        return list(cycles)
