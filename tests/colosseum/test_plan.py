"""The Colosseum backend as data (no root, no network): inventory checks, routes, command sequences, rf parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from colosseum import plan, rf, scope
from colosseum.inventory import load_inventory
from testbed.addresses import Address, parse_address
from colosseum.network import Route, SrnAddresses, plan_routes
from colosseum.testbed import ColosseumTestbed
from experiment.orchestrate import make_testbed
from testbed.profiles import LinkProfile
from testbed.interface import TestbedError
from rpi.testbed import RpiTestbed

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "colosseum.example.yaml"
BASE = {"team": "genesys", "image": "img", "rf_scenario": 1009,
        "srns": [{"id": 1, "role": "user", "radio": "wifi"}, {"id": 2, "role": "wifi"}]}


def inventory_file(tmp_path: Path, text: str | dict) -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(text if isinstance(text, str) else yaml.safe_dump(text, sort_keys=False))
    return path


def layout(nodes: int = 4, path: Path = EXAMPLE, **changes) -> plan.Layout:
    inventory = load_inventory(path).model_copy(update=changes)
    return plan.Layout.choose(inventory, "jv-c", "run1", nodes)


CELLULAR = {"team": "genesys", "image": "scope", "rf_scenario": 1017,
            "srns": [{"id": 12, "role": "user", "radio": "cellular-ue"}, {"id": 15, "role": "server"},
                     {"id": 14, "role": "cellular-ue"}, {"id": 31, "role": "cellular-bs"}]}


class TestRadioMap:
    """Without ``-m`` the lowest SRN number is RF node 1; SCOPE's base station must be node 1, its UEs next."""

    def test_the_base_station_is_node_1_and_its_ues_follow_whatever_the_srn_numbers(self, tmp_path):
        inv = load_inventory(inventory_file(tmp_path, CELLULAR))
        assert [s.id for s in inv.rf_order] == [31, 12, 14, 15]
        assert inv.radio_map == {"Node 1": {"SRN": 31, "RadioA": 1, "RadioB": 2},
                                 "Node 2": {"SRN": 12, "RadioA": 1, "RadioB": 2},
                                 "Node 3": {"SRN": 14, "RadioA": 1, "RadioB": 2},
                                 "Node 4": {"SRN": 15, "RadioA": 1, "RadioB": 2}}
        assert scope.elects_bs(1, inv.users_bs) and not any(scope.elects_bs(k, inv.users_bs) for k in (2, 3))

    def test_every_node_of_the_scenario_is_named_unused_ones_as_none(self, tmp_path):
        inv = load_inventory(inventory_file(tmp_path, {**CELLULAR, "rf_nodes": 6}))
        assert inv.radio_map["Node 5"] == "None" and inv.radio_map["Node 6"] == "None" and len(inv.radio_map) == 6
        with pytest.raises(TestbedError, match="rf_nodes is 3, but the inventory has 4 SRNs"):
            load_inventory(inventory_file(tmp_path, {**CELLULAR, "rf_nodes": 3}))

    def test_more_ues_than_a_scope_base_station_serves_is_refused_with_its_reason(self, tmp_path):
        srns = CELLULAR["srns"] + [{"id": 40 + i, "role": "cellular-ue"} for i in range(3)]
        with pytest.raises(TestbedError, match=r"SCOPE cellular scenario: RF node 1 is a base station with 4 UEs"):
            load_inventory(inventory_file(tmp_path, {**CELLULAR, "srns": srns}))
        assert load_inventory(inventory_file(tmp_path, {**CELLULAR, "srns": srns, "rf_scenario": 1009}))

    def test_rf_radiomap_is_read_back_and_a_different_mapping_is_named(self):
        table = ("+--------+-----+--------+--------+\n| Node   | SRN | RadioA | RadioB |\n"
                 "+--------+-----+--------+--------+\n| Node 1 | 12  | 1      | 2      |\n"
                 "| Node 2 | 31  | 1      | 2      |\n| Node 3 | None | 0     | 0      |\n"
                 "+--------+-----+--------+--------+")
        shown = rf.parse_radiomap(table)
        assert shown == {1: 12, 2: 31}
        wanted = rf.radio_map([31, 12], 3)
        assert rf.radiomap_mismatches(wanted, shown) == ["RF node 1 is SRN 12, not SRN 31",
                                                         "RF node 2 is SRN 31, not SRN 12"]
        assert rf.radiomap_mismatches(wanted, {1: 31, 2: 12}) == []


