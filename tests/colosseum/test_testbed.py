"""The Colosseum backend end to end against emulated SRNs: real SSH through a gateway, stand-in Colosseum tools.

One reservation of five SRNs (end-user UE, server, Wi-Fi gateway, Wi-Fi
node as layer nodes; the base station only forwarding) runs a tiny Llama
through deploy, a job with pause, kill and resume, collection, a link cut
and its repair, and teardown; failures (an SRN that is not there, an RF scenario
that does not start) must say what went wrong and leave nothing running.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from colosseum import plan
from testbed.addresses import Address
from colosseum.network import SrnAddresses
from colosseum.testbed import ColosseumTestbed
from experiment.deploy import deploy
from testbed.shipping import service_argv
from experiment.run import Fault, run_job
from testbed.interface import TestbedError
from payload.prepare import load_manifest
from payload.routing import even_placement

from tests.colosseum.conftest import MISSING, SRNS, write_inventory

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

RUN_FILES = ["tokens.csv", "hops.csv", "faults.csv", "nodes.csv", "links.csv", "testbed.json", "deployment.json",
             "versions.json", "scenario.yaml", "summary.json"]
RADIO = {  # what the stand-ins must have seen from each SRN's radio bring-up, in order
    "jvtest-101": ["scope_start.py --config-file radio_interactive.conf"],
    "jvtest-102": ["scope_start.py --config-file radio_interactive.conf"],
    "jvtest-103": [],
    "jvtest-104": ["tap_setup.sh", "route_setup.sh", "modem_start.sh"],
    "jvtest-105": ["tap_setup.sh", "route_setup.sh", "modem_start.sh"],
}


def quiet(message: str) -> None:
    import time
    print(f"{time.monotonic():.1f} {message}", flush=True)


def colosseum_testbed(inventory: Path) -> ColosseumTestbed:
    return ColosseumTestbed(f"jv-tcol-{uuid.uuid4().hex[:6]}", inventory=inventory, progress=quiet)


def pings(namespace: str, address: str) -> bool:
    argv = ["ip", "netns", "exec", namespace, "ping", "-n", "-q", "-c", "1", "-w", "3", address]
    return subprocess.run(argv, capture_output=True).returncode == 0


def stopped_rf(log: list[str]) -> bool:
    """The log ends with ``rf stop`` and then ``rf info`` polled until the scenario cleared."""
    tail = log[log.index("colosseumcli rf stop"):]
    return len(tail) >= 2 and set(tail[1:]) == {"colosseumcli rf info"}


def in_order(wanted: list[str], ran: list[str]) -> bool:
    """``wanted`` appears in ``ran`` in this order (other commands may come between)."""
    remaining = iter(ran)
    return all(any(command == r for r in remaining) for command in wanted)


def transcript(testbed: ColosseumTestbed) -> list[dict]:
    return [json.loads(line) for line in testbed.state.transcript.read_text().splitlines()]


def nothing_running(srns, testbed: ColosseumTestbed, sockets: list[str]) -> None:
    assert not testbed.state.exists()
    assert not any(srns.tmux_running(s) for s in sockets)
    for alias in SRNS:
        assert srns.routes(alias) == []
        assert srns.sysctl(alias, "net.ipv4.ip_forward") == "0"
        namespace = srns.by_alias[alias].namespace
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in pids if Path(f"/proc/{p}").exists()]
        assert not [c for c in commands if b"payload" in c or b"modem_start" in c or b"scope_start" in c]


@pytest.fixture
def inventory(srns, tmp_path, tiny_prepared):
    srns.clear_logs()
    srns.set_control("rf-start-fails", False)
    nas_model = tmp_path / "nas" / "jvtest" / "models" / "tiny"
    shutil.copytree(tiny_prepared("llama"), nas_model)
    return write_inventory(tmp_path / "inventory.yaml", srns, nas_model="models/tiny")


class TestAnExperiment:
    def test_up_deploy_run_with_faults_collect_and_down(self, srns, inventory, tiny_prepared, tmp_path):
        prepared = tiny_prepared("llama")
        testbed = colosseum_testbed(inventory)
        hosts = testbed.up(3)
        try:
            layout = plan.Layout(testbed.inventory(), testbed.prefix, testbed.state.load()["run"],
                                 [h.ssh_host for h in hosts])
            assert [(h.name, h.ssh_host, h.address, h.profile) for h in hosts] == [
                ("user", "jvtest-102", "172.16.0.2", "cellular"), ("node1", "jvtest-103", "172.30.1.103", "server"),
                ("node2", "jvtest-104", "10.20.0.104", "wifi"), ("node3", "jvtest-105", "10.20.0.105", "wifi")]
            for alias, radio in RADIO.items():
                rf = ["colosseumcli rf start 1009 -c", "colosseumcli rf info"] if alias == "jvtest-101" else []
                nas = f"{tmp_path}/nas/jvtest/models/tiny"
                staged = [f"su srn-user -c 'test -d {nas}'",
                          f"su srn-user -c 'cp -r {nas} /tmp/{layout.run}-{alias}-model'"]
                assert srns.log(alias) == rf + radio + (staged if alias != "jvtest-101" else [])
            assert srns.routes("jvtest-105") == ["172.16.0.2 via 10.20.0.104 dev tap0",
                                                 "172.30.1.103 via 10.20.0.104 dev tap0"]
            assert srns.sysctl("jvtest-101", "net.ipv4.ip_forward") == "1"

            deployment = deploy(testbed, prepared, even_placement(load_manifest(prepared)["num_layers"], 3),
                                model="tiny-llama", progress=quiet)
            manifest_size = (prepared / "manifest.json").stat().st_size  # deploy always sends the manifest
            assert set(deployment.bytes_shipped.values()) == {manifest_size}  # the rest came from the NAS
            job = {"prompts": ["the cat sat on the"], "max_new_tokens": 6}
            faults = [Fault("pause", (1,), at_token=1), Fault("kill", (2,), at_token=2),
                      Fault("resume", (1,), at_token=3)]
            run = run_job(testbed, deployment, job, faults, tmp_path / "run", stream=quiet)
            for name in RUN_FILES:
                assert (run / name).is_file(), name
            for host in hosts:
                assert (run / "nodes" / host.name / "events.jsonl").stat().st_size > 0, host.name
            summary = json.loads((run / "summary.json").read_text())
            assert summary["testbed"] == "colosseum" and summary["sessions"][0]["tokens"] == 6
            recorded = (run / "faults.csv").read_text().splitlines()[1:]
            assert [line.split(",")[:3] for line in recorded] == [
                ["pause", "node1", "token:1"], ["kill", "node2", "token:2"], ["resume", "node1", "token:3"]]
            assert "FAILED" not in "".join(recorded) and "SIGKILL to process group" in recorded[1]
            described = json.loads((run / "testbed.json").read_text())
            assert described["rf_scenario"] == 1009 and described["rf_info"]["scenario_status"] == "Active"
            assert described["network"]["routes"]["jvtest-105"] == [
                "172.16.0.2/32 via 10.20.0.104 dev tap0", "172.30.1.103/32 via 10.20.0.104 dev tap0"]
            for alias in SRNS:
                workdir = Path(layout.workdir(alias))
                assert (workdir / "network.json").is_file() and workdir.parent.name == "logs"

            user, wifi = srns.by_alias["jvtest-102"], hosts[3]
            assert pings(user.namespace, wifi.address)
            testbed.link_down(wifi)
            assert not pings(user.namespace, wifi.address) and srns.routes("jvtest-105") == []
            testbed.link_up(wifi)
            assert pings(user.namespace, wifi.address) and len(srns.routes("jvtest-105")) == 2

            addresses = {n: SrnAddresses(Address.from_text(a["address"]),
                                         Address.from_text(a["col0"]) if a["col0"] else None)
                         for n, a in described["network"]["srns"].items()}
            argv = {h.ssh_host: service_argv(h, "payload.node", "--config", "node.json") for h in hosts[1:]}
            expected = plan.dry_run(layout, service_argv=argv, addresses=addresses)
            done = transcript(testbed)
            for alias in SRNS:
                ran = [r["command"] for r in done if r["host"] == alias]
                for phase in ("check", "prepare", "rf", "radio", "route", "reach", "stage"):
                    assert in_order(expected.commands(alias, phase), ran), (alias, phase)
        finally:
            testbed.down()
        assert stopped_rf(srns.log("jvtest-101"))
        nothing_running(srns, testbed, [layout.tmux_socket(a) for a in SRNS])
        testbed.down()  # safe to repeat


class TestFailures:
    def test_a_missing_srn_is_named_and_nothing_is_started(self, srns, tmp_path, inventory):
        bad = write_inventory(tmp_path / "missing.yaml", srns, extra_srns=[{"id": 106, "role": "server"}])
        testbed = colosseum_testbed(bad)
        with pytest.raises(TestbedError) as failure:
            testbed.up(3)
        message = str(failure.value)
        assert "checking the SRNs failed on 1 of 6 hosts" in message and MISSING in message
        assert "cannot log in" in message
        assert all(srns.log(alias) == [] for alias in SRNS)  # no RF, no radio, nothing
        nothing_running(srns, testbed, [f"{testbed.prefix}-{a}" for a in SRNS])

    def test_a_failed_rf_start_is_reported_and_the_scenario_is_stopped(self, srns, inventory):
        srns.set_control("rf-start-fails", True)
        testbed = colosseum_testbed(inventory)
        with pytest.raises(TestbedError, match="RF scenario 1009 did not start: Colosseum failed to schedule"):
            testbed.up(3)
        log = srns.log("jvtest-101")
        assert log[0] == "colosseumcli rf start 1009 -c" and log[1] == "colosseumcli rf stop" and stopped_rf(log)
        assert all(srns.log(alias) == [] for alias in SRNS if alias != "jvtest-101")
        nothing_running(srns, testbed, [f"{testbed.prefix}-{a}" for a in SRNS])

        stopped = json.loads((testbed.state_dir.parent / "rf-last-stop-jvtest.json").read_text())["stopped_wall"]
        with pytest.raises(TestbedError, match="did not start"):
            testbed.up(3)  # right away: the next rf start waits out the settle time after rf stop
        started = next(r["wall_ns"] for r in transcript(testbed) if r["command"].startswith("colosseumcli rf start"))
        assert started / 1e9 - stopped >= 1.0  # rf_stop_settle_s in the test inventory
