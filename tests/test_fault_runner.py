"""Fault scheduling on plain data: a recording testbed stands in for the hosts (no processes needed)."""

from __future__ import annotations

import time

from experiment.run import Fault, FaultRunner
from testbed.interface import FaultResult, HostInfo, Testbed


class RecordingTestbed(Testbed):
    kind = "recording"

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def up(self, nodes, links=None):
        return self.hosts()

    def hosts(self):
        return [HostInfo(name=f"node{i}", index=i, address="127.0.0.1", workdir="/tmp") for i in range(3)]

    def shell(self, host):
        raise NotImplementedError

    def down(self):
        pass

    def _do(self, action, host):
        self.calls.append((action, host.name))
        return FaultResult.now(action, host.name)

    def kill(self, host):
        return self._do("kill", host)

    def pause(self, host):
        return self._do("pause", host)

    def resume(self, host):
        return self._do("resume", host)


def runner() -> tuple[FaultRunner, RecordingTestbed]:
    tb = RecordingTestbed()
    return FaultRunner(tb, {h.index: h for h in tb.hosts()}), tb


def test_pause_with_duration_is_undone_after_the_duration():
    fr, tb = runner()
    fr.fire(Fault("pause", (1,), at_token=2, duration=0.05))
    time.sleep(0.3)
    fr.finish()
    assert tb.calls == [("pause", "node1"), ("resume", "node1")]
    assert [r["action"] for r in fr.records] == ["pause", "resume"]


def test_undo_still_due_when_the_run_ends_is_applied_and_recorded():
    fr, tb = runner()
    fr.fire(Fault("pause", (2,), at_token=2, duration=30))
    fr.finish()
    assert tb.calls == [("pause", "node2"), ("resume", "node2")]


def test_time_triggered_fault_not_yet_due_is_cancelled():
    fr, tb = runner()
    fr.schedule(30, Fault("kill", (1,), at_seconds=30))
    fr.finish()
    assert tb.calls == [] and fr.records == []


def test_unsupported_fault_is_recorded_as_failed_not_raised():
    fr, tb = runner()
    fr.fire(Fault("link_down", (1,), at_token=1))
    assert fr.records[0]["detail"].startswith("FAILED")
