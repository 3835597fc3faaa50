"""How far each host's wall clock is from the control host's, measured over the SSH connection itself.

One-way hop times compare two hosts' wall clocks.  Before and after a run
the testbed asks each host for its time a few times over one SSH channel
(a tiny loop in the host's Python, answering each line it reads with
``time.time_ns()``) and keeps the exchange with the shortest round trip,
NTP-style: ``offset = t_host - (t_sent + t_received) / 2``, true within
plus or minus half that round trip whatever the path asymmetry.  The
readings go into testbed.json; analysis also estimates offsets from the
hops' own timestamps (:mod:`analysis.timing`), and the two can be compared.
"""

from __future__ import annotations

import shlex
import time

from testbed.interface import TestbedError
from testbed.ssh import SshShell

ROUNDS = 8
ECHO_TIME = "import sys, time; [print(time.time_ns(), flush=True) for _ in sys.stdin]"


def probe_command(python: str) -> str:
    return f"{shlex.quote(python)} -u -c {shlex.quote(ECHO_TIME)}"


def measure_offset(shell: SshShell, python: str, rounds: int = ROUNDS, timeout: float = 10.0) -> dict:
    """clock(host) - clock(control) in ms, with its uncertainty (half the best round trip) and that round trip."""
    channel = shell.channel(probe_command(python), timeout=timeout)
    try:
        reader = channel.makefile("r")
        best: tuple[int, int] | None = None  # (rtt ns, offset ns)
        for _ in range(rounds):
            sent = time.time_ns()
            channel.sendall(b"\n")
            line = reader.readline()
            received = time.time_ns()
            if not line.strip().isdigit():
                raise TestbedError(f"{shell.name}: the clock probe answered {line.strip()!r}")
            sample = (received - sent, int(line) - (sent + received) // 2)
            best = sample if best is None or sample[0] < best[0] else best
    except OSError as exc:
        raise TestbedError(f"{shell.name}: the clock probe failed: {exc}") from None
    finally:
        channel.close()
    assert best is not None
    return {"offset_ms": best[1] / 1e6, "uncertainty_ms": best[0] / 2e6, "rtt_ms": best[0] / 1e6, "rounds": rounds}
