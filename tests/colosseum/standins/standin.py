"""Shared code of the STAND-IN tools (not the real colosseumcli, radio scripts, nmcli, chronyc or systemctl).

The tests log in over real SSH to emu namespaces that play SRNs and Pis;
only the tools that exist on real SRNs/Pis and not here are faked.  Each
stand-in appends its command line to ``logs/<namespace>.log`` under the
stand-in root, answers as the real tool is documented to, and where the
real tool creates a network interface it creates a veth in the calling
namespace, bridged onto the namespace's emu data link (so traffic really
flows).  Which host is calling comes from ``ip netns identify``; what that
host should look like from ``hosts/<namespace>.json``.  Standard library only.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = "srnbr"
OFFLOADS = ["tso", "off", "gso", "off", "gro", "off", "tx", "off"]


def namespace() -> str:
    return subprocess.run(["ip", "netns", "identify", str(os.getpid())], capture_output=True, text=True,
                          check=True).stdout.strip()


def host() -> dict:
    """This host's stand-in description (addresses its radio/Wi-Fi would get, its name)."""
    return json.loads((ROOT / "hosts" / f"{namespace()}.json").read_text())


def log(argv: list[str] | None = None) -> None:
    """Append ``tool args...`` (tool without its directory) to this namespace's log."""
    argv = list(sys.argv if argv is None else argv)
    line = shlex.join([Path(argv[0]).name, *argv[1:]])
    with open(ROOT / "logs" / f"{namespace()}.log", "a") as out:
        out.write(line + "\n")


def control(name: str) -> bool:
    """Whether the test asked the stand-ins to misbehave in a given way (a file under control/)."""
    return (ROOT / "control" / name).exists()


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def attach(ifname: str, cidr: str, *, netns: str | None = None) -> None:
    """Create ``ifname`` with ``cidr``: one end of a veth pair whose other end joins the data-plane bridge."""
    peer = f"{ifname}-b"
    ip("link", "del", ifname, netns=netns, check=False)
    ip("link", "add", ifname, "type", "veth", "peer", "name", peer, netns=netns)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    for dev in (ifname, peer):
        subprocess.run([*prefix, "ethtool", "-K", dev, *OFFLOADS], capture_output=True, check=True)
    ip("link", "set", peer, "master", BRIDGE, "up", netns=netns)
    ip("addr", "add", cidr, "dev", ifname, netns=netns)
    ip("link", "set", ifname, "up", netns=netns)


def bridge_data_link(netns: str, data_if: str = "data0") -> None:
    """Turn the namespace's emu data link into a bridge port, so several interfaces can share it."""
    ip("link", "set", data_if, "down", netns=netns)
    ip("addr", "flush", "dev", data_if, netns=netns)
    ip("link", "add", BRIDGE, "type", "bridge", netns=netns)
    ip("link", "set", data_if, "master", BRIDGE, netns=netns)
    ip("link", "set", data_if, "up", netns=netns)
    ip("link", "set", BRIDGE, "up", netns=netns)
