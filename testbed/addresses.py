"""Addresses on remote hosts: reading them from ``ip``, and checking that hosts reach each other.

Colosseum SRNs and Raspberry Pis get their data-plane addresses from their
radios (a Wi-Fi DHCP lease, a cellular attach), so testbeds read them from the
host after the radio is up, and ping every pair before a chain is deployed.
"""

from __future__ import annotations

import ipaddress
import shlex
import re
from dataclasses import dataclass

_INET = re.compile(r"\binet (\d+\.\d+\.\d+\.\d+)/(\d+)")


@dataclass(frozen=True)
class Address:
    """An IPv4 address with its prefix length; ``prefix`` 0 marks a placeholder (dry run)."""

    ip: str
    prefix: int

    @classmethod
    def from_text(cls, text: str) -> "Address":
        """From ``a.b.c.d/n`` (as stored in the testbed state)."""
        ip, prefix = text.split("/")
        return cls(ip, int(prefix))

    @classmethod
    def placeholder(cls, interface: str, srn: str) -> "Address":
        return cls(f"<{interface} of {srn}>", 0)

    def contains(self, ip: str) -> bool:
        """Whether ``ip`` lies in this address's connected subnet (assumed yes for placeholders)."""
        if self.prefix == 0:
            return True
        try:
            return ipaddress.ip_address(ip) in ipaddress.ip_network(f"{self.ip}/{self.prefix}", strict=False)
        except ValueError:
            return True

    def __str__(self) -> str:
        return f"{self.ip}/{self.prefix}"


def parse_address(output: str) -> Address | None:
    """The first IPv4 address in ``ip -4 -o addr show dev X`` output (None: no address yet)."""
    match = _INET.search(output)
    return Address(match.group(1), int(match.group(2))) if match else None


def address_command(interface: str) -> str:
    """One-line output that every iproute2 since the Ubuntu 16.04 images understands."""
    return f"ip -4 -o addr show dev {shlex.quote(interface)}"


def reach_command(ip: str) -> str:
    """One ping that succeeds at the first reply within 5 s (radios may drop the first packets)."""
    return f"ping -n -q -c 1 -w 5 {ip}"
