"""Mahimahi delivery traces: the file format's checks, the delivery model, the shipped traces, and the profiles and
shaper directions that use them (pure: no namespaces; the emu link check measures a real one)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from emu.shaper import Direction, DirectionConfig
from testbed.interface import TestbedError
from testbed.netem import netem_argv
from testbed.profiles import ProfileError, directions, load_profiles, profile_from_dict
from testbed.traces import (OPPORTUNITY_BYTES, SHIPPED_TRACES, DeliverySchedule, TraceError, mean_rate_mbit,
                            rate_series_mbit, read_trace, resolve_trace, shipped)

ROOT = Path(__file__).resolve().parent.parent


def trace_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.trace"
    path.write_text(text)
    read_trace.cache_clear()
    return str(path)


@pytest.mark.parametrize("text,words", [
    ("1\n2\nx3\n", "line 3: 'x3' is not a whole number"),
    ("5\n4\n", "line 2: 4 ms comes before the line above (5)"),
    ("", "holds no opportunity after 0 ms"),
    ("0\n0\n", "holds no opportunity after 0 ms"),
    ("-1\n2\n", "line 1: '-1' is not a whole number"),
])
def test_a_malformed_trace_is_refused_naming_its_line(tmp_path, text, words):
    with pytest.raises(TraceError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_trace(trace_file(tmp_path, text))


def test_a_trace_is_a_file_or_a_shipped_name():
    assert {"cellular-driving-down", "cellular-stationary-up"} <= set(shipped())
    assert resolve_trace("cellular-driving-down") == SHIPPED_TRACES / "cellular-driving-down.trace"
    with pytest.raises(TraceError, match="neither a file nor a shipped trace"):
        resolve_trace("nowhere/lte.trace")


class TestDeliverySchedule:
    def test_a_full_frame_takes_one_opportunity_and_small_frames_share_one(self):
        schedule = DeliverySchedule((10, 20, 30), epoch=100.0)
        assert schedule.departure(100.0, 1514) == pytest.approx(100.010)  # 1500 IP bytes fit 1504
        assert schedule.departure(100.0, 614) == pytest.approx(100.020)
        assert schedule.departure(100.0, 614) == pytest.approx(100.020), "600 + 600 IP bytes share one"
        assert schedule.departure(100.0, 614) == pytest.approx(100.030), "304 left: the next opportunity"

    def test_a_frame_larger_than_an_opportunity_waits_for_enough_of_them(self):
        schedule = DeliverySchedule((1, 1, 1, 5), epoch=0.0)
        assert schedule.departure(0.0, 14 + 3 * OPPORTUNITY_BYTES) == pytest.approx(0.001)
        assert schedule.departure(0.0, 100) == pytest.approx(0.005)

    def test_opportunities_nobody_used_are_lost_and_the_trace_loops(self):
        schedule = DeliverySchedule((10, 20, 30), epoch=0.0)
        assert schedule.departure(0.025, 1514) == pytest.approx(0.030)
        assert schedule.departure(0.031, 1514) == pytest.approx(0.040), "the second loop's first opportunity"
        assert schedule.departure(1.001, 100) == pytest.approx(1.010), "loop 33 (from 0.99 s) at its 20 ms"

    def test_rates_count_what_a_second_of_the_trace_delivers(self):
        times = tuple(range(1, 1001)) + tuple(range(1002, 2001, 2))  # 1000 in the first second, 500 in the next
        assert mean_rate_mbit(times, 1000) == pytest.approx(1500 * 8000 / 2 / 1e6)
        assert rate_series_mbit(times, 0.0005, 4, 1000) == pytest.approx([8.0, 4.0, 8.0, 4.0])
        assert rate_series_mbit(times, 0.5005, 2, 1000) == pytest.approx([6.0, 6.0])


class TestShaperDirection:
    def test_a_trace_serves_the_droptail_queue_instead_of_a_rate(self, tmp_path):
        path = trace_file(tmp_path, "\n".join(str(t) for t in range(2, 202, 2)) + "\n")  # one every 2 ms
        d = Direction(DirectionConfig(trace=path, queue_pkts=2, delay_ms=5), random.Random(1), now=10.0)
        assert [d.admit(10.0, 1514) for _ in range(3)] == pytest.approx([10.007, 10.009, None])
        assert d.dropped_queue == 1

    def test_a_reload_keeps_the_clock_of_the_same_trace_and_restarts_for_another(self, tmp_path):
        first = trace_file(tmp_path, "100\n200\n")
        d = Direction(DirectionConfig(trace=first), random.Random(1), now=0.0)
        d.configure(DirectionConfig(trace=first, delay_ms=1), now=50.0)
        assert d.schedule.epoch == 0.0
        other = tmp_path / "other.trace"
        other.write_text("100\n200\n")
        d.configure(DirectionConfig(trace=str(other)), now=50.0)
        assert d.schedule.epoch == 50.0
        d.configure(DirectionConfig(rate_mbit=8), now=60.0)
        assert d.schedule is None and d.admit(60.0, 1000) == pytest.approx(60.001)


class TestProfiles:
    def test_shipped_trace_profiles_name_their_traces_per_direction(self):
        up, down = directions(load_profiles()["cellular-driving"])
        assert Path(up.trace).name == "cellular-driving-up.trace" and up.rate_mbit is None
        assert Path(down.trace).name == "cellular-driving-down.trace" and down.delay_ms == 130
        assert "SYNTHETIC" in up.source

    @pytest.mark.parametrize("fields,words", [
        ({"trace": "cellular-driving-up", "rate_mbit": 5}, "a trace sets the rate"),
        ({"uplink": {"trace": "nowhere"}}, "trace 'nowhere' is neither a file nor a shipped trace"),
        ({"trace": 5}, "trace must name a trace file"),
    ])
    def test_bad_trace_fields_are_named(self, fields, words):
        with pytest.raises(ProfileError, match=words):
            profile_from_dict("p", fields)

    def test_netem_cannot_replay_a_trace_and_says_what_can(self):
        up, _ = directions(load_profiles()["cellular-stationary"])
        with pytest.raises(TestbedError, match="netem cannot replay a delivery trace: use the emu testbed"):
            netem_argv("eth0", up)


def test_the_shipped_traces_are_what_the_seeded_generator_makes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-traces.py"), "--seed", "1", "--out", str(tmp_path)],
                   check=True, capture_output=True)
    made = sorted(p.name for p in tmp_path.glob("*.trace"))
    assert made == sorted(p.name for p in SHIPPED_TRACES.glob("*.trace"))
    for name in made:
        assert (tmp_path / name).read_bytes() == (SHIPPED_TRACES / name).read_bytes(), name
