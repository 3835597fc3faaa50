"""Batch mode: the bundle as data, then a whole unattended job on emulated SRNs driven like Colosseum drives it.

Colosseum's side is played by the test: it copies each radio.conf into the
container's /root/radio_api, polls status.sh until READY, calls start.sh,
waits, calls stop.sh, copies /logs to the reservation folder on the NAS.
"""

from __future__ import annotations

import json
import shutil
import stat
import time
from pathlib import Path

import pytest
import yaml

from experiment.batch import collect, write_bundle
from colosseum.inventory import load_inventory
from testbed.interface import TestbedError

from tests.colosseum.conftest import SRNS, write_inventory

SCENARIO = {"name": "batchtest", "model": "tiny-llama", "nodes": 1, "prompts": ["the cat sat on the"],
            "max_new_tokens": 4}


def scenario_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, **changes}))
    return path


def plain_inventory(tmp_path: Path, *, addresses: bool = True) -> Path:
    """The test reservation's inventory, for generation only (nothing is contacted)."""
    from tests.colosseum.conftest import INVENTORY_ORDER, static_addresses

    entries = {entry["id"]: entry for entry, _ in SRNS.values()}
    static = static_addresses() if addresses else {}
    data = {"team": "jvtest", "image": "jarvis-test-image", "rf_scenario": 1017, "rf_srn": 107,
            "srns": [{**entries[i], **static.get(i, {})} for i in INVENTORY_ORDER]}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class TestTheBundle:
    def test_batch_file_maps_inventory_order_to_rf_nodes_and_attaches_col0_where_used(self, tmp_path, tiny_prepared):
        bundle = write_bundle(plain_inventory(tmp_path), scenario_file(tmp_path), tmp_path / "bundle",
                              duration_s=600, traffic_scenario=95571, prepared=tiny_prepared("llama"))
        batch = json.loads(next((bundle / "batch").glob("*.json")).read_text())
        run = batch["BatchName"]
        assert run.startswith("jarvis-batchtest-")
        assert {k: batch[k] for k in ("Duration", "RFScenario", "TrafficScenario")} == {
            "Duration": 600, "RFScenario": 1017, "TrafficScenario": 95571}
        assert batch["NodeData"] == [
            {"RFNode_ID": k, "ImageName": "jarvis-test-image", "ModemConfig": f"{run}-node{k}.conf",
             "isGateway": gateway, "TrafficNode_ID": k, "node_type": "competitor"}
            for k, gateway in enumerate([True, True, True, True, False], start=1)]  # BS, UE, server, gw, wifi
        confs = {p.name: json.loads(p.read_text()) for p in (bundle / "config").glob("*")}
        assert [confs[f"{run}-node{k}.conf"]["srn"] for k in range(1, 6)] == [
            "jvtest-107", "jvtest-102", "jvtest-103", "jvtest-104", "jvtest-105"]  # the base station is RF node 1
        (scope_file, text), = confs[f"{run}-node1.conf"]["files"].items()
        scope = json.loads(text)
        assert scope_file.endswith("/jarvis-scope.conf")
        assert (scope["colosseumcli"], scope["iperf"], scope["network-slicing"], scope["users-bs"]) == (
            "False", "False", "False", "1")  # batch mode: colosseumcli is disabled, SCOPE scans col0

    def test_each_srn_gets_its_radio_commands_routes_and_node(self, tmp_path, tiny_prepared):
        bundle = write_bundle(plain_inventory(tmp_path), scenario_file(tmp_path), tmp_path / "bundle",
                              duration_s=600, traffic_scenario=1, prepared=tiny_prepared("llama"))
        confs = {json.loads(p.read_text())["srn"]: json.loads(p.read_text()) for p in (bundle / "config").glob("*")}
        user, server, bs = confs["jvtest-102"], confs["jvtest-103"], confs["jvtest-107"]
        assert user["node"]["index"] == 0 and user["node"]["argv"][-5:] == ["--config", "user.json", "--job",
                                                                             "job.json", "--jsonl"]
        assert user["routes"] == ["172.30.1.103/32 via 172.16.0.1 dev tun_srsue"] and user["peers"] == ["172.30.1.103"]
        assert user["job"]["prompts"] == ["the cat sat on the"]
        assert server["node"]["config"]["model_dir"] == "/root/jarvis/model"
        assert server["node"]["config"]["peers"] == {"0": ["172.16.0.2", 7100], "1": ["172.30.1.103", 7100]}
        assert server["routes"] == ["172.16.0.2/32 via 172.30.1.107 dev col0"] and server["col0_address"] == \
            "172.30.1.103/24"
        assert bs["node"] is None and bs["forwarding"] and bs["col0_address"] == "172.30.1.107/24"
        assert bs["radio_commands"][0].startswith("tmux -L jv-batch-jvtest-107 new-session -d -s radio ")
        assert confs["jvtest-104"]["radio_commands"][:2] == ["cd /root/interactive_scripts && ./tap_setup.sh",
                                                             "cd /root/interactive_scripts && ./route_setup.sh 105"]
        for script in ("start.sh", "status.sh", "stop.sh"):
            path = bundle / "image" / "radio_api" / script
            assert path.stat().st_mode & stat.S_IXUSR and "jarvis_batch.py" in path.read_text()
        assert (bundle / "image" / "jarvis" / "model" / "manifest.json").is_file()
        assert (bundle / "image" / "jarvis" / "code" / "payload" / "node.py").is_file()

    def test_a_bridging_scenario_bundles_its_placements_bridges_and_names_them_in_every_config(
            self, tmp_path, tiny_prepared):
        from payload.bridges import load_bridges
        from payload.prepare import sha256_file

        scenario = scenario_file(tmp_path, on_failure="bridge", bridges={"tokens": 64})
        bundle = write_bundle(plain_inventory(tmp_path), scenario, tmp_path / "bundle", duration_s=600,
                              traffic_scenario=1, prepared=tiny_prepared("llama"))
        model = bundle / "image" / "jarvis" / "model"
        assert list(load_bridges(model / "bridges.safetensors")) == ["0-5"]  # the one node's slice
        assert not (model / "bridges").exists(), "other placements' cached bridges stay behind"
        deployment = json.loads((bundle / "deployment.json").read_text())
        assert deployment["policy"] == "bridge"
        assert deployment["bridges_sha256"] == sha256_file(model / "bridges.safetensors")
        nodes = [json.loads(p.read_text())["node"] for p in (bundle / "config").glob("*")]
        files = [n["config"].get("bridges_file") or n["config"]["node"]["bridges_file"] for n in nodes if n]
        assert files == ["/root/jarvis/model/bridges.safetensors"] * 2, files

    def test_missing_static_addresses_are_listed(self, tmp_path, tiny_prepared):
        with pytest.raises(TestbedError, match="jvtest-107: address") as failure:
            write_bundle(plain_inventory(tmp_path, addresses=False), scenario_file(tmp_path), tmp_path / "b",
                         duration_s=60, traffic_scenario=1, prepared=tiny_prepared("llama"))
        assert "jvtest-104: col0_address" in str(failure.value)

    def test_faults_need_a_controller(self, tmp_path, tiny_prepared):
        scenario = scenario_file(tmp_path, faults=[{"at_token": 1, "action": "kill", "node": 1}])
        with pytest.raises(TestbedError, match="cannot inject the scenario's faults"):
            write_bundle(plain_inventory(tmp_path), scenario, tmp_path / "b", duration_s=60, traffic_scenario=1,
                         prepared=tiny_prepared("llama"))


