"""Five emu namespaces playing the SRNs of a Colosseum reservation, with stand-in Colosseum tools.

SRN 102 is the end-user UE, 103 a server, 104 the Wi-Fi gateway, 105 a
Wi-Fi node and 107 the base station: the highest number, so only a radio map
makes it RF node 1 (as SCOPE needs); listed last, so with three layer nodes
it runs only its radio, and runs colosseumcli.  106 is in no namespace (an
SRN that is not part of the reservation).  At "boot" every SRN has col0 on the wired
collaboration network, as in an interactive reservation; the stand-in radio
tools add tap0, tun_srsue and srs_spgw_sgi when the testbed starts them.
Root-needing tests skip without root and fail instead under
JARVIS_REQUIRE_ROOT_TESTS=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.profiles import load_profiles
from tests.colosseum.emulated import STANDINS, EmulatedHosts, emulate
from tests.emu.conftest import emu_testbed, root_missing_reason

TEAM = "jvtest"
SRNS = {  # alias -> (inventory entry, interfaces the stand-ins give it)
    "jvtest-102": ({"id": 102, "role": "user", "radio": "cellular-ue"}, {"tun_srsue": "172.16.0.2/24"}),
    "jvtest-107": ({"id": 107, "role": "cellular-bs"}, {"srs_spgw_sgi": "172.16.0.1/24"}),
    "jvtest-103": ({"id": 103, "role": "server"}, {}),
    "jvtest-104": ({"id": 104, "role": "wifi", "gateway": True}, {"tap0": "10.20.0.104/24"}),
    "jvtest-105": ({"id": 105, "role": "wifi"}, {"tap0": "10.20.0.105/24"}),
}
INVENTORY_ORDER = [102, 103, 104, 105, 107]
MISSING = "jvtest-106"


def missing_reason() -> str:
    reason = root_missing_reason()
    if not reason and shutil.which("tmux") is None:
        reason = "missing tools: tmux (tmux)"
    return reason


@pytest.fixture(scope="session")
def require_root() -> None:
    reason = missing_reason()
    if reason:
        if os.environ.get("JARVIS_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail(f"JARVIS_REQUIRE_ROOT_TESTS=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch) -> None:
    """Testbed state (and the record of the last ``rf stop``) only for this test."""
    monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def srns(require_root, tmp_path_factory) -> EmulatedHosts:
    ideal = load_profiles()["ideal"]
    with emu_testbed("col", len(SRNS) - 1, {i: ideal for i in range(len(SRNS))}) as emu:
        root = tmp_path_factory.mktemp("colosseum-standins")
        emulated = emulate(emu, root, list(SRNS))
        emulated.install(STANDINS / "colosseumcli", STANDINS / "su", STANDINS / "interactive_scripts",
                         STANDINS / "radio_api")
        for alias, (entry, interfaces) in SRNS.items():
            col0 = f"172.30.1.{entry['id']}/24"
            emulated.attach(alias, "col0", col0)
            emulated.describe_host(alias, {"srn": alias, "interfaces": {"col0": col0, **interfaces}})
        yield emulated
    remove_stale_tmux_sockets(("jv-tcol-", "jv-batch-jvtest-"))


def remove_stale_tmux_sockets(prefixes: tuple[str, ...]) -> None:
    """tmux leaves its socket file behind when its server is killed; drop the tests' dead ones."""
    directory = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    for socket in directory.glob("jv-*"):
        if socket.name.startswith(prefixes) and subprocess.run(
                ["tmux", "-L", socket.name, "has-session"], capture_output=True).returncode != 0:
            socket.unlink(missing_ok=True)


def static_addresses() -> dict[int, dict]:
    """What batch mode needs in the inventory: each SRN's data address, and col0 for bridges."""
    out = {}
    for entry, interfaces in SRNS.values():
        col0 = f"172.30.1.{entry['id']}/24"
        address = next(iter(interfaces.values()), col0)
        bridge = entry["role"] == "cellular-bs" or entry.get("gateway")
        out[entry["id"]] = {"address": address, **({"col0_address": col0} if bridge else {})}
    return out


def write_inventory(path: Path, emulated: EmulatedHosts, *, extra_srns: list[dict] = (), addresses: bool = False,
                    **overrides) -> Path:
    """An inventory for the emulated reservation: paths per SRN under a test directory, stand-ins on PATH."""
    base = path.parent
    ssh_config = emulated.ssh_config(base / "ssh_config", gateway_alias="colosseum-gw", unreachable=[MISSING])
    static = static_addresses() if addresses else {}
    entries = {entry["id"]: {**entry, **static.get(entry["id"], {})} for entry, _ in SRNS.values()}
    inventory = {
        "team": TEAM,
        "gateway": {"host": "colosseum-gw", "user": "root"},
        "image": "jarvis-test-image",
        "rf_scenario": 1009,
        "rf_srn": 107,
        "credentials": {"ssh_config": str(ssh_config), "agent": False},
        "srns": [entries[i] for i in INVENTORY_ORDER] + list(extra_srns),
        "python": sys.executable,
        "paths": {"logs": str(base / "srn" / "{srn}" / "logs"), "share": str(base / "nas" / TEAM),
                  "model": str(base / "srn" / "{srn}" / "jarvis-model"),
                  "wifi_scripts": str(emulated.root / "interactive_scripts"),
                  "scope": str(emulated.root / "radio_api"),
                  "radio_api": str(base / "srn" / "{srn}" / "radio_api"),
                  "jarvis": str(base / "srn" / "{srn}" / "jarvis")},
        "timeouts": {"radio_s": 20, "rf_stop_settle_s": 1, "rf_stop_s": 10},
        "path_prepend": [str(emulated.bin)],
        **overrides,
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path
