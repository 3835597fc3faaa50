"""Kernel netem as data: the ``tc`` argv that gives one direction of a link profile, for every testbed that shapes.

The emulated testbed puts it on both ends of each access link; the SSH
testbed on each host's interface (egress) and on an ifb device (ingress).
One function serves both, so a profile means the same on either: random
loss, a rate limiter with a ``queue_pkts`` droptail queue, then delay with
jitter, in FIFO order unless ``preserve_order`` is false.  FIFO order under
jitter comes from always setting a rate (netem orders packets behind the
previous one only in rate mode), and ``limit`` covers the queue plus the
packets in flight in the delay line.
"""

from __future__ import annotations

import math

from testbed.interface import TestbedError
from testbed.profiles import LinkProfile

FRAME_BYTES = 1514
LINE_RATE_BIT = 10_000_000_000


def _us(ms: float) -> str:
    return f"{round(ms * 1000)}us"


def netem_limit(direction: LinkProfile) -> int:
    """netem's ``limit`` counts every packet it holds, delayed or queued: queue plus what the delay holds."""
    rate = LINE_RATE_BIT if direction.rate_mbit is None else direction.rate_mbit * 1e6
    in_flight = rate * (direction.delay_ms + 3 * direction.jitter_ms) / 1000 / (8 * FRAME_BYTES)
    return direction.queue_pkts + math.ceil(in_flight)


def netem_argv(dev: str, direction: LinkProfile, *, netns: str | None = None, preserve_order: bool = True,
               parent: str = "root", handle: str | None = None) -> list[str]:
    """``tc qdisc replace ... netem`` for one direction of a profile (at ``parent``: the root, or a class)."""
    if direction.trace:
        raise TestbedError(f"profile {direction.name!r} is trace-driven ({direction.trace}); netem cannot replay a "
                           "delivery trace: use the emu testbed with the userspace shaper (backend userspace)")
    where = ["root"] if parent == "root" else ["parent", parent]
    argv = ["tc", *(["-n", netns] if netns else []), "qdisc", "replace", "dev", dev, *where,
            *(["handle", handle] if handle else []), "netem",
            "limit", str(netem_limit(direction)), "delay", _us(direction.delay_ms)]
    if direction.jitter_ms:
        argv += [_us(direction.jitter_ms), "distribution", direction.distribution]
    if direction.loss_pct:
        argv += ["loss", "random", f"{direction.loss_pct:.6g}%"]
    if direction.rate_mbit is not None:
        argv += ["rate", f"{round(direction.rate_mbit * 1e6)}bit"]
    elif preserve_order and direction.jitter_ms:
        argv += ["rate", f"{LINE_RATE_BIT}bit"]
    return argv
