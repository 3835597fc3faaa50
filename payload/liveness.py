"""What the end-user node knows of its layer nodes' health: who is out, heartbeats, silence limits.

Layer nodes report a failed successor (refused or reset connections at once,
silent peers by the ack deadline); heartbeats catch a node that stops after
acking.  This module keeps that knowledge and its rules apart from session
stepping: a node is marked out once (logged as ``node_out``), a node marked
out that is heard from again after ``rejoin_after_s`` rejoins (``rejoin``),
and a node unheard for longer than its silence limit is marked out silent.
Sessions learn of changes through the two callbacks.  A node that answers but
is persistently slow is a straggler, not a failure (payload/stragglers.py):
it is logged ``node_slow``, and routed around (``slow``) only if ``on_slow``
says so, until it is tried again after ``slow_holdoff_s``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from payload.config import Timing
from payload.events import EventLog
from payload.routing import USER_NODE, Placement
from payload.stragglers import OnSlow, SlowDetector
from payload.transport import AdaptiveDeadline, FailureKind, PeerFailed

HEARTBEAT_MULTIPLIER = 4.0


class Liveness:
    """Failure knowledge of one user node.

    ``on_out(failure)`` is called for every failure heard (a node newly or
    already out, or one that rejected a frame), so sessions can end the
    attempts it touches; ``on_back(peer)`` when a node rejoins.
    ``in_flight_bytes()`` gives the largest frame in flight, which stretches
    the silence limit (see :meth:`silence_limit_s`).
    """

    def __init__(self, timing: Timing, placement: Placement, log: EventLog, *,
                 on_out: Callable[[PeerFailed], None], on_back: Callable[[int], None],
                 in_flight_bytes: Callable[[], int], on_tick: Callable[[], None] = lambda: None,
                 on_slow: OnSlow = OnSlow.WAIT):
        self.timing = timing
        self.placement = placement
        self.log = log
        self.on_out = on_out
        self.on_back = on_back
        self.in_flight_bytes = in_flight_bytes
        self.on_tick = on_tick  # called every heartbeat interval (the user node flushes its refusal counts)
        self.dead: dict[int, int] = {}  # node -> monotonic ns when declared failed
        self.last_heartbeat: dict[int, int] = {}
        self.heartbeat_gaps: dict[int, AdaptiveDeadline] = {}
        self.on_slow = on_slow
        self.stragglers = SlowDetector(timing.slow_factor, timing.slow_steps)
        self.slow: dict[int, int] = {}  # straggler routed around -> monotonic ns since when

    def mark_failed(self, peer: int, kind: FailureKind, reason: str, reporter: int) -> None:
        """A failure of ``peer`` was seen (by ``reporter``); a rejection only cools its caches."""
        if peer == USER_NODE:
            return
        if kind != FailureKind.REJECTED and peer not in self.dead:
            self.dead[peer] = time.monotonic_ns()
            critical = peer in self.placement.slices and self.placement.critical(peer)
            first, end = self.placement.slices.get(peer, (0, 0))
            self.log.log("node_out", peer=peer, kind=kind.value, reason=reason, reporter=reporter, critical=critical,
                         layers=list(range(first, end)))
            print(f"[user] node {peer} out ({kind.value}: {reason}); layers {first}-{end - 1} "
                  f"{'CRITICAL ' if critical else ''}routed around (skipped, bridged or served by a replica)",
                  file=sys.stderr, flush=True)
        self.on_out(PeerFailed(peer, kind, reason, reporter=reporter))

    def heartbeat(self, peer: int, steps_ns: list[int] = ()) -> None:
        """A heartbeat from ``peer`` (with its decode step times since the last): update its gap statistics, let it
        rejoin if it was out long enough, and tell whether it has become a straggler."""
        now = time.monotonic_ns()
        self._straggler(peer, list(steps_ns), now)
        if peer in self.last_heartbeat:
            gaps = self.heartbeat_gaps.setdefault(
                peer, AdaptiveDeadline(self.timing.heartbeat_floor_ms / 1000, HEARTBEAT_MULTIPLIER))
            gaps.observe((now - self.last_heartbeat[peer]) / 1e9)
        self.last_heartbeat[peer] = now
        since = self.dead.get(peer)
        if since is not None and (now - since) / 1e9 >= self.timing.rejoin_after_s:
            del self.dead[peer]
            self.log.log("rejoin", peer=peer)
            print(f"[user] node {peer} is back: it rejoins with a cache rebuilt by replay", file=sys.stderr, flush=True)
            self.on_back(peer)

    def _straggler(self, peer: int, steps_ns: list[int], now: int) -> None:
        since = self.slow.get(peer)
        if since is not None and (now - since) / 1e9 >= self.timing.slow_holdoff_s:
            del self.slow[peer]
            self.stragglers.forget_run(peer)
            self.log.log("slow_retry", peer=peer)
        run = None if peer in self.dead else self.stragglers.observe(peer, steps_ns)
        if run is None:
            return
        self.log.log("node_slow", peer=peer, threshold_ns=run.threshold_ns, steps_ns=list(run.steps_ns),
                     action=self.on_slow.value)
        print(f"[user] node {peer} is slow (steps {', '.join(f'{s / 1e6:.0f}' for s in run.steps_ns)} ms against "
              f"{run.threshold_ns / 1e6:.0f} ms): {'kept' if self.on_slow == OnSlow.WAIT else 'routed around'} "
              f"(on_slow: {self.on_slow.value})", file=sys.stderr, flush=True)
        if self.on_slow != OnSlow.WAIT:
            self.slow[peer] = now

    def silence_limit_s(self, peer: int) -> float:
        """How long ``peer`` may go unheard before it is declared failed.

        ``max(floor, 4 x p99 heartbeat gap)``, plus the largest frame in flight
        at ``Timing.slowest_link_mbps`` (as for ack deadlines): a node sending a
        long prompt's hidden states over a cellular uplink queues its heartbeats
        behind them for seconds, and is busy, not silent.
        """
        gaps = self.heartbeat_gaps.get(peer)
        limit_s = gaps.value() if gaps else self.timing.heartbeat_floor_ms / 1000
        return limit_s + self.timing.wire_time_s(self.in_flight_bytes())

    async def watch(self) -> None:
        """Declare a node failed when its heartbeats stop (catches nodes that stop after acking)."""
        interval = self.timing.heartbeat_ms / 1000
        last_tick = time.monotonic_ns()
        while True:
            await asyncio.sleep(interval)
            self.on_tick()
            now = time.monotonic_ns()
            late_ns = now - last_tick - int(interval * 1e9)
            last_tick = now
            if late_ns > interval * 1e9:
                # This loop itself was held up: silence it could not hear is not the nodes' fault.
                for peer in self.last_heartbeat:
                    self.last_heartbeat[peer] += late_ns
                continue
            for peer, last in list(self.last_heartbeat.items()):
                if peer not in self.dead and (now - last) / 1e9 > self.silence_limit_s(peer):
                    self.mark_failed(peer, FailureKind.SILENT, f"no heartbeat for {(now - last) / 1e6:.0f} ms",
                                     USER_NODE)

    async def wait_for(self, wanted: set[int], timeout_s: float) -> list[int]:
        """Wait until every node in ``wanted`` has sent a heartbeat; return those still missing at the timeout."""
        deadline = time.monotonic() + timeout_s
        while not wanted <= set(self.last_heartbeat):
            if time.monotonic() > deadline:
                return sorted(wanted - set(self.last_heartbeat))
            await asyncio.sleep(0.05)
        return []
