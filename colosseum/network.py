"""The data plane of a Colosseum reservation: addresses per role, and the routes that make RF carry the traffic.

Every SRN has the wired collaboration network ``col0``; RF-carried IP exists
only on the radio stack's interface (``tap0`` for Wi-Fi, ``tun_srsue`` on a
UE, ``srs_spgw_sgi`` on the base station).  A node is addressed by its
role's interface.  Traffic between different networks crosses a *bridge*
(the base station for cellular, the Wi-Fi SRN marked ``gateway``) and the
wired network, so each such pair gets /32 host routes: more specific than
any connected col0 subnet, they force a Wi-Fi or cellular node's traffic
onto its radio even though it also sits on col0.  Pure functions: the
testbed discovers addresses, this module says what to add.
"""

from __future__ import annotations

from dataclasses import dataclass

from colosseum.inventory import WIRED_INTERFACE, Inventory, Srn
from testbed.addresses import Address

@dataclass(frozen=True)
class SrnAddresses:
    """What one SRN contributes to the data plane: its role's address, and col0 where it is needed."""

    data: Address
    wired: Address | None = None


@dataclass(frozen=True, order=True)
class Route:
    """A host route ``destination/32 via gateway dev device`` (``onlink`` when the gateway is off-subnet)."""

    destination: str
    via: str
    device: str
    onlink: bool = False

    def spec(self) -> str:
        """The route as ``ip route`` takes it (after ``replace`` or ``del``)."""
        return f"{self.destination}/32 via {self.via} dev {self.device}" + (" onlink" if self.onlink else "")


def needs_wired(srn: Srn) -> bool:
    """SRNs whose col0 address the routes use: servers (their data interface) and bridges."""
    return srn.network == "wired" or srn.bridge


@dataclass(frozen=True)
class DataPlane:
    """Routes per SRN name and the SRNs that must forward packets."""

    routes: dict[str, list[Route]]
    forwarders: list[str]


def plan_routes(inventory: Inventory, chain: list[str], addresses: dict[str, SrnAddresses]) -> DataPlane:
    """Host routes so every pair of ``chain`` SRNs (names) reaches each other over their radios.

    Path of a packet from N to P on different networks: N's radio -> N's
    bridge -> col0 -> P's bridge -> P's radio (a wired end skips its half).
    """
    routes: dict[str, set[Route]] = {name: set() for name in addresses}
    forwarders: set[str] = set()

    def bridge(srn: Srn) -> tuple[str, SrnAddresses]:
        b = inventory.bridge_of(srn.network)
        if b is None:
            raise ValueError(f"no bridge SRN for the {srn.network} network")
        name = inventory.name_of(b)
        return name, addresses[name]

    def to_wired_side(at: str, peer: Srn, peer_ip: str) -> None:
        """Route from a wired-attached SRN ``at`` to radio node ``peer`` via the peer's bridge's col0."""
        peer_bridge, peer_addrs = bridge(peer)
        if peer_bridge != at:
            routes[at].add(Route(peer_ip, peer_addrs.wired.ip, WIRED_INTERFACE))

    for n_name in chain:
        n = inventory.by_name(n_name)
        for p_name in chain:
            p = inventory.by_name(p_name)
            if p_name == n_name or p.network == n.network:
                continue
            p_ip = addresses[p_name].data.ip
            if n.network == "wired":
                to_wired_side(n_name, p, p_ip)
            elif n.bridge:
                if p.network != "wired":
                    to_wired_side(n_name, p, p_ip)
            else:
                n_bridge, n_bridge_addrs = bridge(n)
                own = addresses[n_name].data
                via = n_bridge_addrs.data.ip
                routes[n_name].add(Route(p_ip, via, n.interface, onlink=not own.contains(via)))
                forwarders.add(n_bridge)
                if p.network != "wired":
                    to_wired_side(n_bridge, p, p_ip)
            if p.network != "wired" and not p.bridge:
                forwarders.add(bridge(p)[0])
    return DataPlane({name: sorted(r) for name, r in routes.items() if r}, sorted(forwarders))
