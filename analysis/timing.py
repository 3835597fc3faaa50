"""Per-hop timing across hosts whose clocks disagree.

Every hop row carries TWAMP-style stamps: T1 (src sends) and T4 (src receives the
ack) on the source clock, T2 (dst receives) and T3 (dst sends the ack) on the
destination clock.  Two kinds of figure come out of them:

- The round trip ``(T4 - T1) - (T3 - T2)`` needs no clock agreement at all: each
  difference is taken on one host.  Prefer it whenever a round trip answers the question.
- One-way delays need the offset ``theta = clock(dst) - clock(src)``.  Because both
  legs take non-negative time, each hop bounds it: ``T3 - T4 <= theta <= T2 - T1``, an
  interval of width rtt centred on the NTP estimate ``((T2 - T1) + (T3 - T4)) / 2``.
  So a single hop gives the offset to within ``rtt / 2`` whatever the path asymmetry
  (Wi-Fi and LTE are asymmetric), and many hops narrow it to the intersection of their
  intervals.  One-way figures are reported with that half-width as their uncertainty.

Stamps are int64 nanoseconds since the epoch (~1.7e18), beyond float64's exact
integers, so differences are always taken in int64 before any float arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

PAIR = ["run_id", "src", "dst"]
Stamps = int | np.ndarray | pd.Series  # one stamp or a column of them, int64 ns


def round_trip_ns(t1: Stamps, t2: Stamps, t3: Stamps, t4: Stamps) -> Stamps:
    """Offset-free round trip: time at the source minus time held at the destination."""
    return (t4 - t1) - (t3 - t2)


def offset_sample_ns(t1: Stamps, t2: Stamps, t3: Stamps, t4: Stamps) -> float | np.ndarray | pd.Series:
    """NTP estimate of clock(dst) - clock(src) from one exchange; exact only on a symmetric path."""
    return ((t2 - t1) + (t3 - t4)) / 2


@dataclass(frozen=True)
class OffsetEstimate:
    """clock(dst) - clock(src) in ns, true value within ``offset_ns ± uncertainty_ns``.

    ``consistent`` is False when the per-hop bounds do not overlap (a clock stepped or
    drifted during the run); the estimate then falls back to the hop with the smallest
    round trip, whose own bound still holds for that moment.
    """

    offset_ns: float
    uncertainty_ns: float
    samples: int
    consistent: bool


def estimate_offset(t1: Stamps, t2: Stamps, t3: Stamps, t4: Stamps) -> OffsetEstimate:
    """Intersect the per-hop offset bounds [T3 - T4, T2 - T1] of one host pair."""
    lower = np.asarray(t3, dtype=np.int64) - np.asarray(t4, dtype=np.int64)
    upper = np.asarray(t2, dtype=np.int64) - np.asarray(t1, dtype=np.int64)
    if lower.size == 0:
        raise ValueError("no hop samples to estimate a clock offset from")
    low, high = int(lower.max()), int(upper.min())
    if low <= high:
        return OffsetEstimate((low + high) / 2, (high - low) / 2, int(lower.size), True)
    best = int(np.argmin(upper - lower))
    return OffsetEstimate((lower[best] + upper[best]) / 2, (upper[best] - lower[best]) / 2, int(lower.size), False)


def clock_offsets(hops: pd.DataFrame) -> pd.DataFrame:
    """One offset estimate per (run_id, src, dst): offset_ns, uncertainty_ns, samples, consistent."""
    rows = []
    for (run_id, src, dst), group in hops.groupby(PAIR, sort=True):
        estimate = estimate_offset(
            group["t1_wall_ns"].to_numpy(), group["t2_wall_ns"].to_numpy(),
            group["t3_wall_ns"].to_numpy(), group["t4_wall_ns"].to_numpy(),
        )
        rows.append({"run_id": run_id, "src": src, "dst": dst, **asdict(estimate)})
    columns = PAIR + ["offset_ns", "uncertainty_ns", "samples", "consistent"]
    dtypes = {"src": "int64", "dst": "int64", "samples": "int64", "consistent": "bool"}
    return pd.DataFrame(rows, columns=columns).astype(dtypes)


def one_way_delays(hops: pd.DataFrame, offsets: pd.DataFrame | None = None) -> pd.DataFrame:
    """Hops with owd_fwd_ns, owd_back_ns (their sum is the round trip) and owd_uncertainty_ns.

    Each leg is corrected by its host pair's offset estimate, so the split between the
    legs is only as good as that estimate: both legs carry its uncertainty.
    """
    if offsets is None:
        offsets = clock_offsets(hops)
    joined = hops.merge(offsets[PAIR + ["offset_ns", "uncertainty_ns"]], on=PAIR, how="left", validate="many_to_one")
    forward = (joined["t2_wall_ns"] - joined["t1_wall_ns"]).astype("float64")
    back = (joined["t4_wall_ns"] - joined["t3_wall_ns"]).astype("float64")
    return joined.assign(
        owd_fwd_ns=forward - joined["offset_ns"],
        owd_back_ns=back + joined["offset_ns"],
        owd_uncertainty_ns=joined["uncertainty_ns"],
    ).drop(columns=["offset_ns", "uncertainty_ns"])
