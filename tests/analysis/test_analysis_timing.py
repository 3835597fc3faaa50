"""analysis.timing: round trips and clock offsets from T1..T4 with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.load import load
from analysis.timing import clock_offsets, estimate_offset, offset_sample_ns, one_way_delays, round_trip_ns

MS = 1_000_000
T1 = 1_760_000_000_123_456_789  # realistic epoch ns: beyond float64's exact integers


def exchange(t1: int, theta: int, forward: int, hold: int, back: int) -> tuple[int, int, int, int]:
    """Stamps of one hop: dst clock = src clock + theta."""
    t2 = t1 + forward + theta
    t3 = t2 + hold
    t4 = t1 + forward + hold + back
    return t1, t2, t3, t4


class TestRoundTrip:
    def test_known_stamps_give_the_known_round_trip(self):
        stamps = exchange(T1, theta=7 * MS, forward=3 * MS, hold=MS // 2, back=5 * MS)
        assert round_trip_ns(*stamps) == 8 * MS

    def test_round_trip_ignores_the_clock_offset(self):
        for theta in (-3_600_000 * MS, 0, 42 * MS):
            assert round_trip_ns(*exchange(T1, theta, 3 * MS, 100, 5 * MS)) == 8 * MS

    def test_works_on_columns(self):
        frame = pd.DataFrame([exchange(T1 + i * MS, 7 * MS, 3 * MS, 10, (i + 1) * MS) for i in range(3)],
                             columns=["t1", "t2", "t3", "t4"])
        rtt = round_trip_ns(frame["t1"], frame["t2"], frame["t3"], frame["t4"])
        assert rtt.tolist() == [4 * MS, 5 * MS, 6 * MS]


class TestOffset:
    def test_one_exchange_bounds_the_offset_by_half_the_round_trip(self):
        stamps = exchange(T1, theta=7 * MS, forward=3 * MS, hold=MS // 2, back=5 * MS)
        assert offset_sample_ns(*stamps) == 6 * MS  # the asymmetric path biases it by (3 - 5) / 2 ms
        estimate = estimate_offset(*([s] for s in stamps))
        assert estimate.offset_ns == 6 * MS
        assert estimate.uncertainty_ns == 4 * MS  # rtt / 2
        assert abs(estimate.offset_ns - 7 * MS) <= estimate.uncertainty_ns

    def test_a_known_offset_is_recovered_within_its_uncertainty_on_an_asymmetric_path(self):
        rng = np.random.default_rng(1)
        theta = -123_456_789
        stamps = np.array([exchange(T1 + i * 10 * MS, theta, int(rng.uniform(8, 40) * MS), 30_000,
                                    int(rng.uniform(1, 3) * MS)) for i in range(200)])
        estimate = estimate_offset(*stamps.T)
        assert estimate.consistent and estimate.samples == 200
        assert abs(estimate.offset_ns - theta) <= estimate.uncertainty_ns
        rtt = round_trip_ns(*stamps.T)
        assert estimate.uncertainty_ns <= rtt.min() / 2  # many hops narrow it below any single one

    def test_a_stepped_clock_is_flagged_and_falls_back_to_the_smallest_round_trip(self):
        before = exchange(T1, 0, 5 * MS, 0, 5 * MS)
        after = exchange(T1 + 1000 * MS, 500 * MS, 2 * MS, 0, 2 * MS)  # clock stepped by 500 ms
        estimate = estimate_offset(*np.array([before, after]).T)
        assert not estimate.consistent
        assert estimate.offset_ns == 500 * MS and estimate.uncertainty_ns == 2 * MS

    def test_no_samples_is_an_error(self):
        with pytest.raises(ValueError, match="no hop samples"):
            estimate_offset([], [], [], [])


class TestSyntheticRun:
    def test_every_host_pair_offset_is_recovered_within_its_uncertainty(self, runs):
        data = load(runs.faulted)
        offsets = clock_offsets(data.hops)
        truth = runs.truth.clock_offsets_ns
        assert len(offsets) == data.hops.groupby(["src", "dst"]).ngroups
        for row in offsets.itertuples():
            assert row.consistent
            assert abs(row.offset_ns - (truth[row.dst] - truth[row.src])) <= row.uncertainty_ns

    def test_one_way_delays_add_up_to_the_round_trip_and_are_not_negative(self, runs):
        hops = one_way_delays(load(runs.faulted).hops)
        assert np.allclose(hops["owd_fwd_ns"] + hops["owd_back_ns"], hops["rtt_ns"])
        assert (hops[["owd_fwd_ns", "owd_back_ns"]] >= 0).all().all()
        assert (hops["rtt_ns"] == round_trip_ns(hops["t1_wall_ns"], hops["t2_wall_ns"],
                                                hops["t3_wall_ns"], hops["t4_wall_ns"])).all()


def stepped_hops(step_at: int, theta_before: int, theta_after: int, n: int = 120) -> pd.DataFrame:
    """Hops of one pair 10 ms apart on an asymmetric path whose dst clock steps after hop ``step_at``."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        theta = theta_before if i < step_at else theta_after
        forward, back = int(rng.uniform(2, 9) * MS), int(rng.uniform(1, 3) * MS)
        t1, t2, t3, t4 = exchange(T1 + i * 10 * MS, theta, forward, 50_000, back)
        rows.append({"run_id": "r", "src": 1, "dst": 2, "t1_wall_ns": t1, "t2_wall_ns": t2, "t3_wall_ns": t3,
                     "t4_wall_ns": t4, "t1_mono_ns": 5_000 * MS + i * 10 * MS, "rtt_ns": round_trip_ns(t1, t2, t3, t4),
                     "forward": forward})
    return pd.DataFrame(rows).sample(frac=1, random_state=3)  # hops arrive in any order


