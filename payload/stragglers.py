"""Stragglers are not crashes: telling a node that answers but is persistently slow from one that has failed.

Each layer node measures, for every single-position (decode) step it serves, the time from the frame's arrival
to its output leaving (queueing plus compute), and sends the samples since its last heartbeat in the heartbeat.
The user node keeps, per node, a baseline of its recent normal samples; a node whose samples exceed
``Timing.slow_factor`` x the baseline's p99 for ``Timing.slow_steps`` consecutive steps is *slow* (needing at
least ``MIN_BASELINE`` samples first, so a node is never called slow against nothing).  The p99 leaves out the
baseline's ``HICCUPS`` largest samples: over a short baseline the p99 is its maximum, so one scheduling hiccup
or GC pause in the steps before a slowdown would set the threshold alone (measured: one 35 ms step among 14 ms
ones put the threshold above a 5x straggler's steps).  Samples over the threshold never enter the baseline,
so a straggler cannot teach the detector that slow is normal.

What then happens is the deployment's ``on_slow``: ``wait`` (the default: keep using it, the event is logged),
``skip`` (route around it, its layers skipped as for a failed node under skip), ``replica`` (its layers go to a
live replica when one holds them; otherwise keep waiting on it).  A slow node routed around is tried again after
``Timing.slow_holdoff_s`` (nothing is measured while it serves nothing), and called slow again if it still is.
"""

from __future__ import annotations

import collections
import enum
import json
from dataclasses import dataclass

MIN_BASELINE = 8  # samples of a node before it can be called slow
BASELINE_WINDOW = 64  # recent normal samples the p99 is taken over
HICCUPS = 2  # largest baseline samples the p99 leaves out (isolated stalls, not the node's speed)
MAX_HEARTBEAT_SAMPLES = 512  # step times one heartbeat may carry (more are a node's backlog: the rest are dropped)


class OnSlow(str, enum.Enum):
    WAIT = "wait"
    SKIP = "skip"
    REPLICA = "replica"


def heartbeat_steps(payload: bytes) -> list[int]:
    """The decode step times (ns) a heartbeat carries; a malformed list is none (the heartbeat still counts)."""
    try:
        steps = json.loads(payload).get("steps_ns", [])
    except (ValueError, AttributeError):
        return []
    if not isinstance(steps, list):
        return []
    return [s for s in steps[:MAX_HEARTBEAT_SAMPLES]
            if isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 3_600_000_000_000]


@dataclass(frozen=True)
class SlowRun:
    """The consecutive slow steps that made a node slow, and the threshold the last of them crossed (what the
    ``node_slow`` event reports: the threshold moves with every normal step after them)."""

    steps_ns: tuple[int, ...]
    threshold_ns: int


class SlowDetector:
    """Per-node step latencies in, "this node is slow now" out (pure: samples come from heartbeats)."""

    def __init__(self, factor: float, steps: int):
        self.factor = factor
        self.steps = steps
        self._baseline: dict[int, collections.deque[int]] = {}
        self._run: dict[int, list[int]] = {}  # the current run of slow steps (its first ``steps``) per node

    def threshold_ns(self, node: int) -> float | None:
        """``factor`` x the p99 of ``node``'s baseline less its ``HICCUPS`` largest samples (None until it has
        ``MIN_BASELINE`` samples)."""
        baseline = self._baseline.get(node)
        if baseline is None or len(baseline) < MIN_BASELINE:
            return None
        ordered = sorted(baseline)
        return self.factor * ordered[min(len(ordered) - 1 - HICCUPS, int(0.99 * len(ordered)))]

    def observe(self, node: int, samples_ns: list[int]) -> SlowRun | None:
        """Take ``node``'s new samples in order; the run of slow steps when they make it slow (once per run)."""
        became_slow = None
        for sample in samples_ns:
            threshold = self.threshold_ns(node)
            if threshold is not None and sample > threshold:
                run = self._run.setdefault(node, [])
                if len(run) < self.steps:  # the step that completes the run makes the node slow; later ones extend it
                    run.append(int(sample))
                    if len(run) == self.steps and became_slow is None:
                        became_slow = SlowRun(tuple(run), int(threshold))
                continue
            self.forget_run(node)
            self._baseline.setdefault(node, collections.deque(maxlen=BASELINE_WINDOW)).append(int(sample))
        return became_slow

    def forget_run(self, node: int) -> None:
        """Start counting consecutive slow steps afresh (the node was routed around, then tried again)."""
        self._run.pop(node, None)