class TestLogins:
    def test_passwords_come_from_the_srn_then_its_image_then_the_inventory(self, tmp_path):
        data = {**BASE, "credentials": {"srn_password_env": "ALL", "image_password_env": {"wifi-img": "WIFI"}},
                "srns": [{"id": 1, "role": "user", "radio": "wifi", "password_env": "MINE"},
                         {"id": 2, "role": "wifi", "image": "wifi-img"}, {"id": 3, "role": "wifi"}]}
        inv = load_inventory(inventory_file(tmp_path, data))
        assert [inv.password_env_of(s) for s in inv.srns] == ["MINE", "WIFI", "ALL"]

    def test_an_ssh_config_whose_pattern_misses_the_srn_names_is_refused_before_any_login(self, tmp_path,
                                                                                         monkeypatch):
        monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))
        config = tmp_path / "ssh_config"
        config.write_text("Host colosseum-gw\n  HostName gw.colosseum.net\n\nHost srn-???\n  User root\n"
                          "  StrictHostKeyChecking no\n")
        data = {**BASE, "credentials": {"ssh_config": str(config), "agent": False}}
        testbed = ColosseumTestbed("jv-ssh", inventory=inventory_file(tmp_path, data), progress=lambda m: None)
        with pytest.raises(TestbedError, match=r"(?s)no `Host` pattern matching genesys-001, genesys-002.*"
                                               r"Host genesys-\*"):
            testbed.up(1)
        config.write_text("Host colosseum-gw\n  HostName 127.0.0.1\n  Port 9\n\nHost genesys-???\n  User root\n")
        with pytest.raises(TestbedError) as failure:  # now the pattern matches: it gets as far as logging in
            testbed.up(1)
        assert "Host` pattern" not in str(failure.value)


class TestInventory:
    def test_the_example_loads_with_node_order_user_first(self):
        inv = load_inventory(EXAMPLE)
        assert inv.name_of(inv.user_srn) == "genesys-102" and inv.rf_node.id == 101
        assert [inv.name_of(s) for s in inv.layer_srns] == ["genesys-103", "genesys-104", "genesys-105",
                                                            "genesys-101"]

    def test_a_bad_role_is_named_with_its_line(self, tmp_path):
        text = yaml.safe_dump(BASE, sort_keys=False).replace("role: wifi\n", "role: wiifi\n")
        with pytest.raises(TestbedError, match=r"srns\.1\.role \(line \d+\): Input should be 'user', 'wifi'"):
            load_inventory(inventory_file(tmp_path, text))

    @pytest.mark.parametrize("srns, message", [
        ([{"id": 1, "role": "user", "radio": "wifi"}, {"id": 2, "role": "user", "radio": "wifi"}],
         "exactly one SRN needs role user"),
        ([{"id": 1, "role": "user"}, {"id": 2, "role": "wifi"}], "needs `radio: wifi | cellular-ue | server`"),
        ([{"id": 1, "role": "user", "radio": "cellular-ue"}, {"id": 2, "role": "server"}],
         "need exactly one role cellular-bs"),
        ([{"id": 1, "role": "user", "radio": "wifi"}, {"id": 2, "role": "server"}], "exactly one Wi-Fi SRN with"),
        ([{"id": 1, "role": "user", "radio": "wifi"}, {"id": 1, "role": "wifi"}], "SRN ids repeat: \\[1\\]"),
        ([{"id": 1, "role": "user", "radio": "server"}, {"id": 2, "role": "server", "gateway": True}],
         "marks a Wi-Fi SRN"),
    ])
    def test_inconsistent_srns_are_explained(self, tmp_path, srns, message):
        with pytest.raises(TestbedError, match=message):
            load_inventory(inventory_file(tmp_path, {**BASE, "srns": srns}))

    def test_a_secret_in_the_inventory_is_refused(self, tmp_path):
        data = {**BASE, "credentials": {"password": "scope"}}
        with pytest.raises(TestbedError, match="credentials.password would put a secret in the"):
            load_inventory(inventory_file(tmp_path, data))

    def test_paths_name_the_srn_where_asked(self, tmp_path):
        inv = load_inventory(inventory_file(tmp_path, {**BASE, "paths": {"logs": "/x/{srn}/logs"}}))
        assert inv.paths.on("genesys-002").logs == "/x/genesys-002/logs" and inv.paths.on("a").share == "/share"


