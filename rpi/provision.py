"""Provisioning a Pi for JARVIS, as data: packages, clock sync, Wi-Fi, and a venv with CPU torch.

Every step is idempotent and decided from what the Pi reports, so ``up``
can provision on every run and a provisioned Pi costs a few quick probes:

* apt packages (chrony, NetworkManager, venv support), with ``apt-get
  update`` only if the install needs it;
* chrony enabled, so ``chronyc tracking`` has something to report, with a
  local server (the control host) when the lab Wi-Fi has no internet;
* the Wi-Fi country (Wi-Fi is rfkill-blocked until it is set);
* Wi-Fi through NetworkManager (Bookworm's ignores wpa_supplicant.conf):
  a keyfile written with mode 600, its passphrase read from standard input
  into ``$JARVIS_WIFI_PSK`` by a shell builtin, so it never appears in a
  process's argv, a transcript or a dry run; then ``nmcli connection load``;
* then the venv, as on any SSH host (:mod:`sshhosts.provision`): torch
  from PyTorch's CPU wheel index, which has aarch64 wheels.
"""

from __future__ import annotations

import shlex
import uuid
from pathlib import PurePosixPath

from rpi.inventory import RpiInventory

q = shlex.quote
PSK_VARIABLE = "JARVIS_WIFI_PSK"


def apt_command(inv: RpiInventory) -> str:
    packages = " ".join(q(p) for p in inv.apt_packages)
    install = f"{inv.sudo}apt-get install -y --no-upgrade {packages}"
    return f"{install} || {{ {inv.sudo}apt-get update && {install}; }}"


def chrony_commands(inv: RpiInventory, name: str) -> list[str]:
    """chrony on; with ``clock.server``, a drop-in making it the Pi's time source (a lab Wi-Fi without internet
    leaves chrony no other one), then a restart to read it."""
    sudo = inv.sudo
    commands = [f"{sudo}systemctl enable --now chrony"]
    if inv.clock.server is not None:
        conf = f"{inv.clock.conf_dir.replace('{host}', name)}/jarvis.conf"
        line = f"server {inv.clock.server} iburst prefer"
        commands += [f"{sudo}mkdir -p {q(str(PurePosixPath(conf).parent))}",
                     f"printf '%s\\n' {q(line)} | {sudo}tee {q(conf)} > /dev/null",
                     f"{sudo}systemctl restart chrony"]
    return commands


def country_command(inv: RpiInventory) -> str:
    """Set the Wi-Fi country, then unblock Wi-Fi: Raspberry Pi OS keeps it rfkill-blocked until a country is set.
    ``raspi-config`` where it exists (Raspberry Pi OS), the kernel's regulatory domain otherwise."""
    country, sudo = q(inv.wifi.country), inv.sudo
    return (f"if command -v raspi-config > /dev/null; then {sudo}raspi-config nonint do_wifi_country {country}; "
            f"else {sudo}iw reg set {country}; fi && {sudo}rfkill unblock wifi")


def wifi_probe_commands(inv: RpiInventory) -> list[str]:
    """What NetworkManager knows: the saved connections, and the state of ours."""
    return ["nmcli -t -f NAME connection show",
            f"nmcli -t -f GENERAL.STATE connection show {q(inv.wifi.connection)}"]


def keyfile_path(inv: RpiInventory, name: str) -> str:
    return f"{inv.wifi.keyfile_dir.replace('{host}', name)}/{inv.wifi.connection}.nmconnection"


def keyfile_lines(inv: RpiInventory) -> list[str]:
    """NetworkManager's keyfile for the connection; the passphrase line is left to the shell (see below)."""
    wifi = inv.wifi
    lines = ["[connection]", f"id={wifi.connection}", f"uuid={uuid.uuid5(uuid.NAMESPACE_DNS, wifi.connection)}",
             "type=wifi", f"interface-name={wifi.interface}", "autoconnect=true", "", "[wifi]", "mode=infrastructure",
             f"ssid={wifi.ssid}", ""]
    if wifi.psk_env is not None:
        lines += ["[wifi-security]", "key-mgmt=wpa-psk"]
    return lines


def wifi_command(inv: RpiInventory, name: str, *, active: bool) -> str:
    """Write the connection's keyfile (mode 600, as NetworkManager requires), load it, bring it up if need be.

    The passphrase arrives on standard input: ``read`` and ``printf`` are shell builtins, so it never appears in
    a process's argv (``ps``), in the command text, or in the transcript.
    """
    sudo, path = inv.sudo, keyfile_path(inv, name)
    lines = " ".join(q(line) for line in keyfile_lines(inv))
    secret = f'"psk=${PSK_VARIABLE}" ' if inv.wifi.psk_env is not None else ""
    script = []
    if inv.wifi.psk_env is not None:
        script.append(f"IFS= read -r {PSK_VARIABLE}")
    script += [f"{sudo}mkdir -p {q(str(PurePosixPath(path).parent))}",
               f"printf '%s\\n' {lines} {secret}| {sudo}install -m 600 /dev/stdin {q(path)}",
               f"{sudo}nmcli connection load {q(path)}"]
    if not active:
        script.append(f"{sudo}nmcli connection up {q(inv.wifi.connection)}")
    return " && ".join(script)
