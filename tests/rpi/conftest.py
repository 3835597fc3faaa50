"""Three emu namespaces playing Raspberry Pis behind a lab jump host, with stand-in Pi tools.

``pi-user`` is the end-user node, ``pi1`` and ``pi2`` layer nodes; ``pi3``
is in no namespace (a Pi that is switched off).  SSH reaches the Pis the way
a lab's ssh config would say: ``ProxyJump`` through the gateway.  The Pis
have no Wi-Fi until the stand-in ``nmcli connection up`` joins it.  The
emu testbed and the root gate are the Colosseum tests' (see there).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from testbed.profiles import load_profiles
from tests.colosseum.conftest import require_root  # noqa: F401  (fixture)
from tests.colosseum.emulated import EmulatedHosts, emulate
from tests.emu.conftest import emu_testbed

STANDINS = Path(__file__).parent / "standins"
PIS = {"pi-user": "192.168.50.10/24", "pi1": "192.168.50.11/24", "pi2": "192.168.50.12/24"}
MISSING = "pi3"
PSK_ENV = "JV_TEST_WIFI_PSK"
PSK = "correct horse battery staple"
TIME_SERVER = "192.168.50.1"  # the control host, serving time to a lab Wi-Fi without internet


@pytest.fixture(scope="module")
def pis(require_root, tmp_path_factory) -> EmulatedHosts:  # noqa: F811  (fixture from the import)
    ideal = load_profiles()["ideal"]
    with emu_testbed("rpi", len(PIS) - 1, {i: ideal for i in range(len(PIS))}) as emu:
        emulated = emulate(emu, tmp_path_factory.mktemp("rpi-standins"), list(PIS))
        emulated.install(*sorted(STANDINS.iterdir()))
        for alias, address in PIS.items():
            emulated.describe_host(alias, {"pi": alias, "interfaces": {"wlan0": address}})
        yield emulated


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch) -> None:
    """Testbed state (and the Wi-Fi passphrase) only for this test."""
    monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))
    monkeypatch.setenv(PSK_ENV, PSK)


def write_inventory(path: Path, emulated: EmulatedHosts, *, extra_hosts: list[dict] = ()) -> Path:
    base = path.parent
    ssh_config = emulated.ssh_config(base / "ssh_config", gateway_alias="lab-gw", unreachable=[MISSING],
                                     user="root", proxy_jump=True)
    inventory = {  # no `user`: the ssh config's User (root) is the login, as a lab's config would say
        "key": None, "ssh_config": str(ssh_config), "agent": False,
        "wifi": {"ssid": "jarvis-test", "psk_env": PSK_ENV, "country": "DE",
                 "keyfile_dir": str(base / "pis" / "{host}" / "nm")},
        "clock": {"server": TIME_SERVER, "conf_dir": str(base / "pis" / "{host}" / "chrony")},
        "base_dir": str(base / "pis" / "{host}" / "jarvis"), "venv": sys.prefix,
        "path_prepend": [str(emulated.bin)], "timeouts": {"wifi_s": 10},
        "hosts": [{"name": "pi-user", "role": "user"}, {"name": "pi1"}, {"name": "pi2"}, *extra_hosts],
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path
