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

A clock that steps during a run (NTP slewing in a jump, a ``clock_skew`` fault)
leaves bounds that no single offset satisfies.  Since a constant clock's
bounds always overlap (both legs are non-negative), an empty intersection is
proof of a step: :func:`clock_offsets` walks each pair's hops in the sender's
monotonic order and starts a new *segment* at the first hop whose bound
misses the running intersection, so each segment has one offset, with its own
uncertainty, and each hop is corrected by its own segment's.

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


def segments(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Segment number of each hop (in time order): a new segment starts where a hop's bound [lower, upper]
    misses the intersection of the bounds since the segment began (the clock stepped).  A hop whose own bound
    is empty (lower > upper: the clock stepped between its stamps) is -1, in no segment."""
    labels = np.full(lower.size, -1, dtype=np.int64)
    low, high, segment = -np.inf, np.inf, 0
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        if lo > hi:
            continue
        if max(low, lo) > min(high, hi):
            segment += 1
            low, high = lo, hi
        else:
            low, high = max(low, lo), min(high, hi)
        labels[i] = segment
    return labels


OFFSET_COLUMNS = PAIR + ["segment", "from_mono_ns", "offset_ns", "uncertainty_ns", "samples", "consistent"]


def clock_offsets(hops: pd.DataFrame) -> pd.DataFrame:
    """One offset estimate per (run_id, src, dst, segment): the segment's first hop (``from_mono_ns``, on the
    sender's monotonic clock), offset_ns, uncertainty_ns, samples; ``consistent`` is False for every segment of
    a pair whose clock stepped (its segments disagree), True where one offset fits the whole run."""
    rows = []
    for (run_id, src, dst), group in hops.groupby(PAIR, sort=True):
        group = group.sort_values("t1_mono_ns", kind="stable")
        t1, t2, t3, t4 = (group[f"t{k}_wall_ns"].to_numpy(dtype=np.int64) for k in (1, 2, 3, 4))
        labels = segments(t3 - t4, t2 - t1)
        stepped = bool(labels.max() > 0 or (labels < 0).any()) if labels.size else False
        mono = group["t1_mono_ns"].to_numpy(dtype=np.int64)
        for segment in np.unique(labels[labels >= 0]):
            part = labels == segment
            estimate = estimate_offset(t1[part], t2[part], t3[part], t4[part])
            rows.append({"run_id": run_id, "src": src, "dst": dst, "segment": int(segment),
                         "from_mono_ns": int(mono[part][0]), **asdict(estimate),
                         "consistent": estimate.consistent and not stepped})
    dtypes = {"src": "int64", "dst": "int64", "segment": "int64", "from_mono_ns": "int64", "samples": "int64",
              "consistent": "bool"}
    return pd.DataFrame(rows, columns=OFFSET_COLUMNS).astype(dtypes)


def one_way_delays(hops: pd.DataFrame, offsets: pd.DataFrame | None = None) -> pd.DataFrame:
    """Hops with owd_fwd_ns, owd_back_ns (their sum is the round trip) and owd_uncertainty_ns.

    Each leg is corrected by the offset estimate of its host pair's clock segment in force when it was sent,
    so the split between the legs is only as good as that estimate: both legs carry its uncertainty.
    """
    if offsets is None:
        offsets = clock_offsets(hops)
    order = hops.assign(_row=np.arange(len(hops))).sort_values("t1_mono_ns", kind="stable")
    right = offsets[PAIR + ["from_mono_ns", "offset_ns", "uncertainty_ns"]].astype(
        {key: hops[key].dtype for key in PAIR} | {"from_mono_ns": hops["t1_mono_ns"].dtype})
    joined = pd.merge_asof(order, right.sort_values("from_mono_ns"), left_on="t1_mono_ns", right_on="from_mono_ns",
                           by=PAIR, direction="backward")
    joined = joined.sort_values("_row").set_index(hops.index)
    forward = (joined["t2_wall_ns"] - joined["t1_wall_ns"]).astype("float64")
    back = (joined["t4_wall_ns"] - joined["t3_wall_ns"]).astype("float64")
    return joined.assign(
        owd_fwd_ns=forward - joined["offset_ns"],
        owd_back_ns=back + joined["offset_ns"],
        owd_uncertainty_ns=joined["uncertainty_ns"],
    ).drop(columns=["offset_ns", "uncertainty_ns", "from_mono_ns", "_row"])
