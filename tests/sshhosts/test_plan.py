"""The SSH testbed as data (no root, no network): the inventory, the tc netem commands per host, the dry run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiment.orchestrate import scenario_for
from experiment.scenario import ScenarioError
from rpi.inventory import load_inventory as load_pis
from sshhosts.inventory import load_inventory
from sshhosts.links import BareLinks, LinkState, clear_commands, host_commands, ifb_name
from sshhosts.testbed import SshTestbed
from testbed.interface import PROCESS_FAULTS, TestbedError
from testbed.netem import netem_argv
from testbed.profiles import directions, load_profiles

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "ssh.example.yaml"
BASE = {"user": "lab", "hosts": [{"name": "a", "role": "user"}, {"name": "b"}, {"name": "c"}]}
PROFILES = load_profiles()
STATE = LinkState({"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"},
                  {"a": None, "b": PROFILES["cellular"], "c": PROFILES["wifi"]})
ON_B = {"interface": "eth1", "ifb": "jvifb123456", "sudo": "sudo -n "}


def inventory(tmp_path: Path, data: dict, loader=load_inventory):
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return loader(path)


class TestInventory:
    def test_the_example_loads_with_per_host_interfaces_addresses_and_profiles(self):
        inv = load_inventory(EXAMPLE)
        assert inv.user_host.name == "control-nuc" and [h.name for h in inv.layer_hosts] == [
            "jetson1", "jetson2", "server1"]
        assert inv.interface_of("control-nuc") == "eth0" and inv.interface_of("jetson1") == "eth1"
        assert inv.profile_of("jetson1") == "wifi" and inv.profile_of("jetson2") == "cellular"
        assert inv.by_name("server1").address == "192.168.7.21" and inv.sudo == "sudo -n "

    @pytest.mark.parametrize("change, problem", [
        ({"profile": "wifii"}, r"unknown link profile\(s\) \['wifii'\]"),
        ({"hosts": [{"name": "a", "role": "user"}, {"name": "b", "address": "10.0.0.300"}]}, r"hosts\.1\.address"),
        ({"hosts": [{"name": "a", "role": "user"}, {"name": "b", "interface": "eth0; reboot"}]},
         r"hosts\.1\.interface"),
        ({"hosts": [{"name": "a"}, {"name": "b"}]}, "exactly one host needs role user"),
        ({"shaping": "tbf"}, r"shaping \(line"),
        ({"password": "hunter2"}, "password would put a secret"),
    ])
    def test_bad_fields_are_refused_with_their_line(self, tmp_path, change, problem):
        with pytest.raises(TestbedError, match=problem):
            inventory(tmp_path, {**BASE, **change})

    def test_a_pi_inventory_refuses_fields_its_wifi_decides(self, tmp_path):
        pis = {"user": "lab", "wifi": {"ssid": "lab", "country": "DE"}, "hosts": BASE["hosts"]}
        assert inventory(tmp_path, pis, load_pis).interface_of("b") == "wlan0"
        with pytest.raises(TestbedError, match="a Pi's data plane is its Wi-Fi"):
            inventory(tmp_path, {**pis, "interface": "eth0"}, load_pis)
        with pytest.raises(TestbedError, match="shaping"):
            inventory(tmp_path, {**pis, "shaping": "netem"}, load_pis)


class TestNetemCommands:
    def test_chain_traffic_is_shaped_both_ways_and_everything_else_left_alone(self):
        up, down = directions(PROFILES["cellular"])
        commands = host_commands(STATE, "b", **ON_B)
        assert commands == [
            "sudo -n tc qdisc replace dev eth1 root handle 1: prio bands 2 priomap " + " ".join(["1"] * 16),
            "sudo -n " + " ".join(netem_argv("eth1", up, parent="1:1", handle="10:")),
            "sudo -n tc filter del dev eth1 parent 1: || true",
            "sudo -n tc filter add dev eth1 parent 1: protocol ip prio 1 u32 match ip dst 10.0.0.1/32 flowid 1:1",
            "sudo -n tc filter add dev eth1 parent 1: protocol ip prio 1 u32 match ip dst 10.0.0.3/32 flowid 1:1",
            "sudo -n ip link add jvifb123456 type ifb 2>/dev/null || true", "sudo -n ip link set jvifb123456 up",
            "sudo -n tc qdisc replace dev eth1 handle ffff: ingress",
            "sudo -n " + " ".join(netem_argv("jvifb123456", down)),
            "sudo -n tc filter del dev eth1 parent ffff: || true",
            "sudo -n tc filter add dev eth1 parent ffff: protocol ip prio 1 u32 match ip src 10.0.0.1/32 "
            "action mirred egress redirect dev jvifb123456",
            "sudo -n tc filter add dev eth1 parent ffff: protocol ip prio 1 u32 match ip src 10.0.0.3/32 "
            "action mirred egress redirect dev jvifb123456"]
        assert "delay 88000us" in commands[1] and "rate 2640000bit" in commands[1]  # cellular's uplink
        assert "delay 130000us" in commands[8] and "rate 3040000bit" in commands[8]  # and downlink

    def test_an_unshaped_host_keeps_the_bare_link_but_can_still_drop(self):
        commands = host_commands(STATE, "a", **ON_B)
        assert not any("netem" in c or "mirred" in c for c in commands)
        cut = host_commands(STATE.replace(down=frozenset({"a"})), "a", **ON_B)
        assert sum(c.endswith("action drop") for c in cut) == 4  # both peers, both directions

    def test_a_cut_drops_on_the_cut_host_and_a_partition_on_both_sides(self):
        down = STATE.replace(down=frozenset({"b"}))
        assert down.dropped("b") == ["a", "c"] and down.dropped("a") == [] and down.dropped("c") == []
        split = STATE.replace(groups={"c": 1})
        assert split.dropped("a") == ["c"] and split.dropped("b") == ["c"] and split.dropped("c") == ["a", "b"]
        assert LinkState.from_dict(split.to_dict()) == split

    def test_teardown_removes_what_was_made_and_names_fit_the_kernel(self):
        assert clear_commands(**ON_B) == ["sudo -n tc qdisc del dev eth1 root || true",
                                          "sudo -n tc qdisc del dev eth1 ingress || true",
                                          "sudo -n ip link del jvifb123456 || true"]
        names = {ifb_name(f"jv-ssh-{i}") for i in range(200)}
        assert len(names) == 200 and all(len(n) <= 15 for n in names)

    def test_unshaped_links_take_no_profiles_and_no_link_faults(self):
        with pytest.raises(TestbedError, match="`shaping: none`"):
            BareLinks().check({"a": None, "b": PROFILES["wifi"]})
        assert BareLinks().faults == PROCESS_FAULTS


def test_a_scenario_with_link_faults_is_refused_on_unshaped_hosts_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(yaml.safe_dump({**BASE, "shaping": "none"}))
    scenario = tmp_path / "cut.yaml"
    scenario.write_text("name: cut\nnodes: 2\nprompts: [hi]\nfaults:\n"
                        "  - {at_token: 2, action: link_down, node: 2, duration: 1}\n")
    testbed = SshTestbed("jv-unshaped", inventory=hosts)
    with pytest.raises(ScenarioError, match=r"faults\.0\.action \(line 5\): the ssh testbed cannot link down"):
        scenario_for(str(scenario), testbed)
    hosts.write_text(yaml.safe_dump(BASE))
    assert scenario_for(str(scenario), SshTestbed("jv-shaped", inventory=hosts)).faults[0].action == "link_down"


def fab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "JARVIS_STATE": str(tmp_path / "state"),
           "HOME": str(tmp_path)}
    return subprocess.run([str(Path(sys.executable).parent / "fab"), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_fab_deploy_and_up_dry_runs_print_every_command_per_host_without_connecting(tmp_path):
    out = fab(tmp_path, "deploy", "--testbed", "ssh", "--inventory", str(EXAMPLE), "--dry-run")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("# SSH hosts dry run: 4 hosts (run <run>); nothing below was executed.")
    assert "jetson2 (node2, ssh jetson2.lab, link cellular, logs in /home/jarvis/jarvis/runs/<run>)" in text
    assert "server1 (node3, ssh 10.0.0.21, link server, logs in" in text  # every layer host by default
    for host, interface in (("control-nuc", "eth0"), ("jetson1", "eth1")):
        assert f"[address] ip -4 -o addr show dev {interface}" in text and f"<{interface} of {host}>" in text
    assert "[address] # data address from the inventory: 192.168.7.21" in text
    assert text.count("[shape] sudo -n tc qdisc replace dev eth1 parent 1:1 handle 10: netem") == 2
    assert "[deploy] PYTHONUNBUFFERED=1 setsid nohup env" in text and "[teardown] sudo -n ip link del jvifb" in text
    assert not (tmp_path / "state").exists()

    up = fab(tmp_path, "up", "--testbed", "ssh", "--inventory", str(EXAMPLE), "--nodes", "1", "--links", "1=server",
             "--dry-run")
    assert up.returncode == 0, up.stderr
    assert "jetson1 (node1, ssh jetson1.lab, link server," in up.stdout and "jetson2" not in up.stdout
    pis = fab(tmp_path, "deploy", "--testbed", "rpi", "--inventory", str(REPO / "inventories" / "rpi.example.yaml"),
              "--dry-run")
    assert pis.returncode == 0, pis.stderr
    assert "pi7 (node7, ssh 192.168.1.57, link unshaped, logs in /home/jarvis/jarvis/runs/<run>)" in pis.stdout
    assert "[provision] if command -v raspi-config" in pis.stdout and "[clock] chronyc tracking" in pis.stdout
    assert "[deploy] sudo -n systemctl start jarvis-jv-rpi-node1.service" in pis.stdout
    assert not (tmp_path / "state").exists()
