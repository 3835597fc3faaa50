"""Seeded fault schedules (a scenario's ``chaos``): the same seed draws the same schedule, and every schedule
keeps the promises experiment/chaos.py makes (one fault at a time, each healed, no kill of the last node)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment.chaos import MIN_HOLD_S, draw_chaos
from experiment.orchestrate import faults_from
from experiment.scenario import CHAOS_KINDS, ChaosOptions, load_scenario
from testbed.interface import FaultKind

options = st.builds(ChaosOptions, seed=st.integers(0, 2**31), rate=st.floats(0.05, 20),
                    duration=st.floats(0.5, 60), kinds=st.lists(st.sampled_from(CHAOS_KINDS), min_size=1, max_size=4),
                    pct=st.floats(1, 100))


@settings(max_examples=150, deadline=None)
@given(options, st.integers(1, 8))
def test_every_schedule_is_one_fault_at_a_time_each_healed_and_never_kills_the_last_node(chaos, nodes):
    drawn = draw_chaos(chaos, nodes)
    assert drawn == draw_chaos(chaos, nodes), "the same seed must give the same schedule"
    end = 0.0
    killed: set[int] = set()
    for fault in drawn:
        assert fault.at_seconds >= end, "a fault starts only after the one before it is healed"
        assert fault.at_seconds < chaos.duration and fault.action in chaos.kinds
        assert not (set(fault.targets) | set(fault.sinks)) & killed, "nothing hits a node already killed"
        if fault.action == "kill":
            killed |= set(fault.targets)
            continue
        assert fault.duration >= MIN_HOLD_S and fault.at_seconds + fault.duration <= chaos.duration + 1e-3
        end = fault.at_seconds + fault.duration
    assert len(killed) < nodes, "a kill never takes the last live layer node"


def test_another_seed_draws_another_schedule_and_the_rate_sets_how_many():
    base = ChaosOptions(seed=1, rate=2, duration=60, kinds=["pause", "blackhole", "corrupt"])
    first, other = draw_chaos(base, 4), draw_chaos(base.model_copy(update={"seed": 2}), 4)
    assert first != other
    assert 80 <= len(first) <= 160, f"about rate x duration = 120 faults, drew {len(first)}"
    assert {f.pct for f in first if f.action == "corrupt"} == {10}, "drawn corrupts take the chaos pct"


def test_the_node_pool_limits_what_is_hit(tmp_path):
    drawn = draw_chaos(ChaosOptions(seed=5, rate=5, duration=20, kinds=["link_down", "flap"], nodes=[2, 3]), 6)
    assert drawn and {n for f in drawn for n in f.targets} <= {2, 3}
    assert all(f.period_ms and f.duty == 0.5 for f in drawn if f.action == "flap")


def test_a_chaos_scenario_runs_its_drawn_schedule_beside_its_own_faults(tmp_path):
    path = tmp_path / "chaos.yaml"
    path.write_text("name: chaos\nnodes: 4\nprompts: [hi]\nmax_new_tokens: 8\n"
                    "faults:\n  - {at_token: 2, action: pause, node: 1, duration: 1}\n"
                    "chaos: {seed: 7, rate: 1, duration: 10, kinds: [blackhole, one_way_partition, kill]}\n")
    scenario = load_scenario(path)
    faults = faults_from(scenario)
    assert faults[0].action == FaultKind.PAUSE and len(faults) > 1
    assert [(f.action.value, f.at_seconds, f.nodes, f.to) for f in faults[1:]] == \
        [(f.action, f.at_seconds, f.targets, f.sinks) for f in draw_chaos(scenario.chaos, 4)]
    assert all(f.to for f in faults if f.action == FaultKind.ONE_WAY_PARTITION)


@pytest.mark.parametrize("testbed", ["local"])
def test_chaos_kinds_a_testbed_cannot_inject_are_refused_before_anything_starts(tmp_path, monkeypatch, testbed):
    from experiment.orchestrate import experiment
    from experiment.scenario import ScenarioError

    monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))
    path = tmp_path / "chaos.yaml"
    path.write_text("name: chaos\nnodes: 2\nprompts: [hi]\nchaos: {rate: 1, duration: 5, kinds: [pause, blackhole]}\n")
    with pytest.raises(ScenarioError, match=r"chaos\.kinds \(line 4\): the local testbed cannot blackhole"):
        experiment(testbed, str(path), prefix="jv-refused")
    assert not (tmp_path / "state").exists()
