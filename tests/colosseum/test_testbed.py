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
import sys
import time
import uuid
from pathlib import Path

import pytest

from colosseum import plan
from testbed.addresses import Address
from colosseum.network import SrnAddresses
from colosseum.testbed import ColosseumTestbed
from experiment.deploy import deploy
from testbed.shipping import service_argv
from experiment.orchestrate import ensure_up
from experiment.run import Fault, run_job
from testbed.interface import TestbedError
from payload.prepare import load_manifest
from payload.routing import even_placement

from colosseum.scope import scope_config_text
from tests.colosseum.conftest import MISSING, SRNS, write_inventory

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

RUN_FILES = ["tokens.csv", "hops.csv", "faults.csv", "nodes.csv", "links.csv", "testbed.json", "deployment.json",
             "versions.json", "scenario.yaml", "summary.json"]
RADIO = {  # what the stand-ins must have seen from each SRN's radio bring-up, in order
    "jvtest-107": ["scope_start.py --config-file jarvis-scope.conf", "colosseumcli rf radiomap"],
    "jvtest-102": ["scope_start.py --config-file jarvis-scope.conf", "colosseumcli rf radiomap"],
    "jvtest-103": [],
    "jvtest-104": ["tap_setup.sh", "route_setup.sh 105", "modem_start.sh"],
    "jvtest-105": ["tap_setup.sh", "route_setup.sh 104", "modem_start.sh"],
}


def quiet(message: str) -> None:
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
                rf = [f"colosseumcli rf start 1009 -m {plan.radio_map_path(layout)} -c", "colosseumcli rf info",
                      "colosseumcli rf radiomap"] if alias == "jvtest-107" else []
                nas = f"{tmp_path}/nas/jvtest/models/tiny"
                staged = [f"su srn-user -c 'test -d {nas}'",
                          f"su srn-user -c 'cp -r {nas} /tmp/{layout.run}-{alias}-model'"]
                assert srns.log(alias) == rf + radio + (staged if alias != "jvtest-107" else [])
            scope = json.loads((srns.root / "radio_api" / "jarvis-scope.conf").read_text())
            assert (scope["iperf"], scope["network-slicing"], scope["users-bs"]) == ("False", "False", "1")
            assert srns.routes("jvtest-105") == ["172.16.0.2 via 10.20.0.104 dev tap0",
                                                 "172.30.1.103 via 10.20.0.104 dev tap0"]
            assert srns.sysctl("jvtest-107", "net.ipv4.ip_forward") == "1"

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
        assert stopped_rf(srns.log("jvtest-107"))
        nothing_running(srns, testbed, [layout.tmux_socket(a) for a in SRNS])
        testbed.down()  # safe to repeat