UE, S, GW, W, BS = "genesys-102", "genesys-103", "genesys-104", "genesys-105", "genesys-101"
ADDRESSES = {
    UE: SrnAddresses(Address("172.16.0.2", 24)),
    BS: SrnAddresses(Address("172.16.0.1", 24), Address("172.30.1.101", 24)),
    S: SrnAddresses(Address("172.30.1.103", 24), Address("172.30.1.103", 24)),
    GW: SrnAddresses(Address("10.20.0.104", 24), Address("172.30.1.104", 24)),
    W: SrnAddresses(Address("10.20.0.105", 24)),
}


def specs(routes: list[Route]) -> list[str]:
    return [r.spec() for r in routes]


class TestRoutes:
    def test_every_pair_crosses_its_bridges_with_host_routes(self):
        plane = plan_routes(load_inventory(EXAMPLE), [UE, S, GW, W, BS], ADDRESSES)
        via_bs, via_gw = "via 172.30.1.101 dev col0", "via 172.30.1.104 dev col0"
        assert {n: specs(r) for n, r in plane.routes.items()} == {
            UE: [f"{ip}/32 via 172.16.0.1 dev tun_srsue" for ip in ("10.20.0.104", "10.20.0.105", "172.30.1.103")],
            S: [f"10.20.0.104/32 {via_gw}", f"10.20.0.105/32 {via_gw}", f"172.16.0.1/32 {via_bs}",
                f"172.16.0.2/32 {via_bs}"],
            GW: [f"172.16.0.1/32 {via_bs}", f"172.16.0.2/32 {via_bs}"],
            W: [f"{ip}/32 via 10.20.0.104 dev tap0" for ip in ("172.16.0.1", "172.16.0.2", "172.30.1.103")],
            BS: [f"10.20.0.104/32 {via_gw}", f"10.20.0.105/32 {via_gw}"],
        }
        assert plane.forwarders == [BS, GW]

    def test_a_radio_only_bridge_still_forwards_and_routes(self):
        plane = plan_routes(load_inventory(EXAMPLE), [UE, S], ADDRESSES)
        assert {n: specs(r) for n, r in plane.routes.items()} == {
            UE: ["172.30.1.103/32 via 172.16.0.1 dev tun_srsue"], S: ["172.16.0.2/32 via 172.30.1.101 dev col0"]}
        assert plane.forwarders == [BS]

    def test_a_ue_with_a_host_address_reaches_the_base_station_onlink(self):
        addresses = {**ADDRESSES, UE: SrnAddresses(Address("172.16.0.2", 32))}
        plane = plan_routes(load_inventory(EXAMPLE), [UE, S], addresses)
        assert specs(plane.routes[UE]) == ["172.30.1.103/32 via 172.16.0.1 dev tun_srsue onlink"]

    def test_nodes_on_one_network_need_no_routes(self):
        plane = plan_routes(load_inventory(EXAMPLE), [GW, W], ADDRESSES)
        assert plane.routes == {} and plane.forwarders == []

    def test_addresses_are_read_from_ip_one_line_output(self):
        out = "7: tap0    inet 10.20.0.105/24 brd 10.20.0.255 scope global tap0\\       valid_lft forever"
        assert parse_address(out) == Address("10.20.0.105", 24) and parse_address("") is None


