"""Emu namespaces dressed up as remote hosts (Colosseum SRNs, Raspberry Pis) for the backend tests.

Everything between the testbed and a host is real: Fabric over OpenSSH
through emu's gateway namespace (the jump host), the user's ssh config
deciding names, ports, keys and host-key checks, real ``ip``, ``ping``,
``tmux`` and the payload in each namespace.  Only the tools that exist on
SRNs and Pis and not here are STAND-INS (``tests/colosseum/standins``,
``tests/rpi/standins``): they log every call and answer as documented.
Each namespace's emu data link becomes a bridge port, so a stand-in radio
or Wi-Fi can add its own interface (tap0, tun_srsue, wlan0, ...) that
carries real traffic.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from emu.testbed import EmuTestbed
from testbed.interface import HostInfo
from tests.colosseum.standins import standin

STANDINS = Path(__file__).parent / "standins"
UNREACHABLE_OCTET = 250  # no namespace has this management address: an SRN/Pi that is not there


@dataclass
class EmulatedHosts:
    """An emu testbed whose nodes play remote hosts, plus the stand-in tools they run."""

    emu: EmuTestbed
    root: Path
    by_alias: dict[str, HostInfo]

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def install(self, *sources: Path) -> None:
        """Copy stand-ins: a file goes into ``bin/`` (on PATH), a directory keeps its name under the root."""
        for source in sources:
            if source.is_file():
                shutil.copy2(source, self.bin / source.name)
                continue
            for path in sorted(source.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    target = self.root / source.name / path.relative_to(source)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)

    def host_description(self, alias: str) -> dict:
        return json.loads((self.root / "hosts" / f"{self.by_alias[alias].namespace}.json").read_text())

    def describe_host(self, alias: str, data: dict) -> None:
        """What the stand-ins on ``alias`` should answer (its addresses, its name)."""
        (self.root / "hosts" / f"{self.by_alias[alias].namespace}.json").write_text(json.dumps(data))

    def log(self, alias: str) -> list[str]:
        """Stand-in calls made on ``alias``, in order."""
        path = self.root / "logs" / f"{self.by_alias[alias].namespace}.log"
        return path.read_text().splitlines() if path.exists() else []

    def clear_logs(self) -> None:
        for path in (self.root / "logs").glob("*.log"):
            path.unlink()

    def set_control(self, name: str, on: bool) -> None:
        path = self.root / "control" / name
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def attach(self, alias: str, ifname: str, cidr: str) -> None:
        standin.attach(ifname, cidr, netns=self.by_alias[alias].namespace)

    def ssh_config(self, path: Path, *, gateway_alias: str, unreachable: list[str] = (), user: str | None = None,
                   proxy_jump: bool = False) -> Path:
        """An ssh config like a user's: the gateway, every host (behind it), keys and known hosts of the emu.

        ``proxy_jump`` names the gateway as each host's ProxyJump (a lab's
        bastion); without it the caller must say the gateway (as Colosseum's
        Fabric recipe does).
        """
        description = self.emu.describe()
        ssh_dir = Path(description["ssh_config"]).parent
        common = [f"  IdentityFile {ssh_dir / 'id_ed25519'}", "  IdentitiesOnly yes",
                  f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}", "  StrictHostKeyChecking yes"]
        per_host = [*common, *([f"  User {user}"] if user else []),
                    *([f"  ProxyJump {gateway_alias}"] if proxy_jump else [])]
        gateway = description["gateway"]
        blocks = [[f"Host {gateway_alias}", f"  HostName {gateway['address']}", f"  Port {gateway['port']}",
                   "  User root", *common]]
        for alias, host in self.by_alias.items():
            blocks.append([f"Host {alias}", f"  HostName {host.ssh_host}", f"  Port {host.ssh_port}", *per_host])
        mgmt_prefix = next(iter(self.by_alias.values())).ssh_host.rsplit(".", 1)[0]
        for alias in unreachable:
            blocks.append([f"Host {alias}", f"  HostName {mgmt_prefix}.{UNREACHABLE_OCTET}",
                           f"  Port {22000 + UNREACHABLE_OCTET}", *per_host])
        path.write_text("\n\n".join("\n".join(b) for b in blocks) + "\n")
        return path

    def routes(self, alias: str) -> list[str]:
        """Host routes (/32) in the namespace, as ``ip route`` prints them."""
        out = subprocess.run(["ip", "-n", self.by_alias[alias].namespace, "-4", "route", "show"], capture_output=True,
                             text=True, check=True).stdout
        return sorted(line.strip() for line in out.splitlines() if line.split()[0].count(".") == 3
                      and "/" not in line.split()[0] and "proto kernel" not in line)

    def sysctl(self, alias: str, key: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.by_alias[alias].namespace, "sysctl", "-n", key],
                              capture_output=True, text=True, check=True).stdout.strip()

    def tmux_running(self, socket: str) -> bool:
        return subprocess.run(["tmux", "-L", socket, "has-session"], capture_output=True).returncode == 0


def emulate(emu: EmuTestbed, root: Path, aliases: list[str], *, bridge: bool = True) -> EmulatedHosts:
    """Map ``aliases`` onto the emu nodes in order (user, node1, ...); ``bridge`` their data links for stand-in
    radios to attach to (without it, each keeps its emu address on ``data0``)."""
    hosts = emu.hosts()
    if len(aliases) > len(hosts):
        raise ValueError(f"{len(aliases)} aliases for {len(hosts)} emu nodes")
    for sub in ("bin", "hosts", "logs", "control"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    emulated = EmulatedHosts(emu, root, dict(zip(aliases, hosts)))
    emulated.install(STANDINS / "standin.py")
    for host in emulated.by_alias.values():
        if bridge:
            standin.bridge_data_link(host.namespace)
    return emulated
