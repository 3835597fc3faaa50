"""Measure link profiles with real ``ping`` and ``iperf3`` between namespaces: configured vs measured.

``links_check`` brings up a throwaway testbed whose user node 0 has an
unimpaired reference link and whose node *k* has the *k*-th profile, then,
one profile at a time (so they do not compete for CPU), pings node 0 from
node *k* and runs TCP iperf3 in both directions.  Expected values follow the
path: a ping crosses the node's uplink and downlink (the reference adds no
delay), so

* mean RTT = uplink + downlink delay + the ping frame's serialisation time;
* RTT std dev = sqrt(sigma_up^2 + sigma_down^2), sigma = jitter (normal) or
  jitter/sqrt(3) (uniform);
* loss per ping = 1 - (1 - p_up)(1 - p_down), and the lost count must fall in
  the central binomial 95% interval for that many pings;
* TCP goodput = rate x 1448/1514 (rates count whole Ethernet frames; a
  full-size TCP segment carries 1448 payload bytes with timestamps).  iperf3
  runs with the profile's loss switched off live (``degrade``): under random
  loss TCP is loss-limited (Mathis: MSS/RTT x 1.22/sqrt(p)), not rate-limited,
  so it would test TCP rather than the link; ping has already checked the loss.

A trace-driven direction (testbed/traces.py) is measured by what it delivers
instead: a UDP flood (emu/probe.py) at twice the trace's peak rate, with
1472-byte datagrams (one 1500-byte IP packet, one delivery opportunity
each), counted on the far side in one-second bins of the host's monotonic
clock for ``trace_seconds`` (default: one period of the trace), after a
second for the queue to fill.  The expected series is the trace's own:
opportunities per second x 1472 payload bytes, in the same windows shifted by
the direction's delay, from the trace's epoch (the shaper reports when it
began serving the trace, on the same clock).  Targets: mean delivery rate
within 5 %, per-second series correlating at least 0.9 (issue 17).  Pings
cross the trace-driven queue too, so RTT and jitter are reported but not
judged for such a profile.

Targets (issue 4): RTT within 5% or 0.5 ms, jitter within 20% (or 0.25 ms,
the scheduling noise of an unjittered path), throughput within 10%.  The
userspace shaper tops out near 1 Gbit/s on a quiet 2-core machine and lower on
a busy one, so the GbE ``server`` profile's throughput can fail there: the
``ideal`` row shows the ceiling of the machine at hand.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from emu.probe import measure_rate
from testbed.interface import HostInfo, TestbedError
from testbed.profiles import LinkProfile
from testbed.traces import rate_series_mbit, read_trace

from emu import system
from testbed.profiles import directions, load_profiles, profile_from_dict, profile_to_dict, resolve
from emu.testbed import EmuTestbed

UDP_PAYLOAD = 1472  # a 1500-byte IP packet: one delivery opportunity of a trace
PING_FRAME_BYTES = 98  # 56-byte ICMP payload + 8 ICMP + 20 IP + 14 Ethernet
TCP_GOODPUT_SHARE = 1448 / 1514
IPERF_PORT = 5201
PING_PRIORITY = 5
REFERENCE = LinkProfile(name="reference", source="unimpaired reference end of the link check")


@dataclass(frozen=True)
class Targets:
    """Pass/fail tolerances of the link check."""

    rtt_rel: float = 0.05
    rtt_abs_ms: float = 0.5
    jitter_rel: float = 0.20
    jitter_abs_ms: float = 0.25
    throughput_rel: float = 0.10
    loss_level: float = 0.95
    trace_rate_rel: float = 0.05
    trace_correlation: float = 0.9


def _sigma_ms(direction: LinkProfile) -> float:
    return direction.jitter_ms / math.sqrt(3) if direction.distribution == "uniform" else direction.jitter_ms


def _serialise_ms(direction: LinkProfile, frame_bytes: int) -> float:
    return 0.0 if direction.rate_mbit is None else frame_bytes * 8 / (direction.rate_mbit * 1e3)


def expected_rtt_ms(profile: LinkProfile) -> float:
    up, down = directions(profile)
    return sum(d.delay_ms + _serialise_ms(d, PING_FRAME_BYTES) for d in (up, down))


def expected_jitter_ms(profile: LinkProfile) -> float:
    return math.hypot(*(_sigma_ms(d) for d in directions(profile)))


def expected_loss(profile: LinkProfile) -> float:
    up, down = directions(profile)
    return 1 - (1 - up.loss_pct / 100) * (1 - down.loss_pct / 100)


def expected_goodput_mbit(direction: LinkProfile) -> float | None:
    return None if direction.rate_mbit is None else direction.rate_mbit * TCP_GOODPUT_SHARE


def binomial_interval(n: int, p: float, level: float = 0.95) -> tuple[int, int]:
    """Central interval [lo, hi] of Binomial(n, p) counts holding at least ``level`` of the mass."""
    if p <= 0:
        return 0, 0
    if p >= 1:
        return n, n
    tail = (1 - level) / 2
    cdf, lo = 0.0, None
    for k in range(n + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log1p(-p))
        if lo is None and cdf > tail:
            lo = k
        if cdf >= 1 - tail:
            return lo if lo is not None else k, k
    return lo if lo is not None else n, n


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/([\d.]+) ms")


def parse_ping(text: str) -> dict:
    """Transmitted, received, mean RTT and RTT std dev (ping's mdev) from ping's summary."""
    counts = _PING_COUNTS.search(text)
    if counts is None:
        raise TestbedError(f"cannot read ping's summary:\n{text}")
    rtt = _PING_RTT.search(text)
    return {"transmitted": int(counts[1]), "received": int(counts[2]),
            "rtt_ms": float(rtt[1]) if rtt else math.nan, "mdev_ms": float(rtt[2]) if rtt else math.nan}


def ping(namespace: str, address: str, *, count: int, interval: float) -> dict:
    """Ping at real-time priority (below the shaper's): ping stamps its sends in userspace, so on a busy
    machine a descheduled ping would add its own delay to the link's."""
    out = system.run(["ip", "netns", "exec", namespace, "chrt", "-f", str(PING_PRIORITY), "ping", "-n", "-q",
                      "-c", str(count), "-i", str(interval), "-W", "5", address],
                     check=False, timeout=count * interval + 60)
    return parse_ping(out.stdout + out.stderr)


def _listening(pid: int, port: int) -> bool:
    """Whether the process's network namespace has a TCP listener on ``port`` (its /proc view)."""
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text()
    except OSError:
        return False
    return any(fields[1].endswith(f":{port:04X}") and fields[3] == "0A"
               for fields in (line.split() for line in table.splitlines()[1:]))


def iperf3_mbit(client: HostInfo, server: HostInfo, *, duration: float, reverse: bool) -> float:
    """TCP goodput in Mbit/s received, client -> server (``reverse``: server -> client); first second omitted."""
    srv = subprocess.Popen(["ip", "netns", "exec", server.namespace, "iperf3", "-s", "-1", "-p", str(IPERF_PORT),
                            "-B", server.address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if not system.wait_until(lambda: _listening(srv.pid, IPERF_PORT) or srv.poll() is not None, timeout=5):
            raise TestbedError(f"iperf3 server in {server.namespace} did not start listening")
        argv = ["ip", "netns", "exec", client.namespace, "iperf3", "-c", server.address, "-p", str(IPERF_PORT),
                "-t", f"{duration:g}", "-O", "1", "-J", *(["-R"] if reverse else [])]
        out = system.run(argv, check=False, timeout=duration + 60)
        try:
            report = json.loads(out.stdout)
            return report["end"]["sum_received"]["bits_per_second"] / 1e6
        except (json.JSONDecodeError, KeyError) as exc:
            raise TestbedError(f"iperf3 {client.name} -> {server.name} failed: {out.stdout[-500:]}{out.stderr}"
                               ) from exc
    finally:
        srv.kill()
        srv.wait()


def correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson's r (nan when either series is constant)."""
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def check_trace(testbed: EmuTestbed, node: HostInfo, reference: HostInfo, direction: LinkProfile, which: str, *,
                seconds: int | None, targets: Targets) -> dict:
    """A trace-driven direction ('up' or 'down' of ``node``'s link): delivered vs the trace, second by second."""
    times = read_trace(direction.trace)
    seconds = seconds or max(3, round(times[-1] / 1000))
    peak = max(rate_series_mbit(times, 0.0, max(1, round(times[-1] / 1000)), UDP_PAYLOAD))
    sender, receiver = (node, reference) if which == "up" else (reference, node)
    origin, measured = measure_rate(sender.namespace, receiver.namespace, receiver.address, seconds=seconds,
                                    rate_mbit=2 * peak + 1, size=UDP_PAYLOAD)
    epoch = testbed.shaper_status()["trace_epochs_mono_ns"][f"{node.index}/{'uplink' if which == 'up' else 'downlink'}"]
    start_s = (origin - epoch) / 1e9 - direction.delay_ms / 1000  # what arrives in a second left a delay earlier
    expected = rate_series_mbit(times, start_s, len(measured), UDP_PAYLOAD)
    mean_expected, mean_measured = sum(expected) / len(expected), sum(measured) / len(measured)
    r = correlation(expected, measured)
    ok = (abs(mean_measured - mean_expected) <= targets.trace_rate_rel * mean_expected
          and r >= targets.trace_correlation)
    return {f"{which}_mbit_configured": None, f"{which}_mbit_expected": mean_expected,
            f"{which}_mbit_measured": mean_measured, f"{which}_trace_correlation": r,
            f"{which}_trace_seconds": len(measured), f"{which}_ok": ok}


def lossless(profile: LinkProfile) -> LinkProfile:
    """The same profile with loss 0 in both directions (for throughput runs)."""
    fields = profile_to_dict(profile)
    for direction in ("uplink", "downlink"):
        fields[direction]["loss_pct"] = 0.0
    return profile_from_dict(profile.name, fields)


def check_profile(testbed: EmuTestbed, node: HostInfo, reference: HostInfo, profile: LinkProfile, *, count: int,
                  interval: float, duration: float, targets: Targets = Targets(),
                  trace_seconds: int | None = None) -> dict:
    """One row: ``profile`` (on ``node``'s link) configured vs measured against ``reference``."""
    pinged = ping(node.namespace, reference.address, count=count, interval=interval)
    rtt_c, jit_c, loss_c = expected_rtt_ms(profile), expected_jitter_ms(profile), expected_loss(profile)
    lost = pinged["transmitted"] - pinged["received"]
    lo, hi = binomial_interval(pinged["transmitted"], loss_c, targets.loss_level)
    n = max(pinged["transmitted"], 1)
    traced = any(d.trace for d in directions(profile))  # pings wait for the trace's opportunities: not judged
    row = {
        "profile": profile.name, "node": node.name, "pings": pinged["transmitted"],
        "rtt_ms_configured": rtt_c, "rtt_ms_measured": pinged["rtt_ms"],
        "rtt_ok": None if traced else abs(pinged["rtt_ms"] - rtt_c) <= max(targets.rtt_rel * rtt_c,
                                                                           targets.rtt_abs_ms),
        "jitter_ms_configured": jit_c, "jitter_ms_measured": pinged["mdev_ms"],
        "jitter_ok": None if traced else abs(pinged["mdev_ms"] - jit_c) <= max(targets.jitter_rel * jit_c,
                                                                               targets.jitter_abs_ms),
        "loss_pct_configured": 100 * loss_c, "loss_pct_measured": 100 * lost / n,
        "loss_pct_interval": [100 * lo / n, 100 * hi / n], "loss_ok": lo <= lost <= hi,
        "throughput_loss_off": loss_c > 0,
    }
    if loss_c > 0:
        testbed.degrade(node, lossless(profile))
    for name, direction, reverse in (("up", directions(profile)[0], False), ("down", directions(profile)[1], True)):
        if direction.trace:
            row |= check_trace(testbed, node, reference, direction, name, seconds=trace_seconds, targets=targets)
            continue
        expected = expected_goodput_mbit(direction)
        measured = iperf3_mbit(node, reference, duration=duration, reverse=reverse)
        row[f"{name}_mbit_configured"] = direction.rate_mbit
        row[f"{name}_mbit_expected"] = expected
        row[f"{name}_mbit_measured"] = measured
        row[f"{name}_ok"] = None if expected is None else abs(measured - expected) <= targets.throughput_rel * expected
    if loss_c > 0:
        testbed.degrade(node, profile)
    row["ok"] = all(v is not False for k, v in row.items() if k.endswith("_ok"))
    return row


def links_check(prefix: str = "jv-linkcheck", profiles: Sequence[str | LinkProfile] | None = None,
                duration: float = 5.0, count: int = 200, *, interval: float = 0.02,
                profiles_file: Path | str | None = None, backend: str = "auto", seed: int | None = None,
                targets: Targets = Targets(), trace_seconds: int | None = None) -> list[dict]:
    """Measure each profile (default: every known one) on a throwaway testbed ``prefix``; return one row each.

    ``seed`` fixes the userspace shaper's random draws (loss, jitter) so a check can be repeated exactly.
    """
    known = load_profiles(profiles_file)
    chosen = [resolve(p, known) for p in (profiles if profiles is not None else list(known))]
    if not chosen:
        raise TestbedError("links_check needs at least one profile")
    testbed = EmuTestbed(prefix, backend=backend, profiles_file=profiles_file, seed=seed)
    hosts = testbed.up(len(chosen), {0: REFERENCE, **{i + 1: p for i, p in enumerate(chosen)}})
    try:
        backend_name = testbed.describe()["backend"]
        return [{**check_profile(testbed, hosts[i + 1], hosts[0], p, count=count, interval=interval, duration=duration,
                                 targets=targets, trace_seconds=trace_seconds), "backend": backend_name}
                for i, p in enumerate(chosen)]
    finally:
        testbed.down()


def _pair(configured: float | None, measured: float, ok: bool | None, digits: int = 2, r: float | None = None
          ) -> str:
    mark = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: "[dim]-[/]"}[ok]
    conf = "unlimited" if configured is None else f"{configured:.{digits}f}"
    return f"{conf} / {measured:.{digits}f}" + (f" (trace, r={r:.2f})" if r is not None else "") + f" {mark}"


def print_rows(rows: list[dict], console: Console | None = None) -> None:
    """A configured / measured table, one row per profile."""
    table = Table(title="emu links-check: configured / measured"
                  + (f" (backend: {rows[0]['backend']})" if rows and "backend" in rows[0] else ""))
    for column in ("profile", "RTT ms", "jitter ms", "loss % [95% interval]", "up Mbit/s goodput*",
                   "down Mbit/s goodput*", "all"):
        table.add_column(column)
    for r in rows:
        lo, hi = r["loss_pct_interval"]
        table.add_row(
            r["profile"], _pair(r["rtt_ms_configured"], r["rtt_ms_measured"], r["rtt_ok"]),
            _pair(r["jitter_ms_configured"], r["jitter_ms_measured"], r["jitter_ok"]),
            f"{r['loss_pct_configured']:.2f} / {r['loss_pct_measured']:.2f} [{lo:.1f}, {hi:.1f}] "
            + ("[green]ok[/]" if r["loss_ok"] else "[red]FAIL[/]"),
            _pair(r["up_mbit_expected"], r["up_mbit_measured"], r["up_ok"], 1, r.get("up_trace_correlation")),
            _pair(r["down_mbit_expected"], r["down_mbit_measured"], r["down_ok"], 1, r.get("down_trace_correlation")),
            "[green]pass[/]" if r["ok"] else "[red]FAIL[/]")
    console = console or Console()
    console.print(table)
    console.print("* TCP goodput expected = rate x 1448/1514; measured with the profile's loss off "
                  "(ping checks the loss). A trace-driven direction: UDP delivered vs the trace's rate, mean over "
                  "its seconds and their correlation r (targets: within 5 %, r >= 0.9)")
