"""The Testbed interface states what callers may rely on; every testbed keeps to it (no probing with getattr)."""

from __future__ import annotations

import inspect

import pytest

from emu.shaping import NetemShaper, Shaper, UserspaceShaper
from experiment.orchestrate import TESTBEDS, experiment
from experiment.orchestrate import testbed_class as class_of  # (a name pytest would collect)
from experiment.scenario import ScenarioError
from testbed.interface import FaultKind, Testbed, TestbedError

PRIMITIVES = {FaultKind.KILL: "kill", FaultKind.PAUSE: "pause", FaultKind.RESUME: "resume",
              FaultKind.LINK_DOWN: "link_down", FaultKind.LINK_UP: "link_up", FaultKind.DEGRADE: "degrade",
              FaultKind.PARTITION: "partition", FaultKind.ONE_WAY_PARTITION: "one_way_partition",
              FaultKind.BLACKHOLE: "impair", FaultKind.CORRUPT: "impair", FaultKind.DUPLICATE: "impair",
              FaultKind.REORDER: "impair", FaultKind.HEAL: "heal", FaultKind.CLOCK_SKEW: "clock_skew",
              FaultKind.SLOW: "slow"}


@pytest.mark.parametrize("kind", sorted(TESTBEDS))
class TestEveryTestbed:
    def test_it_implements_exactly_the_faults_it_declares(self, kind):
        cls = class_of(kind)
        for fault, method in PRIMITIVES.items():
            overridden = getattr(cls, method) is not getattr(Testbed, method)
            assert overridden == (fault in cls.faults), f"{kind}: {method} declared {fault in cls.faults}"
        assert (FaultKind.FLAP in cls.faults) == (FaultKind.LINK_DOWN in cls.faults), "flap is link_down and up"

    def test_an_undeclared_fault_is_refused_without_touching_a_host(self, kind):
        cls = class_of(kind)
        bed = cls.__new__(cls)  # no state, no hosts: inject must refuse before it needs either
        for fault in set(FaultKind) - cls.faults:
            with pytest.raises(TestbedError, match=f"the {kind} testbed cannot"):
                bed.inject(fault, [])

    def test_it_says_where_its_state_lives(self, kind):
        cls = class_of(kind)
        init = inspect.signature(cls.__init__)
        bed = cls("jv-interface-check") if "inventory" not in init.parameters else cls("jv-interface-check",
                                                                                       inventory=None)
        assert bed.state_dir.name == "jv-interface-check" and not bed.state_dir.exists()


def test_a_scenario_with_faults_the_testbed_cannot_inject_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))
    scenario = tmp_path / "cut.yaml"
    scenario.write_text("name: cut\nnodes: 2\nprompts: [hi]\nfaults:\n  - {at_token: 1, action: kill, node: 1}\n"
                        "  - {at_token: 2, action: link_down, node: 2, duration: 1}\n")
    with pytest.raises(ScenarioError, match=r"faults\.1\.action \(line 6\): the local testbed cannot link down"):
        experiment("local", str(scenario), prefix="jv-refused")
    assert not (tmp_path / "state").exists(), "nothing may start (no testbed state) for a refused scenario"


def test_a_dry_run_is_part_of_the_interface_and_refused_clearly_where_there_is_none():
    local = class_of("local")("jv-dry")
    with pytest.raises(TestbedError, match="--dry-run is not available for the local testbed"):
        local.dry_run(3)


def test_both_shaping_backends_implement_the_shaper_protocol():
    members = {name for name, _ in inspect.getmembers(Shaper, inspect.isfunction) if not name.startswith("_")}
    assert {"describe", "links", "wiring", "start", "apply"} <= members
    for backend in (NetemShaper, UserspaceShaper):
        for name in members:
            ours, theirs = inspect.signature(getattr(backend, name)), inspect.signature(getattr(Shaper, name))
            assert list(ours.parameters)[:len(theirs.parameters)] == list(theirs.parameters), (backend, name)
