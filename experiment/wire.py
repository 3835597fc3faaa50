"""How hidden states travel: each node's output dtype (``wire_dtype``, or per hop for ``auto``), and the chunks
a long prompt's prefill is pipelined in (``prefill_chunk``).

A node's output leaves by its own uplink, so ``auto`` picks each sender's dtype (the user node's too) from
that uplink's configured rate: compressed (``AUTO_COMPRESSED``) below ``AUTO_COMPRESS_BELOW_MBIT``, where the
bytes saved take longer to send than quantising takes; ``AUTO_UNCOMPRESSED`` on faster links and where no rate is
configured (loopback, unshaped hosts).  The choice is fixed at deploy time, written into each node's config
and into the deployment (``wire_dtypes``), which the consistency oracle replays hop by hop.
"""

from __future__ import annotations

from payload.frames import WIRE_NAMES
from testbed.interface import UNSHAPED, HostInfo, TestbedError
from testbed.profiles import LinkProfile, directions, profile_from_dict, resolve
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


def link_of(host: HostInfo) -> tuple[LinkProfile, LinkProfile] | None:
    """(uplink, downlink) as the testbed configured ``host``'s access link, None where it sets none."""
    link = host.extra.get("link")
    if link:
        return directions(profile_from_dict(str(link.get("name", host.name)), link))
    if host.profile and host.profile != UNSHAPED:
        return directions(resolve(host.profile))
    return None


def rate_mbit(direction: LinkProfile) -> float | None:
    """A direction's configured rate (a trace's mean rate); None: unlimited."""
    if direction.trace:
        return mean_rate_mbit(read_trace(direction.trace))
    return direction.rate_mbit


def uplink_mbit(host: HostInfo) -> float | None:
    """The configured rate of ``host``'s uplink (a trace's mean rate), None where the testbed sets none."""
    link = link_of(host)
    return None if link is None else rate_mbit(link[0])


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


MIN_CHUNK = 32  # positions: below this a chunk's per-frame costs (a forward, an ack) outweigh the overlap


def prefill_chunk(hosts: list[HostInfo], dtypes: dict[int, str], hidden: int, requested: int | str) -> int:
    """Positions per frame of a chunked prefill: ``requested``, or for ``auto`` the slowest hop's bandwidth-delay
    product (0: no chunking, where no link has a rate).

    The user node writes a session's next chunk once the previous one is acked (layer nodes forward each chunk
    as soon as it is written), so each chunk costs the first hop one round trip besides its bytes; along the
    chain, each slow hop delays the first chunk by its bytes, so smaller chunks fill the pipeline sooner and
    cost more frames.  One bandwidth-delay product balances the two (measured: a 910-token prompt over 7
    cellular hops was fastest at ~130 positions, the cellular hop's product in bf16).  On the study's 18-node
    blend a third of it (64 positions) measured fastest, 6.4-7.0 s against 9.5-10.1 s to first token, but 2 of
    8 such rounds declared a healthy node silent when a lossy WiFi hop stalled for 1.8 s (README, measured
    table), so the default stays the product."""
    if isinstance(requested, str) and requested != AUTO and requested.isdigit():
        requested = int(requested)  # from the command line
    if requested != AUTO:
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 0:
            raise TestbedError(f"prefill_chunk must be auto or a number of positions >= 0, got {requested!r}")
        return requested
    links = {h.index: link_of(h) for h in hosts}
    slowest = [(rate, h) for h in hosts if links[h.index] and (rate := rate_mbit(links[h.index][0])) is not None]
    if not slowest:
        return 0
    rate, sender = min(slowest, key=lambda pair: pair[0])
    farthest_down = max((link[1].delay_ms for link in links.values() if link), default=0.0)
    rtt_s = max(2 * (links[sender.index][0].delay_ms + farthest_down) / 1000, 0.002)
    chunk_bytes = rate * 1e6 / 8 * rtt_s
    position = WIRE_NAMES[dtypes[sender.index]].position_bytes(hidden)
    return max(MIN_CHUNK, round(chunk_bytes / position))
