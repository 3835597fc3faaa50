"""The Raspberry Pi backend as data (no root, no network): inventory, provisioning and unit commands, chrony."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.interface import TestbedError
from testbed.shipping import payload_pins
from rpi import clock, provision, units
from rpi.inventory import load_inventory
from sshhosts import provision as venv

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "rpi.example.yaml"
BASE = {"user": "lab", "wifi": {"ssid": "lab", "psk_env": "PSK", "country": "DE"},
        "hosts": [{"name": "a", "role": "user"}, {"name": "b"}]}


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
            inventory(tmp_path, {**BASE, "wifi": {"ssid": "lab", "psk": "hunter2", "country": "DE"}})

    def test_there_is_no_default_pi_user_the_ssh_config_can_name_it(self, tmp_path):
        data = {key: value for key, value in BASE.items() if key != "user"}
        with pytest.raises(TestbedError, match=r"no login user for a, b: .*\(Raspberry Pi OS has had no default `pi` user since 2022\)"):
            inventory(tmp_path, {**data, "ssh_config": str(tmp_path / "none")})
        config = tmp_path / "ssh_config"
        config.write_text("Host a b\n  User maria\n")
        inv = inventory(tmp_path, {**data, "ssh_config": str(config)})
        assert inv.user == "maria" and inv.base_of("b") == "/home/maria/jarvis" and inv.venv_of("b") == \
            "/home/maria/jarvis/venv"
        config.write_text("Host a\n  User maria\nHost b\n  User pi\n")
        with pytest.raises(TestbedError, match="different users"):
            inventory(tmp_path, {**data, "ssh_config": str(config)})
        assert inventory(tmp_path, {**BASE, "user": "root"}).base_of("b") == "/root/jarvis"

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
        assert provision.chrony_commands(inv, "b") == ["sudo -n systemctl enable --now chrony"]

    def test_a_local_time_server_becomes_chronys_source(self, tmp_path):
        inv = inventory(tmp_path, {**BASE, "clock": {"server": "192.168.1.2"}})
        assert provision.chrony_commands(inv, "b") == [
            "sudo -n systemctl enable --now chrony", "sudo -n mkdir -p /etc/chrony/conf.d",
            "printf '%s\\n' 'server 192.168.1.2 iburst prefer' | sudo -n tee /etc/chrony/conf.d/jarvis.conf > /dev/null",
            "sudo -n systemctl restart chrony"]

    def test_the_wifi_country_is_set_before_nmcli_runs(self, tmp_path):
        inv = inventory(tmp_path, BASE)
        assert provision.country_command(inv) == (
            "if command -v raspi-config > /dev/null; then sudo -n raspi-config nonint do_wifi_country DE; "
            "else sudo -n iw reg set DE; fi && sudo -n rfkill unblock wifi")
        for wrong in ({"ssid": "lab"}, {"ssid": "lab", "country": "de"}, {"ssid": "lab", "country": "DEU"}):
            with pytest.raises(TestbedError, match="wifi.country"):
                inventory(tmp_path, {**BASE, "wifi": wrong})

    def test_wifi_is_a_private_keyfile_whose_passphrase_comes_on_stdin(self, tmp_path):
        inv = inventory(tmp_path, BASE)
        command = provision.wifi_command(inv, "b", active=False)
        keyfile = "/etc/NetworkManager/system-connections/jarvis-wifi.nmconnection"
        assert command.startswith("IFS= read -r JARVIS_WIFI_PSK && ")  # a builtin: the secret is in no argv
        assert f"| sudo -n install -m 600 /dev/stdin {keyfile}" in command
        assert '"psk=$JARVIS_WIFI_PSK"' in command and "key-mgmt=wpa-psk" in command
        assert command.endswith(f"sudo -n nmcli connection load {keyfile} && sudo -n nmcli connection up jarvis-wifi")
        assert not provision.wifi_command(inv, "b", active=True).endswith("connection up jarvis-wifi")

    def test_an_open_network_sets_no_passphrase(self, tmp_path):
        inv = inventory(tmp_path, {**BASE, "wifi": {"ssid": "open", "country": "DE"}, "user": "root"})
        command = provision.wifi_command(inv, "b", active=False)
        assert "read" not in command and "psk" not in command and "wifi-security" not in command
        assert command.endswith("nmcli connection up jarvis-wifi") and "sudo" not in command

    @pytest.mark.parametrize("field, value", [("user", "pi; rm -rf /"), ("user", "Pi User"),
                                              ("interface", "wlan0 down; reboot"), ("interface", "$(id)"),
                                              ("ssid", "two\nlines")])
    def test_values_that_reach_a_shell_or_a_unit_are_validated(self, tmp_path, field, value):
        data = {**BASE, "wifi": dict(BASE["wifi"])}
        if field == "user":
            data["user"] = value
        else:
            data["wifi"][field] = value
        with pytest.raises(TestbedError, match=f"{field} .line"):
            inventory(tmp_path, data)

    def test_the_venv_gets_the_pinned_payload_with_cpu_torch(self, tmp_path):
        inv = inventory(tmp_path, BASE)
        pins = payload_pins()
        assert list(pins) == ["torch", "transformers", "safetensors", "cryptography", "uvloop"]  # all a node imports
        assert venv.venv_commands(inv, "b") == [
            "test -x /home/lab/jarvis/venv/bin/python || python3 -m venv /home/lab/jarvis/venv"]
        assert venv.pip_commands(inv, "b", pins) == [
            f"/home/lab/jarvis/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "
            f"torch=={pins['torch']}",
            f"/home/lab/jarvis/venv/bin/pip install transformers=={pins['transformers']} "
            f"safetensors=={pins['safetensors']} cryptography=={pins['cryptography']} uvloop=={pins['uvloop']}"]
        packages = list(pins)
        assert venv.installed_versions("2.13.0+cpu 5.24.0 0.8.0 50.0.2 0.23.0\n", packages) == {
            "torch": "2.13.0", "transformers": "5.24.0", "safetensors": "0.8.0", "cryptography": "50.0.2",
            "uvloop": "0.23.0"}
        assert venv.installed_versions("2.13.0+cpu 5.24.0 0.8.0 50.0.2\n", packages) is None
        assert venv.installed_versions("", packages) is None


class TestUnits:
    def test_the_unit_never_restarts_and_logs_into_the_run_directory(self):
        text = units.unit_text(description="JARVIS node1", workdir="/home/lab/jarvis/runs/r1", user="pi",
                               log_name="service.out",
                               argv=["env", "PYTHONPATH=/home/lab/jarvis/runs/r1/code", "HF_HUB_OFFLINE=1",
                                     "/home/lab/jarvis/venv/bin/python", "-m", "payload.node", "--config", "node.json"])
        assert text.splitlines() == [
            "[Unit]", "Description=JARVIS node1", "", "[Service]", "Type=exec",
            "WorkingDirectory=/home/lab/jarvis/runs/r1", 'Environment="PYTHONUNBUFFERED=1"',
            'Environment="PYTHONPATH=/home/lab/jarvis/runs/r1/code"', 'Environment="HF_HUB_OFFLINE=1"',
            'ExecStart="/home/lab/jarvis/venv/bin/python" "-m" "payload.node" "--config" "node.json"',
            "StandardOutput=append:/home/lab/jarvis/runs/r1/service.out", "StandardError=inherit",
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
