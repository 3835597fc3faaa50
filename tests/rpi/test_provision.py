"""The Raspberry Pi backend as data (no root, no network): inventory, provisioning and unit commands, chrony."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.interface import TestbedError
from rpi import clock, provision, units
from rpi.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "rpi.example.yaml"
BASE = {"wifi": {"ssid": "lab", "psk_env": "PSK"}, "hosts": [{"name": "a", "role": "user"}, {"name": "b"}]}


def inventory(tmp_path: Path, data: dict):
    path = tmp_path / "rpi.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_inventory(path)


class TestInventory:
    def test_the_example_loads(self):
        inv = load_inventory(EXAMPLE)
        assert inv.user_pi.name == "pi0" and len(inv.layer_pis) == 7 and inv.sudo == "sudo -n "

    def test_one_user_pi_is_required(self, tmp_path):
        with pytest.raises(TestbedError, match="exactly one Pi needs role user"):
            inventory(tmp_path, {**BASE, "hosts": [{"name": "a"}, {"name": "b"}]})

    def test_an_inline_passphrase_is_refused(self, tmp_path):
        with pytest.raises(TestbedError, match="wifi.psk would put a secret"):
            inventory(tmp_path, {**BASE, "wifi": {"ssid": "lab", "psk": "hunter2"}})

    def test_paths_name_the_pi_where_asked(self, tmp_path):
        inv = inventory(tmp_path, {**BASE, "base_dir": "/x/{host}/jarvis"})
        assert inv.base_of("b") == "/x/b/jarvis"


def test_a_missing_passphrase_variable_stops_up_before_any_pi_is_touched(tmp_path, monkeypatch):
    from rpi.testbed import RpiTestbed

    monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("PSK", raising=False)
    path = tmp_path / "rpi.yaml"
    path.write_text(yaml.safe_dump({**BASE, "ssh_config": "/nonexistent/ssh_config"}))
    with pytest.raises(TestbedError, match=r"passphrase is in \$PSK, but that environment variable is not set"):
        RpiTestbed("jv-psk", inventory=path).up(1)
    assert not (tmp_path / "state").exists()


class TestProvisioning:
    def test_packages_install_and_update_only_if_needed(self, tmp_path):
        inv = inventory(tmp_path, {**BASE, "apt_packages": ["chrony", "network-manager"]})
        install = "sudo -n apt-get install -y --no-upgrade chrony network-manager"
        assert provision.apt_command(inv) == f"{install} || {{ sudo -n apt-get update && {install}; }}"
        assert provision.chrony_command(inv) == "sudo -n systemctl enable --now chrony"

    def test_wifi_is_created_keyed_and_brought_up_once(self, tmp_path):
        inv = inventory(tmp_path, BASE)
        assert provision.wifi_commands(inv, known=False, active=False) == [
            "sudo -n nmcli connection add type wifi ifname wlan0 con-name jarvis-wifi ssid lab",
            'sudo -n nmcli connection modify jarvis-wifi wifi-sec.key-mgmt wpa-psk wifi-sec.psk "$JARVIS_WIFI_PSK"',
            "sudo -n nmcli connection up jarvis-wifi"]
        assert provision.wifi_commands(inv, known=True, active=True) == [
            'sudo -n nmcli connection modify jarvis-wifi wifi-sec.key-mgmt wpa-psk wifi-sec.psk "$JARVIS_WIFI_PSK"']

    def test_an_open_network_sets_no_passphrase(self, tmp_path):
        inv = inventory(tmp_path, {**BASE, "wifi": {"ssid": "open"}, "user": "root"})
        assert provision.wifi_commands(inv, known=False, active=False) == [
            "nmcli connection add type wifi ifname wlan0 con-name jarvis-wifi ssid open",
            "nmcli connection up jarvis-wifi"]

    def test_the_venv_gets_the_pinned_payload_with_cpu_torch(self, tmp_path):
        inv = inventory(tmp_path, BASE)
        pins = provision.pinned_versions()
        assert set(pins) == {"torch", "transformers", "safetensors"}
        assert provision.venv_commands(inv, "b") == [
            "test -x /home/pi/jarvis/venv/bin/python || python3 -m venv /home/pi/jarvis/venv"]
        assert provision.pip_commands(inv, "b", pins) == [
            f"/home/pi/jarvis/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "
            f"torch=={pins['torch']}",
            f"/home/pi/jarvis/venv/bin/pip install transformers=={pins['transformers']} "
            f"safetensors=={pins['safetensors']}"]
        assert provision.installed_versions("2.13.0+cpu 5.24.0 0.8.0\n") == {
            "torch": "2.13.0", "transformers": "5.24.0", "safetensors": "0.8.0"}
        assert provision.installed_versions("") is None


class TestUnits:
    def test_the_unit_never_restarts_and_logs_into_the_run_directory(self):
        text = units.unit_text(description="JARVIS node1", workdir="/home/pi/jarvis/runs/r1", user="pi",
                               log_name="service.out",
                               argv=["env", "PYTHONPATH=/home/pi/jarvis/runs/r1/code", "HF_HUB_OFFLINE=1",
                                     "/home/pi/jarvis/venv/bin/python", "-m", "payload.node", "--config", "node.json"])
        assert text.splitlines() == [
            "[Unit]", "Description=JARVIS node1", "", "[Service]", "Type=exec",
            "WorkingDirectory=/home/pi/jarvis/runs/r1", 'Environment="PYTHONUNBUFFERED=1"',
            'Environment="PYTHONPATH=/home/pi/jarvis/runs/r1/code"', 'Environment="HF_HUB_OFFLINE=1"',
            'ExecStart="/home/pi/jarvis/venv/bin/python" "-m" "payload.node" "--config" "node.json"',
            "StandardOutput=append:/home/pi/jarvis/runs/r1/service.out", "StandardError=inherit",
            "Restart=no", "KillMode=control-group", "User=pi"]

    def test_specifiers_and_variables_are_escaped(self):
        text = units.unit_text(description="d", workdir="/w", user="root", log_name="o", argv=["echo", "50% $HOME"])
        assert 'ExecStart="echo" "50%% $$HOME"' in text and "User=" not in text

    def test_faults_signal_the_unit_and_wait_for_the_effect(self):
        command = units.signal_command("sudo -n ", "jarvis-x-node1.service", "SIGKILL", "gone")
        assert "sudo -n systemctl kill --signal=SIGKILL jarvis-x-node1.service" in command
        assert '[ "$(systemctl show -p MainPID --value jarvis-x-node1.service)" = 0 ] && exit 0' in command
        assert units.start_commands("", "/w/u.service", "u.service") == [
            "systemctl link /w/u.service", "systemctl start u.service", "systemctl show -p MainPID --value u.service"]
        assert units.stop_commands("", "u.service") == [
            "systemctl stop u.service", "systemctl disable u.service", "systemctl reset-failed u.service"]


TRACKING = """Reference ID    : C0A80101 (192.168.1.1)
Stratum         : 3
System time     : 0.000012345 seconds slow of NTP time
Last offset     : -0.000003210 seconds
RMS offset      : 0.000021000 seconds
Root delay      : 0.001234567 seconds
Root dispersion : 0.000456789 seconds
Leap status     : Normal"""


def test_chronyc_tracking_is_parsed_with_signed_offsets():
    fields = clock.parse_tracking(TRACKING)
    assert fields["system_time_s"] == pytest.approx(-12.345e-6)  # slow = behind true time
    assert fields["last_offset_s"] == pytest.approx(-3.21e-6) and fields["rms_offset_s"] == pytest.approx(21e-6)
    assert fields["stratum"] == 3 and fields["reference"] == "C0A80101 (192.168.1.1)"
    assert fields["leap_status"] == "Normal" and fields["raw"] == TRACKING
