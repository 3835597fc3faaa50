"""Names and addresses of one emu testbed, computed before anything is created.

Pure data (like Mininet's ``Topo``): ``make_plan`` derives every namespace,
interface, address, MAC and port from the prefix and a slot number, so tests
can check the plan without root and ``down`` can rebuild it from the manifest.

Each testbed owns one slot ``K`` (0..255) and with it three subnets:

* data plane ``10.213.K.0/24``: node *i* is ``.(10+i)``, shaped access links;
* management ``10.214.K.0/24``: node *i* is ``.(10+i)``, the gateway ``.254``;
  unshaped, bridged inside the gateway namespace (like Colosseum's ``can0``),
  so SSH keeps working while a node's data link is cut, degraded or partitioned;
* gateway uplink ``10.215.K.0/30``: root namespace ``.1``, gateway ``.2``: the
  only address the orchestrator reaches directly, as with ``gw.colosseum.net``.

Linux interface names hold 15 characters, so root-side interfaces carry a short
tag derived from the prefix (``jv`` + 5 hex digits) rather than the prefix itself.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from testbed.interface import TestbedError

MAX_NODES = 200
GATEWAY_PORT = 2222
NODE_PORT_BASE = 22000
DATA_IF = "data0"
MGMT_IF = "mgmt0"
UPLINK_IF = "uplink0"
MGMT_BRIDGE = "mgmtbr"
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def check_prefix(prefix: str) -> str:
    """Reject prefixes that would make bad namespace names (they end up in /run/netns and paths)."""
    if not _PREFIX.match(prefix):
        raise TestbedError(f"bad emu prefix {prefix!r}: use 1-40 lowercase letters, digits and '-' (e.g. jv-demo)")
    return prefix


def tag_for(prefix: str) -> str:
    return "jv" + hashlib.sha1(prefix.encode()).hexdigest()[:5]


def node_name(index: int) -> str:
    """Same names as the local testbed, so run directories read alike."""
    return "user" if index == 0 else f"node{index}"


@dataclass(frozen=True)
class NodePlan:
    """One node: its namespace, addresses, SSH endpoint and the root-side end of its access link."""

    index: int
    name: str
    namespace: str
    data_ip: str
    mgmt_ip: str
    mac: str
    ssh_port: int
    root_if: str
    workdir: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """Everything one testbed creates, by name."""

    prefix: str
    slot: int
    tag: str
    state_dir: str
    gateway_namespace: str
    gateway_root_if: str
    gateway_root_ip: str
    gateway_ip: str
    gateway_mgmt_ip: str
    gateway_port: int
    nodes: tuple[NodePlan, ...]

    @property
    def uplink_subnet(self) -> str:
        return f"10.215.{self.slot}.0/30"

    @property
    def data_subnet(self) -> str:
        return f"10.213.{self.slot}.0/24"

    @property
    def mgmt_subnet(self) -> str:
        return f"10.214.{self.slot}.0/24"

    @property
    def namespaces(self) -> list[str]:
        return [self.gateway_namespace, *(n.namespace for n in self.nodes)]

    @property
    def root_links(self) -> list[str]:
        return [self.gateway_root_if, *(n.root_if for n in self.nodes)]

    def to_dict(self) -> dict:
        return {**asdict(self), "nodes": [n.to_dict() for n in self.nodes]}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(**{**data, "nodes": tuple(NodePlan(**n) for n in data["nodes"])})


def make_plan(prefix: str, slot: int, nodes: int, state_dir: Path) -> Plan:
    """The plan of a testbed with user node 0 and layer nodes 1..``nodes``."""
    check_prefix(prefix)
    if not 1 <= nodes <= MAX_NODES:
        raise TestbedError(f"the emu testbed takes 1..{MAX_NODES} layer nodes, got {nodes}")
    if not 0 <= slot <= 255:
        raise TestbedError(f"slot must lie in 0..255, got {slot}")
    tag = tag_for(prefix)
    plans = tuple(
        NodePlan(index=i, name=node_name(i), namespace=f"{prefix}-{node_name(i)}",
                 data_ip=f"10.213.{slot}.{10 + i}", mgmt_ip=f"10.214.{slot}.{10 + i}",
                 mac=f"02:6a:76:{slot:02x}:{i >> 8:02x}:{i & 0xff:02x}", ssh_port=NODE_PORT_BASE + i,
                 root_if=f"{tag}d{i}", workdir=str(state_dir / "nodes" / node_name(i)))
        for i in range(nodes + 1))
    return Plan(prefix=prefix, slot=slot, tag=tag, state_dir=str(state_dir), gateway_namespace=f"{prefix}-gw",
                gateway_root_if=f"{tag}g", gateway_root_ip=f"10.215.{slot}.1", gateway_ip=f"10.215.{slot}.2",
                gateway_mgmt_ip=f"10.214.{slot}.254", gateway_port=GATEWAY_PORT, nodes=plans)