class TestClockSteps:
    def test_a_clock_step_splits_the_pair_and_each_segment_recovers_its_offset_within_its_uncertainty(self):
        hops = stepped_hops(60, 0, 250 * MS)
        offsets = clock_offsets(hops)
        assert offsets["segment"].tolist() == [0, 1] and not offsets["consistent"].any()
        before, after = offsets.itertuples()
        assert abs(before.offset_ns - 0) <= before.uncertainty_ns
        assert abs(after.offset_ns - 250 * MS) <= after.uncertainty_ns
        assert after.from_mono_ns == 5_000 * MS + 60 * 10 * MS, "the new segment starts at the first stepped hop"
        assert before.samples == after.samples == 60

    def test_each_hop_is_corrected_by_its_own_segment(self):
        hops = one_way_delays(stepped_hops(40, -30 * MS, 220 * MS))
        assert list(hops.index) == list(stepped_hops(40, -30 * MS, 220 * MS).index), "rows keep their order"
        error = (hops["owd_fwd_ns"] - hops["forward"]).abs()
        assert (error <= hops["owd_uncertainty_ns"]).all()
        assert (hops[["owd_fwd_ns", "owd_back_ns"]] >= 0).all().all()

    def test_a_steady_clock_is_one_consistent_segment(self):
        offsets = clock_offsets(stepped_hops(0, 40 * MS, 40 * MS))
        assert offsets["segment"].tolist() == [0] and offsets["consistent"].all()

    def test_a_hop_whose_clock_stepped_between_its_own_stamps_joins_no_segment(self):
        hops = stepped_hops(50, 0, 250 * MS)
        torn = hops.index[hops["t1_mono_ns"] == 5_000 * MS + 50 * 10 * MS][0]
        hops.loc[torn, "t2_wall_ns"] -= 250 * MS  # received before the step, acked after it
        offsets = clock_offsets(hops)
        assert offsets["segment"].tolist() == [0, 1] and offsets["samples"].tolist() == [50, 69]
        assert (offsets["uncertainty_ns"] >= 0).all()
