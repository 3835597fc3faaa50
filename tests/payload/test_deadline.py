"""The adaptive ack deadline: fast on loopback, tolerant of one TCP retransmission on WiFi, scaled on cellular."""

from __future__ import annotations

import pytest

from payload.config import Timing
from payload.transport import AdaptiveDeadline


def deadline_after(rtts_s: list[float]) -> float:
    timing = Timing()
    deadline = AdaptiveDeadline(timing.ack_floor_ms / 1000, timing.ack_multiplier,
                                retransmit_s=timing.retransmit_ms / 1000)
    for rtt in rtts_s:
        deadline.observe(rtt)
    return deadline.value()


def test_loopback_round_trips_keep_the_deadline_near_the_floor():
    assert deadline_after([0.0005] * 64) == pytest.approx(0.251, abs=0.001)


def test_a_wifi_hop_waits_out_one_retransmission():
    # Two 40 ms access links: ~85 ms round trips.  A lost segment is resent after about RTT + 200 ms
    # (Linux's minimum RTO), then the ack needs another trip: ~370 ms, seen as 350-390 ms on the emulator.
    value = deadline_after([0.080 + 0.005 * (i % 2) for i in range(64)])
    assert value >= 0.085 + 0.200 + 0.085 + 0.030
    assert value <= 0.5


def test_cellular_round_trips_scale_the_deadline_by_the_multiplier():
    assert deadline_after([0.230] * 64) == pytest.approx(4 * 0.230)


def test_no_samples_yet_uses_the_larger_of_floor_and_retransmission_room():
    assert deadline_after([]) == pytest.approx(0.250)
