"""The Raspberry Pi backend end to end against emulated Pis: SSH through a jump host, stand-in Pi tools.

Provisioning (apt, chrony, Wi-Fi through nmcli, the venv), node services as
systemd units, a run with a pause and a kill through systemctl, chronyc
readings around the run, teardown; a second ``up`` finds everything
provisioned; a Pi that is off is named and nothing is left running.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from experiment.deploy import deploy
from experiment.run import Fault, run_job
from testbed.interface import TestbedError
from payload.prepare import load_manifest
from payload.routing import even_placement
from rpi.testbed import RpiTestbed

from tests.rpi.conftest import MISSING, PIS, PSK, TIME_SERVER, write_inventory

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

APT = "apt-get install -y --no-upgrade python3-venv python3-pip chrony network-manager iputils-ping"
PROBES = ["nmcli -t -f NAME connection show", "nmcli -t -f GENERAL.STATE connection show jarvis-wifi"]


def keyfile(inventory: Path, alias: str) -> Path:
    return inventory.parent / "pis" / alias / "nm" / "jarvis-wifi.nmconnection"


def first_provision(inventory: Path, alias: str) -> list[str]:
    return ["uname -m", APT, "systemctl enable --now chrony", "systemctl restart chrony",
            "raspi-config nonint do_wifi_country DE", "rfkill unblock wifi", *PROBES,
            f"nmcli connection load {keyfile(inventory, alias)}", "nmcli connection up jarvis-wifi"]


def reprovision(inventory: Path, alias: str) -> list[str]:
    return first_provision(inventory, alias)[:-1]


def quiet(_: str) -> None:
    pass


def pi_testbed(inventory: Path) -> RpiTestbed:
    return RpiTestbed(f"jv-trpi-{uuid.uuid4().hex[:6]}", inventory=inventory, progress=quiet)


def payload_processes(pis) -> list[bytes]:
    found = []
    for alias in PIS:
        pids = subprocess.run(["ip", "netns", "pids", pis.by_alias[alias].namespace], capture_output=True,
                              text=True).stdout.split()
        found += [c for p in pids if Path(f"/proc/{p}").exists() and b"payload" in
                  (c := Path(f"/proc/{p}/cmdline").read_bytes())]
    return found


def test_provision_deploy_run_with_faults_and_down_then_up_again(pis, tmp_path, tiny_prepared):
    pis.clear_logs()
    prepared = tiny_prepared("llama")
    inventory = write_inventory(tmp_path / "rpi.yaml", pis)
    testbed = pi_testbed(inventory)
    hosts = testbed.up(2)
    try:
        assert [(h.name, h.ssh_host, h.address) for h in hosts] == [
            ("user", "pi-user", "192.168.50.10"), ("node1", "pi1", "192.168.50.11"), ("node2", "pi2", "192.168.50.12")]
        for alias in PIS:
            assert pis.log(alias) == first_provision(inventory, alias), alias
            # The passphrase reached NetworkManager's keyfile (private, or NetworkManager ignores it) and no
            # process's argv: not nmcli's, not the remote shell's (the transcript is that shell's command text).
            written = keyfile(inventory, alias)
            assert f"psk={PSK}" in written.read_text() and written.stat().st_mode & 0o777 == 0o600
            assert PSK not in " ".join(pis.log(alias))
        assert PSK not in testbed.state.transcript.read_text()
        for alias in PIS:  # chrony's time source: the control host (the lab Wi-Fi has no internet)
            conf = inventory.parent / "pis" / alias / "chrony" / "jarvis.conf"
            assert conf.read_text() == f"server {TIME_SERVER} iburst prefer\n"

        deployment = deploy(testbed, prepared, even_placement(load_manifest(prepared)["num_layers"], 2),
                            model="tiny-llama", progress=quiet)
        assert all(sent > 0 for sent in deployment.bytes_shipped.values())
        unit = hosts[1].extra["unit"]
        unit_text = (Path(hosts[1].workdir) / unit).read_text()
        assert "Restart=no" in unit_text and "KillMode=control-group" in unit_text
        assert pis.log("pi1")[len(first_provision(inventory, "pi1")):] == [
            f"systemctl link {hosts[1].workdir}/{unit}", f"systemctl start {unit}",
            f"systemctl show -p MainPID --value {unit}"]

        pis.clear_logs()
        faults = [Fault("pause", (1,), at_token=1), Fault("kill", (2,), at_token=3), Fault("resume", (1,), at_token=4)]
        run = run_job(testbed, deployment, {"prompts": ["the cat sat on the"], "max_new_tokens": 6}, faults,
                      tmp_path / "run", stream=quiet)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["testbed"] == "rpi" and summary["sessions"][0]["tokens"] == 6
        actions = [line.split(",")[:2] for line in (run / "faults.csv").read_text().splitlines()[1:]]
        assert sorted(actions) == [["kill", "node2"], ["pause", "node1"], ["resume", "node1"]]
        assert "FAILED" not in (run / "faults.csv").read_text()
        for host in hosts:
            assert (run / "nodes" / host.name / "events.jsonl").stat().st_size > 0
        described = json.loads((run / "testbed.json").read_text())
        for when in ("before", "after"):
            assert set(described["clock"][when]) == set(PIS)
            reading = described["clock"][when]["pi1"]
            assert reading["chrony"]["system_time_s"] == pytest.approx(12.345e-6)
            # The Pis share this machine's clock: the measured offset is zero within its stated uncertainty.
            assert abs(reading["offset_ms"]) <= reading["uncertainty_ms"] + 0.05
        assert described["versions"]["pi1"]["torch"] == deployment_torch()
        signals = [c for c in pis.log("pi1") if c.startswith("systemctl kill")]
        assert signals == [f"systemctl kill --signal=SIGSTOP {unit}", f"systemctl kill --signal=SIGCONT {unit}"]
        assert [c for c in pis.log("pi2") if c.startswith("systemctl kill")] == [
            f"systemctl kill --signal=SIGKILL {hosts[2].extra['unit']}"]
        assert pis.log("pi1").count("chronyc tracking") == 2
    finally:
        testbed.down()
    for host in hosts[1:]:
        unit = host.extra["unit"]
        assert pis.log(host.ssh_host)[-3:] == [f"systemctl stop {unit}", f"systemctl disable {unit}",
                                                f"systemctl reset-failed {unit}"]
    assert payload_processes(pis) == [] and not testbed.state.exists()
    testbed.down()  # safe to repeat

    pis.clear_logs()
    again = pi_testbed(inventory)
    again.up(2)
    again.down()
    for alias in PIS:
        assert pis.log(alias) == reprovision(inventory, alias), alias  # already on the Wi-Fi: no up


def deployment_torch() -> str:
    import torch

    return torch.__version__.split("+")[0]


def test_a_pi_that_is_off_is_named_and_nothing_starts(pis, tmp_path):
    pis.clear_logs()
    inventory = write_inventory(tmp_path / "rpi.yaml", pis, extra_hosts=[{"name": MISSING}])
    testbed = pi_testbed(inventory)
    with pytest.raises(TestbedError) as failure:
        testbed.up(3)
    message = str(failure.value)
    assert "checking the Pis failed on 1 of 4 hosts" in message and f"{MISSING}: cannot log in" in message
    assert all(pis.log(alias) == ["uname -m"] for alias in PIS)  # the others were only checked
    assert payload_processes(pis) == [] and not testbed.state.exists()


def test_a_32_bit_os_is_refused_before_anything_is_installed(pis, tmp_path):
    pis.clear_logs()
    pis.set_control("uname-armv7l", True)
    try:
        testbed = pi_testbed(write_inventory(tmp_path / "rpi.yaml", pis))
        with pytest.raises(TestbedError, match="uname -m is armv7l, not aarch64: PyTorch publishes ARM wheels for "
                                               "64-bit only"):
            testbed.up(2)
    finally:
        pis.set_control("uname-armv7l", False)
    assert all(pis.log(alias) == ["uname -m"] for alias in PIS)
    assert not testbed.state.exists()


def test_without_a_wifi_country_the_wifi_stays_blocked(pis):
    """The stand-in nmcli refuses to join until raspi-config has set a country, as Raspberry Pi OS does."""
    alias = "pi2"
    env = {"PATH": f"{pis.bin}:/usr/bin:/bin"}
    (pis.root / "wifi-country" / pis.by_alias[alias].namespace).unlink(missing_ok=True)
    nm_state = pis.root / "nm" / f"{pis.by_alias[alias].namespace}.json"
    saved = nm_state.read_text() if nm_state.exists() else None
    nm_state.parent.mkdir(exist_ok=True)
    nm_state.write_text(json.dumps({"connections": {"probe": {"ssid": "x", "ifname": "wlan9", "psk": False}},
                                    "active": []}))
    try:
        up = subprocess.run(["ip", "netns", "exec", pis.by_alias[alias].namespace, "nmcli", "connection", "up",
                             "probe"], capture_output=True, text=True, env=env)
        assert up.returncode != 0 and "rfkill-blocked" in up.stderr
    finally:
        if saved is None:
            nm_state.unlink()
        else:
            nm_state.write_text(saved)
