"""Stragglers are not crashes: the detector on plain numbers, the routes it leads to, the duty cycle that makes one."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from payload.routing import Placement, Policy, plan_route
from payload.stragglers import MIN_BASELINE, OnSlow, SlowDetector, heartbeat_steps
from testbed.straggler import DutyCycle

MS = 1_000_000
PLACEMENT = Placement(6, {1: (0, 2), 2: (2, 4), 3: (4, 6)}, {3: (2,)})  # node 3 also holds node 2's slice


class TestDetector:
    def test_no_node_is_slow_against_too_few_samples(self):
        detector = SlowDetector(2.0, 3)
        assert not detector.observe(1, [10 * MS] * (MIN_BASELINE - 1))
        assert detector.threshold_ns(1) is None
        assert not detector.observe(1, [900 * MS] * 3), "the first completes the baseline: two are judged"
        assert detector.observe(1, [900 * MS]), "judged against the baseline less its hiccup"

    def test_slow_steps_in_a_row_make_a_straggler_once(self):
        detector = SlowDetector(2.0, 3)
        assert not detector.observe(1, [10 * MS, 12 * MS] * 8)
        assert detector.threshold_ns(1) == pytest.approx(24 * MS)
        assert not detector.observe(1, [30 * MS, 30 * MS])
        assert detector.observe(1, [30 * MS]), "the third slow step in a row"
        assert not detector.observe(1, [30 * MS] * 5), "one straggler, reported once"

    def test_a_hiccup_before_the_slowdown_does_not_set_the_threshold(self):
        """Node 2's step times in a CI run that missed a 5x straggler: step 5 stalled to 35 ms among 14 ms ones."""
        detector = SlowDetector(2.0, 3)
        baseline = [16.3, 14.5, 13.4, 13.5, 35.4, 13.9, 14.1, 13.4]
        assert not detector.observe(2, [int(ms * MS) for ms in baseline])
        assert detector.threshold_ns(2) < 2 * 20 * MS, "the stall is not the node's speed"
        assert detector.observe(2, [int(ms * MS) for ms in (61.0, 44.2, 65.6)])

    def test_a_normal_step_between_slow_ones_starts_the_count_again(self):
        detector = SlowDetector(2.0, 3)
        detector.observe(1, [10 * MS] * 16)
        assert not detector.observe(1, [50 * MS, 50 * MS, 10 * MS, 50 * MS, 50 * MS])
        assert detector.observe(1, [50 * MS])

    def test_slow_steps_never_teach_the_baseline_that_slow_is_normal(self):
        detector = SlowDetector(2.0, 3)
        detector.observe(1, [10 * MS] * 16)
        detector.observe(1, [50 * MS] * 200)
        assert detector.threshold_ns(1) == pytest.approx(20 * MS)

    def test_counting_starts_afresh_after_a_holdoff(self):
        detector = SlowDetector(2.0, 3)
        detector.observe(1, [10 * MS] * 16 + [50 * MS] * 3)
        detector.forget_run(1)
        assert not detector.observe(1, [50 * MS] * 2) and detector.observe(1, [50 * MS])

    def test_it_reports_the_run_that_made_the_node_slow_and_the_threshold_it_crossed(self):
        """Even when the run spans heartbeats and the normal steps after it move the threshold (the log once
        read "steps  ms against 26 ms": it re-derived the run from the last heartbeat after the fact)."""
        detector = SlowDetector(2.0, 3)
        detector.observe(1, [10 * MS, 12 * MS] * 8)
        assert not detector.observe(1, [30 * MS, 31 * MS])
        run = detector.observe(1, [32 * MS] + [23 * MS] * 40)
        assert run.steps_ns == (30 * MS, 31 * MS, 32 * MS) and run.threshold_ns == 24 * MS
        assert detector.threshold_ns(1) > 32 * MS, "the steps after it moved the threshold past the run"

    @pytest.mark.parametrize("payload,expected", [
        (json.dumps({"steps_ns": [1, 2, 3]}).encode(), [1, 2, 3]),
        (json.dumps({"steps_ns": [1, -2, "x", True, 2.5, 10 ** 13]}).encode(), [1]),
        (json.dumps({"steps_ns": "many"}).encode(), []),
        (json.dumps([1, 2]).encode(), []),
        (b"not json", []),
        (json.dumps({"seq": 3}).encode(), []),
    ])
    def test_a_heartbeat_yields_only_well_formed_step_times(self, payload, expected):
        assert heartbeat_steps(payload) == expected


class TestRoutes:
    def test_wait_keeps_a_straggler_in_the_route(self):
        plan = plan_route(PLACEMENT, set(), slow={2}, on_slow=OnSlow.WAIT)
        assert [h.node for h in plan.hops] == [1, 2, 3] and not plan.skipped_layers

    def test_skip_routes_around_it_and_skips_its_layers(self):
        plan = plan_route(PLACEMENT, set(), slow={2}, on_slow=OnSlow.SKIP)
        assert [h.node for h in plan.hops] == [1, 3] and plan.skipped_layers == (2, 3)

    def test_replica_sends_its_layers_to_a_live_replica_or_keeps_waiting_on_it(self):
        plan = plan_route(PLACEMENT, set(), slow={2}, on_slow=OnSlow.REPLICA)
        assert [(h.node, h.first) for h in plan.hops] == [(1, 0), (3, 2), (3, 4)]
        kept = plan_route(PLACEMENT, set(), slow={1}, on_slow=OnSlow.REPLICA)
        assert [h.node for h in kept.hops] == [1, 2, 3], "no replica of node 1: it stays, slow but serving"

    def test_a_failed_node_still_follows_the_failure_policy(self):
        plan = plan_route(PLACEMENT, {2}, policy=Policy.REPLICA_THEN_SKIP, slow={3}, on_slow=OnSlow.SKIP)
        assert [h.node for h in plan.hops] == [1] and plan.skipped_layers == (2, 3, 4, 5), \
            "node 2's replica is the straggler node 3, routed around too"


def test_a_duty_cycle_runs_the_node_one_factor_th_of_the_time_and_leaves_it_running():
    sent: list[tuple[float, signal.Signals]] = []
    lock = threading.Lock()

    def send(sig):
        with lock:
            sent.append((time.monotonic(), sig))

    cycle = DutyCycle(send, factor=4, period_s=0.02)
    cycle.start()
    time.sleep(0.5)
    cycle.stop()
    assert sent[-1][1] == signal.SIGCONT, "healed: the node is left running"
    stopped = sum(b[0] - a[0] for a, b in zip(sent, sent[1:]) if a[1] == signal.SIGSTOP)
    running = sum(b[0] - a[0] for a, b in zip(sent, sent[1:]) if a[1] == signal.SIGCONT)
    assert running / (running + stopped) == pytest.approx(0.25, abs=0.08)
    with pytest.raises(ValueError, match="above 1"):
        DutyCycle(send, factor=1)
