"""Emu namespaces playing a lab's Linux hosts behind a bastion, for the SSH testbed.

``lab-user`` is the end-user host, ``lab-a`` and ``lab-b`` layer hosts,
``lab-off`` a host that is switched off.  SSH reaches them as a lab's ssh
config says: ``ProxyJump`` through the bastion (emu's gateway namespace),
key and known hosts from the config.  Their data plane is emu's (interface
``data0``), shaped by emu's userspace shaper: this kernel has no netem, so
the one STAND-IN is ``tc``, which logs the SSH testbed's netem commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from emu.testbed import EmuTestbed
from sshhosts.links import LinkState
from testbed.interface import ALL_FAULTS, HostInfo
from testbed.profiles import LinkProfile, load_profiles
from tests.colosseum.conftest import require_root  # noqa: F401  (fixture)
from tests.colosseum.emulated import EmulatedHosts, emulate
from tests.emu.conftest import emu_testbed

STANDINS = Path(__file__).parent / "standins"
HOSTS = ["lab-user", "lab-a", "lab-b"]
MISSING = "lab-off"


@pytest.fixture(scope="module")
def lab(require_root, tmp_path_factory) -> EmulatedHosts:  # noqa: F811  (fixture from the import)
    ideal = load_profiles()["ideal"]
    with emu_testbed("ssh", len(HOSTS) - 1, {i: ideal for i in range(len(HOSTS))}) as emu:
        emulated = emulate(emu, tmp_path_factory.mktemp("ssh-standins"), HOSTS, bridge=False)
        emulated.install(*sorted(STANDINS.iterdir()))
        yield emulated


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("JARVIS_STATE", str(tmp_path / "state"))


def write_inventory(path: Path, lab: EmulatedHosts, *, extra_hosts: list[dict] = (), **fields) -> Path:
    """A lab's inventory: no `user` (the ssh config's), the venv given (this one), `lab-b`'s address given."""
    ssh_config = lab.ssh_config(path.parent / "ssh_config", gateway_alias="bastion", unreachable=[MISSING],
                                user="root", proxy_jump=True)
    inventory = {"ssh_config": str(ssh_config), "agent": False, "interface": "data0", "venv": sys.prefix,
                 "base_dir": str(path.parent / "hosts" / "{host}"), "path_prepend": [str(lab.bin)],
                 "hosts": [{"name": "lab-user", "role": "user"}, {"name": "lab-a"},
                           {"name": "lab-b", "address": lab.by_alias["lab-b"].address}, *extra_hosts],
                 **fields}
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


class EmulatedLabLinks:
    """STAND-IN data plane: puts a LinkState in force through the emulated lab's network (emu's userspace
    shaper: profiles, links cut at the switch, partitions), where real hosts would run tc netem."""

    faults = ALL_FAULTS

    def __init__(self, emu: EmuTestbed, by_name: dict[str, HostInfo]) -> None:
        self.emu = emu
        self.by_name = by_name
        self.applied = LinkState({}, {})
        self.ideal: LinkProfile = load_profiles()["ideal"]

    def describe(self) -> str:
        return "the emulated lab's network (emu userspace shaper), standing in for tc netem on each host"

    def check(self, profiles) -> None:
        pass

    def plan(self, state: LinkState, name: str) -> list[str]:
        return []

    def apply(self, state: LinkState, names: set[str]) -> None:
        for name in sorted(names):
            host = self.by_name[name]
            if state.profiles.get(name) != self.applied.profiles.get(name):
                self.emu.degrade(host, state.profiles.get(name) or self.ideal)
            if (name in state.down) != (name in self.applied.down):
                (self.emu.link_down if name in state.down else self.emu.link_up)(host)
        if state.groups != self.applied.groups:
            self.emu.partition([self.by_name[n] for n, group in state.groups.items() if group])
        self.applied = state

    def clear_plan(self, name: str) -> list[str]:
        return []

    def clear(self, names: list[str]) -> list[str]:
        self.apply(LinkState(self.applied.addresses, {}), set(names))
        return []
