"""Seeded random fault schedules (a scenario's ``chaos``), drawn the way Jepsen's nemesis schedules are.

Fault starts form a Poisson process of ``rate`` per second over the first
``duration`` seconds of the first session (prompt 0, repeat 0).  Each fault
hits one node drawn from ``nodes`` with a kind drawn from ``kinds``, and lasts
half the gap to the next start, so exactly one fault is active at a time and
a quiet spell follows each; the last is cut short at ``duration``, and a
draw that would last under ``MIN_HOLD_S`` is passed over.  Every
fault but a kill is healed by its own undo (resume, link_up, heal), and the
fault runner heals whatever is still due when the run ends early, so a run
always ends with every node's process and link as they began.  A kill is for
good: later draws skip that node, and no kill takes the last live layer node.

The schedule depends only on the options and the node count (its own
``random.Random``, times rounded to the millisecond), so the same seed gives
the same schedule; each drawn fault is an ordinary :class:`FaultSpec`,
validated like a hand-written one, and ends up in faults.csv when it fires.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from experiment.scenario import ChaosOptions, FaultSpec

FLAP_CYCLES = 3  # a drawn flap cuts its link this many times during its hold, down half of each period
MIN_HOLD_S = 0.05  # a draw whose fault would be shorter is passed over: it could not take effect before its heal


def draw_chaos(options: "ChaosOptions", layer_nodes: int) -> list["FaultSpec"]:
    """The fault schedule ``options`` describe for a chain of ``layer_nodes`` layer nodes."""
    from experiment.scenario import FaultSpec

    rng = random.Random(f"jarvis-chaos/{options.seed}")
    pool = list(options.nodes or range(1, layer_nodes + 1))
    alive = set(range(1, layer_nodes + 1))
    drawn: list[FaultSpec] = []
    start = rng.expovariate(options.rate)
    while start < options.duration:
        gap = rng.expovariate(options.rate)
        kind = rng.choice(options.kinds)
        candidates = [n for n in pool if n in alive]
        if kind == "kill":
            candidates = candidates if len(alive) > 1 else []
        hold = round(min(gap / 2, options.duration - start), 3)
        if candidates and hold >= MIN_HOLD_S:
            node = rng.choice(candidates)
            drawn.append(FaultSpec(**_spec(kind, node, hold, options.pct, rng, sorted(alive)),
                                   at_seconds=round(start, 3)))
            if kind == "kill":
                alive.discard(node)
        start += gap
    return drawn


def _spec(kind: str, node: int, hold: float, pct: float, rng: random.Random, alive: list[int]) -> dict:
    """The fields of one drawn fault of ``kind`` on ``node`` lasting ``hold`` seconds (``alive``: the layer nodes
    not killed, among which a one-way partition finds its other side, the user node too)."""
    if kind == "kill":
        return {"action": kind, "node": node}
    if kind == "one_way_partition":
        peer = rng.choice([n for n in (0, *alive) if n != node])
        return {"action": kind, "from": node, "to": peer, "duration": hold}
    spec = {"action": kind, "node": node, "duration": hold}
    if kind == "flap":
        spec |= {"period_ms": max(10.0, round(hold * 1000 / FLAP_CYCLES, 1)), "duty": 0.5}
    if kind in ("corrupt", "duplicate", "reorder"):
        spec["pct"] = pct
    return spec
