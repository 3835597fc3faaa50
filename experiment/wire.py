"""Which dtype each node's output travels in: the deployment's ``wire_dtype``, or, for ``auto``, one per hop.

A node's output leaves by its own uplink, so ``auto`` picks each sender's dtype (the user node's too) from
that uplink's configured rate: compressed (``AUTO_COMPRESSED``) below ``AUTO_COMPRESS_BELOW_MBIT``, where the
bytes saved take longer to send than quantising takes; ``AUTO_UNCOMPRESSED`` on faster links and where no rate is
configured (loopback, unshaped hosts).  The choice is fixed at deploy time, written into each node's config
and into the deployment (``wire_dtypes``), which the consistency oracle replays hop by hop.
"""

from __future__ import annotations

from payload.frames import WIRE_NAMES
from testbed.interface import HostInfo, TestbedError
from testbed.profiles import directions, profile_from_dict, resolve
from testbed.traces import mean_rate_mbit, read_trace

AUTO = "auto"
# Measured (benchmarks/wire_quality.py), KL against bfloat16 on the wire: int8 0.0071 nats/token on Gemma 3 270M,
# 0.0002 on SmolLM2; fp8 0.0067 and 0.0050 in 18 % fewer bytes.  int8 is the safer default.
AUTO_COMPRESSED = "int8"
AUTO_UNCOMPRESSED = "bfloat16"
# Rounding and encoding a position costs ~130 us on this CPU alone (~35 us each in a 910-position prefill) and saves
# 476 of 1,280 bytes (Gemma 3): at 50 Mbit/s a decode hop breaks about even and a prefill gains.  WiFi (30) and
# cellular (~3) compress; a server link (1000) does not.
AUTO_COMPRESS_BELOW_MBIT = 50.0
CHOICES = (*WIRE_NAMES, AUTO)


def uplink_mbit(host: HostInfo) -> float | None:
    """The configured rate of ``host``'s uplink (a trace's mean rate), None where the testbed sets none."""
    link = host.extra.get("link")
    if link:
        profile = profile_from_dict(str(link.get("name", host.name)), link)
    elif host.profile:
        profile = resolve(host.profile)
    else:
        return None
    up, _ = directions(profile)
    if up.trace:
        return mean_rate_mbit(read_trace(up.trace))
    return up.rate_mbit


def wire_dtypes(hosts: list[HostInfo], wire_dtype: str) -> dict[int, str]:
    """Each host's output dtype, by node index: ``wire_dtype`` for all, or chosen per uplink for ``auto``."""
    if wire_dtype not in CHOICES:
        raise TestbedError(f"unknown wire_dtype {wire_dtype!r}; choose one of {', '.join(CHOICES)}")
    if wire_dtype != AUTO:
        return {h.index: wire_dtype for h in hosts}
    chosen = {}
    for host in hosts:
        rate = uplink_mbit(host)
        slow = rate is not None and rate < AUTO_COMPRESS_BELOW_MBIT
        chosen[host.index] = AUTO_COMPRESSED if slow else AUTO_UNCOMPRESSED
    return chosen