def test_deploy_brings_a_testbed_that_is_not_up_up_first(srns, inventory):
    """`fab deploy --testbed colosseum --inventory FILE` is the whole job: with nothing up, every layer SRN of
    the inventory comes up (checks, RF scenario, radios, addresses); a different count later is refused."""
    testbed = colosseum_testbed(inventory)
    try:
        ensure_up(testbed, None)
        hosts = testbed.hosts()
        assert [h.ssh_host for h in hosts] == ["jvtest-102", "jvtest-103", "jvtest-104", "jvtest-105", "jvtest-107"]
        assert hosts[4].address == "172.16.0.1"  # the base station holds layers too, on its SGi address
        ensure_up(testbed, 4)  # up already, with that many: nothing to do
        with pytest.raises(TestbedError, match="is up with 4 layer nodes, not 3"):
            ensure_up(testbed, 3)
    finally:
        testbed.down()
    nothing_running(srns, testbed, [f"{testbed.prefix}-{a}" for a in SRNS])


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

    def test_an_srn_whose_connect_hangs_fails_within_the_connect_timeout_named(self, srns, tmp_path, inventory):
        """The gateway's TCP connect to an SRN that is down can hang (SYNs dropped); Fabric opens that channel
        with paramiko's 1 h default.  Here a listener in the gateway namespace with a full accept queue drops
        the SYNs, the way a vanished container's address does."""
        gateway_ns = srns.emu.describe()["gateway"]["namespace"]
        swallow = subprocess.Popen(
            ["ip", "netns", "exec", gateway_ns, sys.executable, "-c",
             "import socket, time\n"
             "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(0); print(s.getsockname()[1], flush=True)\n"
             "held = socket.create_connection(s.getsockname(), timeout=1)  # the accept queue (backlog 0) is full\n"
             "print('full', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
        try:
            port = int(swallow.stdout.readline())
            assert swallow.stdout.readline().strip() == "full"
            bad = write_inventory(tmp_path / "hang.yaml", srns, extra_srns=[{"id": 108, "role": "server"}])
            with open(tmp_path / "ssh_config", "a") as config:
                config.write(f"\nHost jvtest-108\n  HostName 127.0.0.1\n  Port {port}\n  User root\n")
            testbed = colosseum_testbed(bad)
            started = time.monotonic()
            with pytest.raises(TestbedError) as failure:
                testbed.up(3)
            assert time.monotonic() - started < 60
            assert "jvtest-108" in str(failure.value) and "failed on 1 of 6 hosts" in str(failure.value)
            assert all(srns.log(alias) == [] for alias in SRNS)
        finally:
            swallow.kill()
            swallow.wait()

    def test_a_failed_rf_start_is_reported_and_the_scenario_is_stopped(self, srns, inventory):
        srns.set_control("rf-start-fails", True)
        testbed = colosseum_testbed(inventory)
        with pytest.raises(TestbedError, match="RF scenario 1009 did not start: Colosseum failed to schedule"):
            testbed.up(3)
        log = srns.log("jvtest-107")
        assert log[0].startswith("colosseumcli rf start 1009 -m ") and log[1] == "colosseumcli rf stop"
        assert stopped_rf(log)
        assert all(srns.log(alias) == [] for alias in SRNS if alias != "jvtest-107")
        nothing_running(srns, testbed, [f"{testbed.prefix}-{a}" for a in SRNS])

        stopped = json.loads((testbed.state_dir.parent / "rf-last-stop-jvtest.json").read_text())["stopped_wall"]
        with pytest.raises(TestbedError, match="did not start"):
            testbed.up(3)  # right away: the next rf start waits out the settle time after rf stop
        started = next(r["wall_ns"] for r in transcript(testbed) if r["command"].startswith("colosseumcli rf start"))
        assert started / 1e9 - stopped >= 1.0  # rf_stop_settle_s in the test inventory


class TestStandInsModelTheTraps:
    """The stand-ins answer as the real tools do where a first run would break (docs: notes on colosseumcli,
    the Wi-Fi image and SCOPE), so the testbed's fixes are tested against the behaviour, not assumed."""

    def run_in(self, srns, alias: str, *argv: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{srns.bin}:/usr/bin:/bin"}
        return subprocess.run(["ip", "netns", "exec", srns.by_alias[alias].namespace, *argv], capture_output=True,
                              text=True, env=env, timeout=30)

    def test_without_a_radio_map_the_lowest_srn_is_node_1_and_scope_elects_it_base_station(self, srns, tmp_path):
        srns.clear_logs()
        srns.set_control("rf-start-fails", False)
        assert "Scenario Start Time" in self.run_in(srns, "jvtest-107", "colosseumcli", "rf", "start", "1009").stdout
        table = self.run_in(srns, "jvtest-107", "colosseumcli", "rf", "radiomap").stdout
        assert "| Node 1 | 102 " in table  # the end-user UE, not the base station 107
        config = tmp_path / "scope.conf"
        config.write_text(scope_config_text(1, colosseumcli=True))
        scope = subprocess.Popen(["ip", "netns", "exec", srns.by_alias["jvtest-102"].namespace,
                                  str(srns.root / "radio_api" / "scope_start.py"), "--config-file", str(config)],
                                 stdout=subprocess.PIPE, text=True, env={"PATH": f"{srns.bin}:/usr/bin:/bin"})
        try:
            assert scope.stdout.readline().strip() == "RF node 1: elected base station"
        finally:
            scope.kill()
            scope.wait()
            self.run_in(srns, "jvtest-102", "ip", "link", "del", "srs_spgw_sgi")
            self.run_in(srns, "jvtest-107", "colosseumcli", "rf", "stop")

    def test_route_setup_without_the_peer_srn_fails(self, srns):
        script = str(srns.root / "interactive_scripts" / "route_setup.sh")
        assert self.run_in(srns, "jvtest-104", script).returncode != 0
        assert self.run_in(srns, "jvtest-104", script, "105").returncode == 0

    def test_a_failed_rf_start_exits_0_and_says_so_only_in_its_text(self, srns):
        srns.set_control("rf-start-fails", True)
        try:
            started = self.run_in(srns, "jvtest-107", "colosseumcli", "rf", "start", "1009")
        finally:
            srns.set_control("rf-start-fails", False)
        assert started.returncode == 0 and "failed to schedule" in started.stdout


def test_fab_experiment_on_colosseum_is_the_whole_job(srns, inventory, tmp_path, monkeypatch):
    """`fab experiment --testbed colosseum --inventory FILE --scenario S`: up (RF scenario, radios, routes),
    deploy, the scenario's prompts and kill, collection from every SRN, analysis, teardown."""
    from experiment.orchestrate import experiment
    from tests.conftest import _save_tiny

    monkeypatch.setenv("JARVIS_CACHE", str(tmp_path / "cache"))
    model = _save_tiny("llama", tmp_path / "tiny-llama")
    scenario = tmp_path / "colosseum.yaml"
    scenario.write_text(f"name: on-colosseum\nmodel: {model}\nnodes: 3\nprompts: [the cat sat on the]\n"
                        "max_new_tokens: 6\nlinks: {'1': server, '2-3': wifi}\n"
                        "faults:\n  - {at_token: 3, action: kill, node: 2}\n")
    prefix = f"jv-tcol-{uuid.uuid4().hex[:6]}"
    run = experiment("colosseum", str(scenario), out=str(tmp_path / "run"), prefix=prefix, inventory=str(inventory))
    assert all((run / name).exists() for name in RUN_FILES) and (run / "report.md").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["testbed"] == "colosseum" and summary["sessions"][0]["tokens"] == 6
    assert "kill,node2" in (run / "faults.csv").read_text()
    for node in ("user", "node1", "node2", "node3"):  # every SRN's log came back, node2's up to its kill
        assert (run / "nodes" / node / "events.jsonl").stat().st_size > 0
    nothing_running(srns, ColosseumTestbed(prefix, inventory=inventory), [f"{prefix}-{a}" for a in SRNS])