def radio_api(shell, path: str, script: str) -> str:
    return shell.run(f"{path}/{script}").stdout.strip()


def wait_status(shells: dict, paths: dict, wanted, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {name: json.loads(radio_api(shell, paths[name], "status.sh")) for name, shell in shells.items()}
        if all(wanted(name, s) for name, s in states.items()):
            return states
        errors = {n: s["INFO"] for n, s in states.items() if s["STATUS"] == "ERROR"}
        assert not errors and time.monotonic() < deadline, (states, errors)
        time.sleep(0.5)


@pytest.mark.root
@pytest.mark.timeout(180)
def test_an_unattended_job_runs_and_its_logs_become_a_run_directory(srns, tmp_path, tiny_prepared):
    inventory_path = write_inventory(tmp_path / "inventory.yaml", srns, addresses=True)
    inv = load_inventory(inventory_path)
    bundle = write_bundle(inventory_path, scenario_file(tmp_path), tmp_path / "bundle", duration_s=300,
                          traffic_scenario=1, prepared=tiny_prepared("llama"))
    run = json.loads(next((bundle / "batch").glob("*.json")).read_text())["BatchName"]
    shells, api = {}, {}
    for k, srn in enumerate(inv.rf_order, start=1):  # Colosseum provisions the container of each RF node
        name = inv.name_of(srn)
        paths = inv.paths.on(name)
        srns.describe_host(name, {**srns.host_description(name), "rf_node": k})
        shutil.copytree(bundle / "image" / "radio_api", paths.radio_api)
        shutil.copytree(bundle / "image" / "jarvis", paths.jarvis)
        shutil.copy(bundle / "config" / f"{run}-node{k}.conf", Path(paths.radio_api) / "radio.conf")
        shells[name], api[name] = srns.emu.shell(srns.by_alias[name]), paths.radio_api

    assert {json.loads(radio_api(s, api[n], "status.sh"))["STATUS"] for n, s in shells.items()} == {"BOOTING"}
    wait_status(shells, api, lambda n, s: s["STATUS"] == "READY")
    for name, shell in shells.items():
        radio_api(shell, api[name], "start.sh")
    wait_status(shells, api, lambda n, s: s["STATUS"] == "ACTIVE" and (n != "jvtest-102" or "finished" in s["INFO"]))
    for name, shell in shells.items():
        radio_api(shell, api[name], "stop.sh")
    states = wait_status(shells, api, lambda n, s: s["STATUS"] == "FINISHED")
    assert all("stopped" in s["INFO"] for s in states.values())

    reservation = tmp_path / "nas" / "jvtest" / "RESERVATION-7"
    for srn in inv.srns:  # after the reservation Colosseum copies /logs to the NAS
        shutil.copytree(Path(inv.paths.on(inv.name_of(srn)).logs), reservation / f"--srn-{srn.id}")
    out = collect(bundle, reservation, tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["sessions"][0]["tokens"] == 4
    assert json.loads((out / "testbed.json").read_text())["mode"] == "batch"
    for name in ("user", "node1"):
        assert (out / "nodes" / name / "events.jsonl").stat().st_size > 0
    assert not any(srns.tmux_running(f"jv-batch-{name}") for name in shells)