INFO = """+---------------------+----------+
| Field               | Value    |
+---------------------+----------+
| scenario_id         | 1009     |
| scenario_status     | Active   |
| scenario_start_time | 22:30:45 |
| scenario_cycle      | True     |
| Number of Nodes     | 10       |
+---------------------+----------+"""


class TestRf:
    def test_info_table_is_read_and_checked(self):
        info = rf.parse_info(INFO)
        assert info["scenario_id"] == "1009" and info["Number of Nodes"] == "10"
        assert rf.confirm_running(info, 1009) is None
        assert "not 1017" in rf.confirm_running(info, 1017)
        assert "state CLEARED" in rf.confirm_running({**info, "scenario_status": "CLEARED"}, 1009)

    def test_start_success_is_read_from_the_text_since_the_exit_code_is_always_zero(self):
        assert rf.started("Scenario Start Time is 22:30:45\n")
        assert not rf.started("Colosseum failed to schedule the scenario at the Resource Manager\n")

    def test_stop_is_complete_when_cleared_or_when_nothing_ran(self):
        assert rf.stop_complete({"scenario_status": "CLEARED"}) and rf.stop_complete({})
        assert not rf.stop_complete({"scenario_status": "Active"})


class TestCommands:
    def test_checks_follow_the_role(self):
        lay = layout(3)
        assert [c.command for c in plan.check_commands(lay, W)] == [
            "true", "command -v tmux", "test -x /root/interactive_scripts/tap_setup.sh",
            "test -x /root/interactive_scripts/route_setup.sh", "test -x /root/interactive_scripts/modem_start.sh",
            plan.check_commands(lay, W)[-1].command]
        assert [c.command for c in plan.check_commands(lay, BS)] == [
            "true", "command -v colosseumcli", "command -v tmux", "test -f /root/radio_api/scope_start.py",
            "ip link show col0"]  # radio only: no python check; JARVIS ships the SCOPE config
        own = layout(3, EXAMPLE, scope_config="radio_interactive.conf")
        assert "test -f /root/radio_api/radio_interactive.conf" in [c.command for c in plan.check_commands(own, BS)]

    def test_radios_start_in_tmux_with_their_output_in_the_run_logs(self):
        lay = layout(3)
        assert plan.radio_commands(lay, W) == [
            "cd /root/interactive_scripts && ./tap_setup.sh", "cd /root/interactive_scripts && ./route_setup.sh 104",
            "tmux -L jv-c-genesys-105 new-session -d -s radio 'cd /root/interactive_scripts && ./modem_start.sh "
            "2>&1 | tee -a /logs/run1/radio.log'"]
        assert plan.radio_commands(lay, UE) == [
            "tmux -L jv-c-genesys-102 new-session -d -s radio 'cd /root/radio_api && python3 scope_start.py "
            "--config-file jarvis-scope.conf 2>&1 | tee -a /logs/run1/radio.log'"]
        assert plan.radio_commands(lay, S) == []
        assert plan.radio_order(lay) == [[BS], [UE, GW, W]]

    def test_the_nas_copy_runs_as_srn_user(self):
        lay = layout(3, EXAMPLE)
        assert plan.stage_commands(lay, S, nas_has_model=True) == [
            "su srn-user -c 'test -d /share/jarvis-models/gemma3-270m'",
            "su srn-user -c 'cp -r /share/jarvis-models/gemma3-270m /tmp/run1-genesys-103-model'",
            "cp -r /tmp/run1-genesys-103-model/. /root/jarvis-model/ && rm -rf /tmp/run1-genesys-103-model"]
        assert plan.stage_commands(lay, BS, nas_has_model=True) == []  # holds no layers

    def test_teardown_undoes_exactly_the_recorded_things(self):
        assert plan.teardown_commands(layout(3), GW, radio=True, routes=["172.16.0.2/32 via 172.30.1.101 dev col0"],
                                      forwarding="0", pid=4242) == [
            "ps -o args= -p 4242 | grep -q payload && kill -KILL -- -4242", "tmux -L jv-c-genesys-104 kill-server",
            "ip route del 172.16.0.2/32 via 172.30.1.101 dev col0", "sysctl -w net.ipv4.ip_forward=0"]

    def test_scenario_links_must_match_the_roles(self):
        assert plan.link_mismatches(layout(3), {1: "server", 2: "wifi", 3: "wifi"}) == []
        assert plan.link_mismatches(layout(3), {1: "wifi", 5: "wifi"}) == [
            "  node 1 (genesys-103) is a server SRN: its link is 'server', the scenario asks for 'wifi'",
            "  node 5: not part of this run (3 layer nodes)"]


