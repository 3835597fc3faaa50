#!/usr/bin/env python3
"""Write the shipped Mahimahi delivery traces (testbed/traces/*.trace): synthetic, seeded, reproducible.

Two cellular patterns, each an uplink and a downlink trace of ``--seconds`` (default 30) that the shaper loops:

* ``cellular-stationary``: a phone that does not move; the capacity wanders within about +-15 % of its mean
  (downlink 9 Mbit/s, uplink 3 Mbit/s) as cell load changes: a mean-reverting walk of the log rate.
* ``cellular-driving``: a phone in a car; the log rate wanders widely (mean downlink 6 Mbit/s, uplink 1.8,
  between 0.2 and 40) with handovers that drop the link for 0.3-1.5 s at a time.

Rates are per 100 ms step; within a step the opportunities (one per 1504 bytes, testbed/traces.py) are spread
evenly.  These are not measurements: for measured links use Mahimahi's recorded traces or CellReplay's (see
testbed/traces.py), which drop in unchanged.  Run: ``python scripts/make-traces.py [--seed 1]``.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

OPPORTUNITY_BITS = 1504 * 8
STEP_MS = 100
OUT = Path(__file__).resolve().parent.parent / "testbed" / "traces"

# name -> (mean Mbit/s, log-rate std dev, mean reversion per step, floor, ceiling, handovers per minute)
PATTERNS = {
    "cellular-stationary-down": (9.0, 0.08, 0.05, 1.0, 40.0, 0.0),
    "cellular-stationary-up": (3.0, 0.08, 0.05, 0.3, 20.0, 0.0),
    "cellular-driving-down": (6.0, 0.9, 0.08, 0.2, 40.0, 4.0),
    "cellular-driving-up": (1.8, 0.9, 0.08, 0.2, 20.0, 4.0),
}


def rates(rng: random.Random, seconds: int, mean: float, sigma: float, revert: float, floor: float, ceiling: float,
          handovers: float) -> list[float]:
    """Mbit/s per step: an AR(1) walk of the log rate around log(mean) with stationary std dev ``sigma``."""
    steps = seconds * 1000 // STEP_MS
    noise = sigma * math.sqrt(1 - (1 - revert) ** 2)
    level, out, outage = 0.0, [], 0
    for _ in range(steps):
        level = (1 - revert) * level + rng.gauss(0.0, noise)
        if outage == 0 and rng.random() < handovers / 60 * STEP_MS / 1000:
            outage = rng.randint(3, 15)  # 0.3-1.5 s
        out.append(0.0 if outage else min(ceiling, max(floor, mean * math.exp(level - sigma ** 2 / 2))))
        outage = max(0, outage - 1)
    return out


def trace_lines(per_step: list[float]) -> list[int]:
    """Opportunity times (ms): each step's share spread evenly, carrying fractions over; the last time is the
    period (an opportunity is added there if none falls on it)."""
    times, credit = [], 0.0
    for step, mbit in enumerate(per_step):
        for ms in range(step * STEP_MS + 1, (step + 1) * STEP_MS + 1):
            credit += mbit * 1e6 / 1000 / OPPORTUNITY_BITS
            while credit >= 1:
                times.append(ms)
                credit -= 1
    period = len(per_step) * STEP_MS
    if not times or times[-1] != period:
        times.append(period)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, pattern in PATTERNS.items():
        rng = random.Random(f"{args.seed}/{name}")
        times = trace_lines(rates(rng, args.seconds, *pattern))
        path = args.out / f"{name}.trace"
        path.write_text("\n".join(map(str, times)) + "\n")
        mean = len(times) * OPPORTUNITY_BITS / (times[-1] / 1000) / 1e6
        print(f"{path}: {len(times)} opportunities over {times[-1] / 1000:g} s, mean {mean:.2f} Mbit/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
