"""The SSH testbed end to end against emulated lab hosts: real sshd behind a ProxyJump bastion, real payload.

What is checked: the dry run's plan is exactly what runs on each host (the
transcript of commands sent, and the STAND-IN ``tc`` on each host logging
what arrived); a fault changes the data plane of only the hosts it must; a
real run with shaped links, a degrade, a pause and a link cut completes and
replays through the oracle; clock offsets are measured; a host that is off
is named and nothing starts; a venv without the pins is refused with the
fix; ``down`` leaves nothing running and no shaping behind.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiment.deploy import deploy
from experiment.replay import check_run
from experiment.run import Fault, run_job
from payload.prepare import load_manifest
from payload.routing import even_placement
from sshhosts.links import LinkState, host_commands, ifb_name
from sshhosts.testbed import SshTestbed
from testbed.interface import FaultKind, TestbedError
from testbed.profiles import directions, load_profiles

from tests.sshhosts.conftest import HOSTS, MISSING, EmulatedLabLinks, write_inventory
from tests.follow_check import assert_follows

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]
PROFILES = load_profiles()


def quiet(_: str) -> None:
    pass


def ssh_testbed(inventory: Path, **options) -> SshTestbed:
    return SshTestbed(f"jv-tssh-{uuid.uuid4().hex[:6]}", inventory=inventory, progress=quiet, **options)


def sent(testbed: SshTestbed, since: int = 0) -> list[dict]:
    """The commands sent to the hosts (the transcript), from entry ``since`` on."""
    return [json.loads(line) for line in testbed.state.transcript.read_text().splitlines()][since:]


def commands_on(records: list[dict], host: str) -> list[str]:
    return [r["command"] for r in records if r["host"] == host]


def tc_logged(lab, alias: str) -> list[str]:
    return [line for line in lab.log(alias) if line.startswith("tc ")]


def test_the_dry_run_is_what_runs_and_a_fault_reshapes_only_the_hosts_it_must(lab, tmp_path):
    lab.clear_logs()
    inventory = write_inventory(tmp_path / "hosts.yaml", lab, profile="wifi")
    testbed = ssh_testbed(inventory)
    hosts = testbed.up(2, {2: PROFILES["server"]})
    try:
        planned = testbed.command_plan(2, {2: PROFILES["server"]}, run=testbed.state.load()["run"])
        addresses = {h.ssh_host: h.address for h in hosts}
        assert addresses["lab-b"] == lab.by_alias["lab-b"].address  # given in the inventory, the others read
        assert [h.profile for h in hosts] == ["wifi", "wifi", "server"]

        def real(command: str) -> str:
            for name, ip in addresses.items():
                command = command.replace(f"<data0 of {name}>", ip)
            return command

        work = {name: Path(testbed.hosts()[i].workdir) for i, name in enumerate(HOSTS)}
        for name in HOSTS:
            expected = [real(c) for phase in ("check", "provision", "prepare", "address", "reach", "shape")
                        for c in planned.commands(name, phase)]
            put_mkdir = f"mkdir -p {shlex.quote(str(work[name] / 'code'))}"  # SshShell.put's own, before the put
            assert [c for c in commands_on(sent(testbed), name) if c != put_mkdir] == expected, name
            shaped = [c for c in planned.commands(name, "shape") if c.startswith("tc ")]
            assert len(tc_logged(lab, name)) == len(shaped) > 0, name  # each tc command reached its host

        state = LinkState(addresses, {n: PROFILES[p] for n, p in zip(HOSTS, ["wifi", "wifi", "server"])})
        interface = {"interface": "data0", "ifb": ifb_name(testbed.prefix), "sudo": ""}
        mark = len(sent(testbed))
        testbed.inject(FaultKind.LINK_DOWN, [hosts[1]])
        down = state.replace(down=frozenset({"lab-a"}))
        assert {r["host"] for r in sent(testbed, mark)} == {"lab-a"}  # a cut touches the cut host alone
        assert commands_on(sent(testbed, mark), "lab-a") == host_commands(down, "lab-a", **interface)
        assert sum("action drop" in c for c in commands_on(sent(testbed, mark), "lab-a")) == 4  # 2 peers, 2 ways

        mark = len(sent(testbed))
        testbed.inject(FaultKind.DEGRADE, [hosts[2]], profile=PROFILES["cellular"])
        degraded = down.replace(profiles={**down.profiles, "lab-b": PROFILES["cellular"]})
        assert {r["host"] for r in sent(testbed, mark)} == {"lab-b"}
        assert commands_on(sent(testbed, mark), "lab-b") == host_commands(degraded, "lab-b", **interface)

        mark = len(sent(testbed))
        testbed.inject(FaultKind.PARTITION, [hosts[2]])
        assert {r["host"] for r in sent(testbed, mark)} == {"lab-user", "lab-b"}  # lab-a drops everyone already
        split = degraded.replace(groups={"lab-b": 1})
        assert split.dropped("lab-user") == ["lab-b"] and split.dropped("lab-b") == ["lab-user", "lab-a"]
        for name in ("lab-user", "lab-b"):
            assert commands_on(sent(testbed, mark), name) == host_commands(split, name, **interface)

        testbed.inject(FaultKind.PARTITION, [])
        testbed.inject(FaultKind.LINK_UP, [hosts[1]])
        assert json.loads(testbed.state.path.read_text())["links"] == degraded.replace(down=frozenset()).to_dict()
        ifb = ifb_name(testbed.prefix)
        assert subprocess.run(["ip", "-n", lab.by_alias["lab-a"].namespace, "link", "show", ifb],
                              capture_output=True).returncode == 0
        assert_follows(testbed, hosts[1])  # the live dashboard's view of a host's log, over its SSH connection
    finally:
        testbed.down()
    for name in HOSTS:
        assert tc_logged(lab, name)[-2:] == ["tc qdisc del dev data0 root", "tc qdisc del dev data0 ingress"]
        assert subprocess.run(["ip", "-n", lab.by_alias[name].namespace, "link", "show", ifb],
                              capture_output=True).returncode != 0, "the ifb device is gone"
    assert not testbed.state.exists()
    testbed.down()  # safe to repeat


def test_a_run_on_shaped_links_with_a_degrade_a_pause_and_a_cut_completes_and_replays(lab, tmp_path, tiny_prepared):
    links = EmulatedLabLinks(lab.emu, dict(lab.by_alias))
    testbed = ssh_testbed(write_inventory(tmp_path / "hosts.yaml", lab), link_control=lambda tb, inv: links)
    prepared = tiny_prepared("llama")
    hosts = testbed.up(2, {2: PROFILES["server"]})
    try:
        deployment = deploy(testbed, prepared, even_placement(load_manifest(prepared)["num_layers"], 2),
                            model="tiny-llama", progress=quiet)
        faults = [Fault("degrade", (2,), at_token=2, profile=PROFILES["cellular"]),
                  Fault("pause", (1,), at_token=3), Fault("resume", (1,), at_token=4),
                  Fault("link_down", (2,), at_token=6)]
        run = run_job(testbed, deployment, {"prompts": ["the cat sat on the"], "max_new_tokens": 8}, faults,
                      tmp_path / "run", stream=quiet)
    finally:
        testbed.down()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["testbed"] == "ssh" and summary["sessions"][0]["tokens"] == 8
    recorded = pd.read_csv(run / "faults.csv")
    assert sorted(recorded["action"]) == ["degrade", "link_down", "pause", "resume"]
    assert all(check.ok for check in check_run(run, prepared)), "the run replays through the monolithic model"

    # The degrade took effect on the wire: hops into node2 before it cross a server link, after it cellular.
    hops = pd.read_csv(run / "hops.csv")
    into = hops[(hops["dst"] == 2) & hops["acked"]]
    degraded_at = int(recorded.loc[recorded["action"] == "degrade", "effective_wall_ns"].iloc[0])
    before, after = into[into["t4_wall_ns"] < degraded_at], into[into["t1_wall_ns"] > degraded_at]  # (not in flight)
    assert len(before) and len(after)
    cellular_rtt_ms = sum(d.delay_ms for d in directions(PROFILES["cellular"]))
    assert before["rtt_ns"].max() / 1e6 < 50 and after["rtt_ns"].min() / 1e6 >= cellular_rtt_ms * 0.95

    described = json.loads((run / "testbed.json").read_text())
    assert described["links"]["down"] == ["lab-b"] and described["links"]["profiles"]["lab-b"]["name"] == "cellular"
    for when in ("before", "after"):  # the hosts share this machine's clock: offset 0 within its uncertainty
        readings = described["clock"][when]
        assert set(readings) == set(HOSTS)
        assert all(abs(r["offset_ms"]) <= r["uncertainty_ms"] + 0.05 for r in readings.values()), readings
    assert links.applied.down == frozenset() and links.applied.groups == {}, "down undid the cut"
    for host in hosts:
        pids = subprocess.run(["ip", "netns", "pids", lab.by_alias[host.ssh_host].namespace], capture_output=True,
                              text=True).stdout.split()
        assert not [p for p in pids if b"payload" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_a_host_that_is_off_is_named_and_nothing_changes(lab, tmp_path):
    lab.clear_logs()
    testbed = ssh_testbed(write_inventory(tmp_path / "hosts.yaml", lab, extra_hosts=[{"name": MISSING}]))
    with pytest.raises(TestbedError) as failure:
        testbed.up(3)
    assert "checking the hosts failed on 1 of 4 hosts" in str(failure.value)
    assert f"{MISSING}: cannot log in" in str(failure.value)
    assert all(tc_logged(lab, name) == [] for name in HOSTS), "nothing was shaped"
    assert not testbed.state.exists()


def test_a_venv_without_the_pins_is_refused_with_the_fix(lab, tmp_path):
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    testbed = ssh_testbed(write_inventory(tmp_path / "hosts.yaml", lab, venv=str(bare)))
    with pytest.raises(TestbedError, match=r"provisioning failed on 3 of 3 hosts(.|\n)*the venv .*bare-venv has "
                                           r"not all of them; JARVIS needs \{'torch'.*set `provision: true`"):
        testbed.up(2)
    assert not testbed.state.exists()


def test_a_login_through_the_agent_alone(lab, tmp_path, monkeypatch):
    """No key in the inventory or the ssh config: the key is in the user's ssh-agent, as on a lab laptop."""
    inventory = write_inventory(tmp_path / "hosts.yaml", lab)
    config = tmp_path / "ssh_config"
    key = next(line.split()[1] for line in config.read_text().splitlines() if "IdentityFile" in line)
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if "IdentityFile" not in line and "IdentitiesOnly" not in line) + "\n")
    socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket))
        without_agent = ssh_testbed(inventory)
        with pytest.raises(TestbedError, match="lab-a: cannot log in"):
            without_agent._shell(without_agent.inventory(), "lab-a", "probe").run("true")
        subprocess.run(["ssh-add", "-q", key], check=True, env={"SSH_AUTH_SOCK": str(socket)})
        data = yaml.safe_load(inventory.read_text())
        inventory.write_text(yaml.safe_dump({**data, "agent": True}))
        testbed = ssh_testbed(inventory)
        shell = testbed._shell(testbed.inventory(), "lab-a", "probe")
        try:
            assert shell.run("ip netns identify $$", cwd="/").stdout.strip() == lab.by_alias["lab-a"].namespace
        finally:
            testbed.down()
    finally:
        agent.terminate()
