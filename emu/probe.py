"""A UDP sequence probe: what a link does to frames, measured from outside the nodes.

``send`` writes ``count`` numbered datagrams to an address at a fixed
interval; ``recv`` counts what arrives within a timeout and prints one JSON
line: how many of the sent sequence numbers arrived (``delivered``), how many
arrived more than once (``duplicates``), how many arrived after a higher
number had (``reordered``), and ``lost``.  A corrupted frame shows up as
lost, since the receiving kernel drops it on its checksum.  Run each side in
a node's namespace (``ip netns exec NS python -m emu.probe ...``); the
fault tests use :func:`measure`, which does both.
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


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    delivered: int
    duplicates: int
    reordered: int

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


def receive(port: int, count: int, timeout_s: float, ready: Callable[[], None] = lambda: None) -> ProbeResult:
    """Count arrivals until ``timeout_s`` passes with nothing new; ``ready`` is called once the port is bound."""
    seen: set[int] = set()
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
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            if seq < highest:
                reordered += 1
            highest = max(highest, seq)
    return ProbeResult(count, len(seen), duplicates, reordered)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emu.probe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True, help="ADDRESS:PORT")
    s.add_argument("--count", type=int, default=200)
    s.add_argument("--interval", type=float, default=0.002, help="seconds between datagrams")
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, default=200, help="how many the sender sends")
    r.add_argument("--timeout", type=float, default=1.0, help="seconds of silence that end the count")
    args = parser.parse_args(argv)
    if args.role == "send":
        address, _, port = args.to.rpartition(":")
        send(address, int(port), args.count, args.interval)
        return 0
    result = receive(args.port, args.count, args.timeout, ready=lambda: print("ready", flush=True))
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