class TestDryRun:
    def test_prints_every_phase_per_srn_without_touching_anything(self, tmp_path, monkeypatch):
        monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))
        testbed = ColosseumTestbed("jv-dry", inventory=EXAMPLE, progress=lambda m: None)
        text = testbed.dry_run(3)
        assert not (tmp_path / "state").exists()
        assert "genesys-101 (cellular-bs, radio only, logs in /logs/<run>)" in text
        assert "  [rf] colosseumcli rf start 1017 -m '/logs/<run>/radiomap.json' -c" in text
        assert "  [rf] colosseumcli rf radiomap" in text and "  [teardown] colosseumcli rf stop" in text
        assert '"Node 1": {"SRN": 101, "RadioA": 1, "RadioB": 2}, "Node 2": {"SRN": 102' in text  # BS, then its UE
        assert "  [prepare] # put JARVIS's SCOPE config (iperf off, slicing off, users-bs 1) -> " \
               "/root/radio_api/jarvis-scope.conf" in text
        assert "  [route] ip route replace <tun_srsue of genesys-102>/32 via <col0 of genesys-101> dev col0" in text
        assert "  [service] PYTHONUNBUFFERED=1 setsid nohup env 'PYTHONPATH=/logs/<run>/code' HF_HUB_OFFLINE=1 " \
               "/root/jarvis-venv/bin/python -m payload.node --config node.json > service.out" in text

    def test_fab_up_dry_run(self, tmp_path):
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "JARVIS_STATE": str(tmp_path / "state"),
               "HOME": str(tmp_path)}
        out = subprocess.run([str(Path(sys.executable).parent / "fab"), "up", "--testbed", "colosseum", "--inventory",
                              str(EXAMPLE), "--nodes", "2", "--dry-run"], capture_output=True, text=True, cwd=REPO,
                             env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("# Colosseum dry run: team genesys, RF scenario 1017")

    def test_too_many_nodes_for_the_inventory(self):
        with pytest.raises(TestbedError, match="has 4 SRNs besides the end-user SRN; cannot run 5"):
            ColosseumTestbed("jv-dry", inventory=EXAMPLE).dry_run(5)


class TestSelection:
    def test_make_testbed_builds_both_backends(self, tmp_path, monkeypatch):
        monkeypatch.setenv("JARVIS_STATE", str(tmp_path))
        colosseum = make_testbed("colosseum", inventory=str(EXAMPLE))
        rpi = make_testbed("rpi", prefix="jv-pis")
        assert isinstance(colosseum, ColosseumTestbed) and colosseum.prefix == "jv-colosseum"
        assert isinstance(rpi, RpiTestbed) and rpi.prefix == "jv-pis"

    def test_a_missing_password_variable_is_named_before_connecting(self, tmp_path, monkeypatch):
        monkeypatch.setenv("JARVIS_STATE", str(tmp_path))
        monkeypatch.delenv("JV_NO_SUCH_PASSWORD", raising=False)
        path = inventory_file(tmp_path, {**BASE, "credentials": {"srn_password_env": "JV_NO_SUCH_PASSWORD",
                                                                 "ssh_config": None}})
        with pytest.raises(TestbedError, match=r"password is in \$JV_NO_SUCH_PASSWORD, but that environment"):
            ColosseumTestbed("jv-pw", inventory=path).up(1)
        assert not (tmp_path / "colosseum").exists()

    def test_without_an_inventory_the_error_says_how_to_give_one(self, tmp_path, monkeypatch):
        monkeypatch.setenv("JARVIS_STATE", str(tmp_path))
        with pytest.raises(TestbedError, match="pass --inventory FILE"):
            ColosseumTestbed("jv-none").up(2, {1: LinkProfile("wifi")})
        ColosseumTestbed("jv-none").down()  # nothing up: nothing to do


class TestImage:
    """Containers have no internet: the image is built from wheels staged on the NAS, then snapshotted."""

    def test_the_build_uses_only_the_nas_wheels_checks_the_imports_then_snapshots(self):
        from colosseum import image

        requirements = image.payload_requirements()
        assert [r.split("==")[0] for r in requirements][:3] == ["torch", "transformers", "safetensors"]
        commands = image.build_commands(image.ImagePlan("genesys-103", "jarvis-v1", "/share/jarvis-wheels"),
                                        requirements)
        assert commands[0] == "su srn-user -c 'cp -r /share/jarvis-wheels /tmp/jarvis-v1-wheels'"
        assert "--no-index --find-links /tmp/jarvis-v1-wheels" in commands[2]
        assert commands[-1] == "colosseumcli snapshot jarvis-v1"
        download = image.wheels_command(requirements, "w")
        assert "--only-binary=:all:" in download and "--index-url https://download.pytorch.org/whl/cpu" in download

    @pytest.mark.parametrize("name", ["has space", "under_score", "x" * 33, ""])
    def test_a_name_colosseumcli_snapshot_refuses_is_refused_first(self, name):
        from colosseum import image

        with pytest.raises(TestbedError, match="letters, digits and '-'"):
            image.ImagePlan("genesys-103", name, "/share/w")

    def test_fab_colosseum_image_dry_run(self, tmp_path):
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "JARVIS_STATE": str(tmp_path / "state"),
               "HOME": str(tmp_path)}
        out = subprocess.run([str(Path(sys.executable).parent / "fab"), "colosseum-image", "--inventory",
                              str(EXAMPLE), "--srn", "103", "--name", "jarvis-v1", "--dry-run"],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("# Colosseum image jarvis-v1 built on genesys-103")
        assert "  colosseumcli snapshot jarvis-v1" in out.stdout
        bad = subprocess.run([str(Path(sys.executable).parent / "fab"), "colosseum-image", "--inventory",
                              str(EXAMPLE), "--srn", "999", "--name", "jarvis-v1", "--dry-run"],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        assert bad.returncode == 2 and "SRN 999 is not in the inventory" in bad.stderr


def test_fab_deploy_dry_run_prints_the_whole_job_without_connecting(tmp_path):
    """`fab deploy --testbed colosseum --inventory FILE` brings the testbed up when it is not: its dry run is
    the full plan (default: every layer SRN of the inventory), naming what a first reservation needs."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "JARVIS_STATE": str(tmp_path / "state"),
           "HOME": str(tmp_path)}
    out = subprocess.run([str(Path(sys.executable).parent / "fab"), "deploy", "--testbed", "colosseum",
                          "--inventory", str(EXAMPLE), "--dry-run"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("# Colosseum dry run: team genesys, RF scenario 1017")
    assert "# SSH through colosseum-gw" in text
    assert "  [rf] colosseumcli rf start 1017 -m '/logs/<run>/radiomap.json' -c" in text
    assert "genesys-101 (cellular-bs, node4, logs in /logs/<run>)" in text  # all four layer SRNs by default
    for interface in ("tap0", "tun_srsue", "srs_spgw_sgi", "col0"):
        assert f"<{interface} of genesys-" in text, interface
    assert "[service] PYTHONUNBUFFERED=1 setsid nohup" in text
    assert not (tmp_path / "state").exists()
