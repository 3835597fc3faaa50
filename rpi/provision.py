"""Provisioning a Pi for JARVIS, as data: packages, clock sync, Wi-Fi, and a venv with CPU torch.

Every step is idempotent and decided from what the Pi reports, so ``up``
can provision on every run and a provisioned Pi costs a few quick probes:

* apt packages (chrony, NetworkManager, venv support), with ``apt-get
  update`` only if the install needs it;
* chrony enabled, so ``chronyc tracking`` has something to report;
* Wi-Fi through ``nmcli`` (Bookworm's NetworkManager ignores
  wpa_supplicant.conf), the passphrase passed in the environment as
  ``$JARVIS_WIFI_PSK`` so it never appears in a transcript or a dry run;
* a venv whose torch/transformers/safetensors match JARVIS's pins, from
  PyTorch's CPU wheel index (it has aarch64 wheels).
"""

from __future__ import annotations

import importlib.metadata
import shlex

from rpi.inventory import RpiInventory

q = shlex.quote
PSK_VARIABLE = "JARVIS_WIFI_PSK"
PAYLOAD_PACKAGES = ("torch", "transformers", "safetensors")


def pinned_versions() -> dict[str, str]:
    """The payload's pinned versions, from this JARVIS installation's metadata (pyproject.toml)."""
    pins = {}
    for requirement in importlib.metadata.requires("jarvis-edge") or []:
        if ";" in requirement:
            continue  # an extra (control, test, ...): not what nodes run
        name, _, version = requirement.partition("==")
        if name in PAYLOAD_PACKAGES:
            pins[name] = version
    return pins


def apt_command(inv: RpiInventory) -> str:
    packages = " ".join(q(p) for p in inv.apt_packages)
    install = f"{inv.sudo}apt-get install -y --no-upgrade {packages}"
    return f"{install} || {{ {inv.sudo}apt-get update && {install}; }}"


def chrony_command(inv: RpiInventory) -> str:
    return f"{inv.sudo}systemctl enable --now chrony"


def wifi_probe_commands(inv: RpiInventory) -> list[str]:
    """What NetworkManager knows: the saved connections, and the state of ours."""
    return ["nmcli -t -f NAME connection show",
            f"nmcli -t -f GENERAL.STATE connection show {q(inv.wifi.connection)}"]


def wifi_commands(inv: RpiInventory, *, known: bool, active: bool) -> list[str]:
    """Create the connection if missing, (re)set its passphrase, and bring it up if it is not."""
    wifi, sudo = inv.wifi, inv.sudo
    commands = []
    if not known:
        commands.append(f"{sudo}nmcli connection add type wifi ifname {q(wifi.interface)} "
                        f"con-name {q(wifi.connection)} ssid {q(wifi.ssid)}")
    if wifi.psk_env is not None:
        commands.append(f"{sudo}nmcli connection modify {q(wifi.connection)} wifi-sec.key-mgmt wpa-psk "
                        f'wifi-sec.psk "${PSK_VARIABLE}"')
    if not active:
        commands.append(f"{sudo}nmcli connection up {q(wifi.connection)}")
    return commands


def venv_commands(inv: RpiInventory, name: str) -> list[str]:
    venv = inv.venv_of(name)
    return [f"test -x {q(venv + '/bin/python')} || {q(inv.system_python)} -m venv {q(venv)}"]


def versions_probe(inv: RpiInventory, name: str) -> str:
    """Print the installed payload packages' versions from their metadata (fails if one is missing).

    Reading metadata takes milliseconds; importing torch on a Pi takes many seconds.
    """
    code = f"from importlib.metadata import version; print(*(version(p) for p in {PAYLOAD_PACKAGES!r}))"
    return f"{q(inv.venv_of(name) + '/bin/python')} -c {q(code)}"


def installed_versions(output: str) -> dict[str, str] | None:
    """Parse the probe's output; local version labels (``2.13.0+cpu``) are dropped."""
    parts = output.split()
    if len(parts) != len(PAYLOAD_PACKAGES):
        return None
    return {name: version.split("+")[0] for name, version in zip(PAYLOAD_PACKAGES, parts)}


def pip_commands(inv: RpiInventory, name: str, pins: dict[str, str]) -> list[str]:
    """torch from the CPU wheel index (aarch64 wheels), the rest from PyPI."""
    pip = q(inv.venv_of(name) + "/bin/pip")
    others = " ".join(f"{pkg}=={pins[pkg]}" for pkg in PAYLOAD_PACKAGES[1:])
    return [f"{pip} install --index-url {q(inv.torch_index)} torch=={pins['torch']}", f"{pip} install {others}"]
