"""The SSH testbed's data plane as data: what must hold (profiles, links cut, partitions), and how it is made so.

:class:`LinkState` says, for the hosts of a chain, each host's link
profile, which hosts are cut off (``link_down``) and which partition group
each is in.  A :class:`LinkControl` puts a state in force; the real one
(:class:`NetemLinks`) runs, on each host, the ``tc`` commands of
:func:`host_commands` (also what ``--dry-run`` prints):

* egress: a two-band ``prio`` root qdisc whose default band is left alone,
  so SSH and everything else keeps the bare link; ``u32`` filters steer
  traffic to the chain's other hosts into band 1:1, which holds ``netem``
  with the profile's uplink direction;
* ingress: the same peers' traffic redirected to an ``ifb`` device holding
  ``netem`` with the profile's downlink direction;
* a peer that must not be reached gets a ``drop`` filter in both
  directions instead: every peer of a host whose link is cut, the other
  side of a partition.

Each change rewrites the filters of the hosts it touches (``tc filter del``
then ``add``), so a state is reached from any previous one.  ``down``
removes the qdiscs and the ifb device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from testbed.fanout import on_each
from testbed.interface import PROCESS_FAULTS, SHAPING_FAULTS, FaultKind, TestbedError
from testbed.netem import netem_argv
from testbed.profiles import LinkProfile, directions, profile_from_dict, profile_to_dict
from testbed.ssh import SshShell

PRIOMAP = " ".join(["1"] * 16)  # every priority to band 1:2 (left alone); filters pick the chain's traffic


@dataclass(frozen=True)
class LinkState:
    """What the data plane of a chain must be: host name -> data IP, profile (None: the bare link), cuts, groups."""

    addresses: dict[str, str]
    profiles: dict[str, LinkProfile | None]
    down: frozenset[str] = frozenset()
    groups: dict[str, int] = field(default_factory=dict)

    def peers(self, name: str) -> list[str]:
        return [p for p in self.addresses if p != name]

    def dropped(self, name: str) -> list[str]:
        """The peers whose traffic ``name`` drops, both ways: all of them while its own link is down (a cut
        touches that host alone); those in another partition group otherwise."""
        group = self.groups.get(name, 0)
        return [p for p in self.peers(name) if name in self.down or self.groups.get(p, 0) != group]

    def replace(self, **changes) -> "LinkState":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"addresses": self.addresses, "down": sorted(self.down), "groups": self.groups,
                "profiles": {n: profile_to_dict(p) if p else None for n, p in self.profiles.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "LinkState":
        return cls(dict(data["addresses"]),
                   {n: profile_from_dict(p["name"], p) if p else None for n, p in data["profiles"].items()},
                   frozenset(data["down"]), {n: int(g) for n, g in data["groups"].items()})


def ifb_name(prefix: str) -> str:
    """The ingress device of a testbed: named from its prefix, at most 15 characters (IFNAMSIZ)."""
    return "jvifb" + hashlib.sha1(prefix.encode()).hexdigest()[:6]


def _filter(sudo: str, dev: str, parent: str, match: str, ip: str, action: str) -> str:
    return f"{sudo}tc filter add dev {dev} parent {parent} protocol ip prio 1 u32 match ip {match} {ip}/32 {action}"


def host_commands(state: LinkState, name: str, *, interface: str, ifb: str, sudo: str,
                  preserve_order: bool = True) -> list[str]:
    """The commands that put ``state`` in force on host ``name`` (idempotent: any previous state is replaced)."""
    dev, q = shlex.quote(interface), shlex.quote
    profile = state.profiles.get(name)
    up, down = directions(profile) if profile is not None else (None, None)
    dropped = set(state.dropped(name))
    commands = [f"{sudo}tc qdisc replace dev {dev} root handle 1: prio bands 2 priomap {PRIOMAP}"]
    if up is not None:
        commands.append(sudo + shlex.join(netem_argv(interface, up, parent="1:1", handle="10:",
                                                     preserve_order=preserve_order)))
    commands.append(f"{sudo}tc filter del dev {dev} parent 1: || true")
    for peer in state.peers(name):
        action = "action drop" if peer in dropped else "flowid 1:1"
        commands.append(_filter(sudo, dev, "1:", "dst", state.addresses[peer], action))
    commands += [f"{sudo}ip link add {q(ifb)} type ifb 2>/dev/null || true", f"{sudo}ip link set {q(ifb)} up",
                 f"{sudo}tc qdisc replace dev {dev} handle ffff: ingress"]
    if down is not None:
        commands.append(sudo + shlex.join(netem_argv(ifb, down, preserve_order=preserve_order)))
    commands.append(f"{sudo}tc filter del dev {dev} parent ffff: || true")
    for peer in state.peers(name):
        if peer in dropped:
            commands.append(_filter(sudo, dev, "ffff:", "src", state.addresses[peer], "action drop"))
        elif down is not None:
            commands.append(_filter(sudo, dev, "ffff:", "src", state.addresses[peer],
                                    f"action mirred egress redirect dev {q(ifb)}"))
    return commands


def clear_commands(*, interface: str, ifb: str, sudo: str) -> list[str]:
    """Remove what :func:`host_commands` made; each may find it gone already."""
    dev = shlex.quote(interface)
    return [f"{sudo}tc qdisc del dev {dev} root || true", f"{sudo}tc qdisc del dev {dev} ingress || true",
            f"{sudo}ip link del {shlex.quote(ifb)} || true"]


class LinkControl(Protocol):
    """Puts a :class:`LinkState` in force on the hosts of a chain."""

    faults: frozenset[FaultKind]  # the fault kinds this data plane can inject

    def describe(self) -> str:
        """One line for testbed.json: what shapes the links."""

    def check(self, profiles: dict[str, LinkProfile | None]) -> None:
        """Refuse, before anything starts, profiles this data plane cannot give."""

    def plan(self, state: LinkState, name: str) -> list[str]:
        """The commands :meth:`apply` runs on ``name`` for ``state`` (for ``--dry-run``)."""

    def apply(self, state: LinkState, names: set[str]) -> None:
        """Put ``state`` in force on the hosts ``names``; return once it is."""

    def clear_plan(self, name: str) -> list[str]:
        """The commands :meth:`clear` runs on ``name`` (for ``--dry-run``)."""

    def clear(self, names: list[str]) -> list[str]:
        """Undo everything on ``names``; return what could not be undone."""


class NetemLinks:
    """Kernel ``tc netem`` on every host's data interface, over the host's SSH shell."""

    faults = SHAPING_FAULTS

    def __init__(self, shell_of: Callable[[str], SshShell], *, interface_of: Callable[[str], str], ifb: str,
                 sudo: str) -> None:
        self.shell_of = shell_of
        self.interface_of = interface_of
        self.ifb = ifb
        self.sudo = sudo

    def describe(self) -> str:
        return ("tc netem on each host's data interface (egress: prio band for the chain's peers; ingress: ifb), "
                "the rest of the host's traffic left alone")

    def check(self, profiles: dict[str, LinkProfile | None]) -> None:
        pass  # netem gives every profile

    def plan(self, state: LinkState, name: str) -> list[str]:
        return host_commands(state, name, interface=self.interface_of(name), ifb=self.ifb, sudo=self.sudo)

    def apply(self, state: LinkState, names: set[str]) -> None:
        def one(name: str) -> None:
            try:
                self.shell_of(name).run_many(self.plan(state, name), cwd="/")
            except TestbedError as exc:
                raise TestbedError(f"{exc} (the kernel needs sch_prio, cls_u32, sch_netem, ifb and act_mirred; "
                                   "or set `shaping: none` in the inventory)") from None

        on_each({n: (lambda n=n: one(n)) for n in sorted(names)}, what="shaping the links")

    def clear_plan(self, name: str) -> list[str]:
        return clear_commands(interface=self.interface_of(name), ifb=self.ifb, sudo=self.sudo)

    def clear(self, names: list[str]) -> list[str]:
        problems = []
        for name in names:
            try:
                self.shell_of(name).run_many(self.clear_plan(name), cwd="/", keep_going=True)
            except TestbedError as exc:
                problems.append(str(exc))
        return problems


class BareLinks:
    """The links as they are (``shaping: none``): no profiles, and no link faults."""

    faults = PROCESS_FAULTS

    def __init__(self, what: str = "none: the hosts' links as they are") -> None:
        self.what = what

    def describe(self) -> str:
        return self.what

    def check(self, profiles: dict[str, LinkProfile | None]) -> None:
        shaped = sorted(n for n, p in profiles.items() if p is not None)
        if shaped:
            raise TestbedError(f"hosts {', '.join(shaped)} are given link profiles, but the inventory says "
                               "`shaping: none`: set `shaping: netem`, or leave the scenario's links out")

    def plan(self, state: LinkState, name: str) -> list[str]:
        return []

    def apply(self, state: LinkState, names: set[str]) -> None:
        pass  # nothing is shaped

    def clear_plan(self, name: str) -> list[str]:
        return []

    def clear(self, names: list[str]) -> list[str]:
        return []
