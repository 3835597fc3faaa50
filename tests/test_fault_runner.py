"""Fault scheduling on plain data: a recording testbed stands in for the hosts (no processes needed)."""

from __future__ import annotations

import time

from experiment.run import Fault, FaultRunner
import threading

from testbed.interface import ALL_FAULTS, PROCESS_FAULTS, FaultKind, FaultResult, HostInfo, Testbed


class RecordingTestbed(Testbed):
    kind = "recording"

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.threads: set[int] = set()

    def up(self, nodes, links=None):
        return self.hosts()

    def hosts(self):
        return [HostInfo(name=f"node{i}", index=i, address="127.0.0.1", workdir="/tmp") for i in range(4)]

    def shell(self, host):
        raise NotImplementedError

    def down(self):
        pass

    def _do(self, action, host, detail=""):
        self.calls.append((action, host.name))
        self.threads.add(threading.get_ident())
        time.sleep(0.05)  # a primitive takes a while: applied one after another, kills of three nodes take 0.15 s
        return FaultResult.now(action, host.name, detail)

    def link_down(self, host):
        return self._do("link_down", host)

    def link_up(self, host):
        return self._do("link_up", host)

    def impair(self, host, kind, pct):
        return self._do(kind.value, host, f"{pct:g}%")

    def heal(self, hosts):
        for host in hosts:
            self.calls.append(("heal", host.name))
        return FaultResult.now("heal", " ".join(h.name for h in hosts))

    def one_way_partition(self, sources, sinks):
        self.calls.append(("one_way_partition", f"{sources[0].name}->{sinks[0].name}"))
        return FaultResult.now("one_way_partition", "")

    def kill(self, host):
        return self._do("kill", host)

    def pause(self, host):
        return self._do("pause", host)

    def resume(self, host):
        return self._do("resume", host)


def runner(faults=ALL_FAULTS) -> tuple[FaultRunner, RecordingTestbed]:
    tb = RecordingTestbed()
    tb.faults = faults
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
    fr, tb = runner(PROCESS_FAULTS)
    fr.fire(Fault("link_down", (1,), at_token=1))
    assert fr.records[0]["detail"].startswith("FAILED")


def test_a_flap_is_its_link_down_and_up_pairs_each_recorded_and_the_link_is_left_up():
    fr, tb = runner()
    fr.fire(Fault("flap", (2,), at_seconds=0, duration=0.5, period_ms=200, duty=0.25))
    time.sleep(0.8)
    fr.finish()
    assert tb.calls == [("link_down", "node2"), ("link_up", "node2")] * 3  # cycles at 0, 0.2 and 0.4 s
    downs = [r["effective_mono_ns"] for r in fr.records if r["action"] == "link_down"]
    assert all(0.15e9 < b - a < 0.3e9 for a, b in zip(downs, downs[1:])), "one cut per period"


def test_a_flap_cut_short_by_the_end_of_the_run_leaves_the_link_up():
    fr, tb = runner()
    fr.fire(Fault("flap", (1,), at_seconds=0, duration=5, period_ms=1000, duty=0.5))
    fr.finish()
    assert tb.calls == [("link_down", "node1"), ("link_up", "node1")]


def test_an_impairment_with_a_duration_is_healed_and_a_one_way_heal_names_both_sides():
    fr, tb = runner()
    fr.fire(Fault("corrupt", (1,), at_token=0, duration=0.05, pct=20))
    fr.fire(Fault("one_way_partition", (2,), at_token=0, duration=30, to=(3,)))
    time.sleep(0.3)
    fr.finish()
    assert tb.calls == [("corrupt", "node1"), ("one_way_partition", "node2->node3"), ("heal", "node1"),
                        ("heal", "node2"), ("heal", "node3")]
    assert [r["target"] for r in fr.records] == ["node1", "node2 -> node3", "node1", "node2 node3"]


def test_a_correlated_kill_hits_every_node_at_once_not_one_after_another():
    fr, tb = runner()
    fr.fire(Fault("kill", (1, 2, 3), at_token=1))
    times = [r for r in fr.records]
    assert sorted(tb.calls) == [("kill", "node1"), ("kill", "node2"), ("kill", "node3")]
    assert len(tb.threads) == 3 and len(times) == 1
    assert times[0]["effective_wall_ns"] - times[0]["requested_wall_ns"] < 0.12e9, "applied in parallel"


def test_a_pct_fault_without_its_share_is_refused_before_any_host_is_touched():
    fr, tb = runner()
    fr.fire(Fault("duplicate", (1,), at_token=0))
    assert tb.calls == [] and "needs pct" in fr.records[0]["detail"]
    assert FaultKind.HEAL in tb.supported_faults()


def test_an_impairment_without_a_duration_lasts_the_run_and_is_healed_as_it_ends():
    fr, tb = runner()
    fr.fire(Fault("blackhole", (1,), at_token=0))
    fr.fire(Fault("reorder", (2,), at_token=0, pct=5))
    fr.fire(Fault("heal", (2,), at_token=3))  # healed by the scenario itself: not healed again
    assert tb.calls == [("blackhole", "node1"), ("reorder", "node2"), ("heal", "node2")]
    fr.finish()
    assert tb.calls[3:] == [("heal", "node1")]
    assert [r["action"] for r in fr.records] == ["blackhole", "reorder", "heal", "heal"]
