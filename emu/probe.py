"""A UDP sequence probe: what a link does to frames, measured from outside the nodes.

``send`` writes ``count`` numbered datagrams to an address at a fixed
interval; ``recv`` counts what arrives within a timeout and prints one JSON
line: how many of the sent sequence numbers arrived (``delivered``), how many
arrived more than once (``duplicates``), how many arrived after a higher
number had (``reordered``), and ``lost``.  A corrupted frame shows up as
lost, since the receiving kernel drops it on its checksum.  Run each side in
a node's namespace (``ip netns exec NS python -m emu.probe ...``); the
fault tests use :func:`measure`, which does both.

With ``--rate-mbit`` the sender floods instead (bursts every ``TICK_S``), and
the receiver counts what arrives in one-second bins of the host's monotonic
clock from a given origin (``--origin-ns``): the delivery rate of a link,
second by second, on the same clock as the shaper's trace epochs, with no
handshake to blur where a second begins (:func:`measure_rate`).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAGIC = b"JVPR"
HEADER = struct.Struct("!4sI")
PAYLOAD = 200  # bytes per datagram: small, so a probe never queues behind itself on a shaped link
TICK_S = 0.002  # a flood sends a burst this often: finer pacing costs a Python sender more than it is worth


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    delivered: int
    duplicates: int
    reordered: int
    bin_bytes: tuple[int, ...] = ()  # a flood: payload bytes received in each second from the origin

    @property
    def lost(self) -> int:
        return self.sent - self.delivered

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


def send(address: str, port: int, count: int, interval_s: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        for seq in range(count):
            delay = start + seq * interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.sendto(HEADER.pack(MAGIC, seq).ljust(PAYLOAD, b"\0"), (address, port))


def flood(address: str, port: int, seconds: float, rate_mbit: float, size: int) -> None:
    """Send ``size``-byte numbered datagrams at ``rate_mbit`` (of UDP payload) for ``seconds``."""
    per_s = rate_mbit * 1e6 / 8 / size
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start, seq = time.monotonic(), 0
        while (now := time.monotonic()) < start + seconds:
            due = int((now - start) * per_s) + 1
            while seq < due:
                try:
                    sock.sendto(HEADER.pack(MAGIC, seq).ljust(size, b"\0"), (address, port))
                except OSError:
                    pass  # a full socket buffer: the datagram is lost before the link, as iperf3's would be
                seq += 1
            time.sleep(TICK_S)


def receive(port: int, count: int, timeout_s: float, ready: Callable[[], None] = lambda: None,
            origin_ns: int | None = None, bins: int = 0) -> ProbeResult:
    """Count arrivals until ``timeout_s`` passes with nothing new; ``ready`` is called once the port is bound.
    With ``origin_ns``, also bytes received in each of ``bins`` one-second bins of the monotonic clock from it."""
    seen: set[int] = set()
    binned = [0] * bins
    duplicates = reordered = 0
    highest = -1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        sock.settimeout(timeout_s)
        ready()
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if len(data) < HEADER.size or data[:4] != MAGIC:
                continue
            seq = HEADER.unpack_from(data)[1]
            if origin_ns is not None:
                k = (time.monotonic_ns() - origin_ns) // 1_000_000_000
                if 0 <= k < bins:
                    binned[k] += len(data)
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            if seq < highest:
                reordered += 1
            highest = max(highest, seq)
    return ProbeResult(count, len(seen), duplicates, reordered, tuple(binned))


def _argv(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, sys.executable, "-m", "emu.probe", *args]


def measure(src_namespace: str, dst_namespace: str, dst_address: str, *, count: int = 200, interval_s: float = 0.002,
            port: int = 47_999, timeout_s: float = 1.0) -> ProbeResult:
    """Send ``count`` datagrams from one namespace to ``dst_address`` in another; what arrived."""
    receiver = subprocess.Popen(_argv(dst_namespace, "recv", "--port", str(port), "--count", str(count),
                                      "--timeout", str(timeout_s)),
                                stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe receiver did not start")
        subprocess.run(_argv(src_namespace, "send", "--to", f"{dst_address}:{port}", "--count", str(count),
                             "--interval", str(interval_s)), check=True, cwd=PROJECT_ROOT, timeout=60)
        out, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
    return ProbeResult(**json.loads(out))


def measure_rate(src_namespace: str, dst_namespace: str, dst_address: str, *, seconds: int, rate_mbit: float,
                 size: int, warmup_s: float = 1.0, port: int = 47_998) -> tuple[int, list[float]]:
    """Flood ``dst_address`` from ``src_namespace`` at ``rate_mbit`` for ``warmup_s + seconds``; return the origin
    (monotonic ns: ``warmup_s`` after the flood began, so the link's queue has filled) and the Mbit/s of payload
    received in each second after it."""
    origin = time.monotonic_ns() + round((warmup_s + 0.3) * 1e9)  # 0.3 s: both Pythons start in their namespaces
    receiver = subprocess.Popen(_argv(dst_namespace, "recv", "--port", str(port), "--count", "0", "--timeout", "3",
                                      "--origin-ns", str(origin), "--bins", str(seconds)),
                                stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe receiver did not start")
        subprocess.run(_argv(src_namespace, "send", "--to", f"{dst_address}:{port}", "--rate-mbit", str(rate_mbit),
                             "--seconds", str(warmup_s + 0.3 + seconds), "--size", str(size)),
                       check=True, cwd=PROJECT_ROOT, timeout=seconds + 60)
        out, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
    return origin, [b * 8 / 1e6 for b in json.loads(out)["bin_bytes"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emu.probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True, help="ADDRESS:PORT")
    s.add_argument("--count", type=int, default=200)
    s.add_argument("--interval", type=float, default=0.002, help="seconds between datagrams")
    s.add_argument("--rate-mbit", type=float, help="flood at this rate instead of --count datagrams")
    s.add_argument("--seconds", type=float, default=10.0, help="how long a flood lasts")
    s.add_argument("--size", type=int, default=PAYLOAD, help="bytes per datagram of a flood")
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, default=200, help="how many the sender sends")
    r.add_argument("--timeout", type=float, default=1.0, help="seconds of silence that end the count")
    r.add_argument("--origin-ns", type=int, help="monotonic ns from which arrivals are binned by second")
    r.add_argument("--bins", type=int, default=0, help="how many one-second bins")
    args = parser.parse_args(argv)
    if args.role == "send":
        address, _, port = args.to.rpartition(":")
        if args.rate_mbit:
            flood(address, int(port), args.seconds, args.rate_mbit, args.size)
        else:
            send(address, int(port), args.count, args.interval)
        return 0
    result = receive(args.port, args.count, args.timeout, ready=lambda: print("ready", flush=True),
                     origin_ns=args.origin_ns, bins=args.bins)
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
