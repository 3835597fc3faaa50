"""Print emu testbed up/down times (7 and 18 nodes; target: 18 up in <= 20 s) and the shaper's CPU cost.

CPU cost: UDP iperf3 at a fixed packet rate from node1 to the user node
through a 10 ms delay line; the shaper's user+system CPU time over the run
gives its CPU share and microseconds per forwarded packet.  Forwarded frames
are counted on the shaper's own ports (sysfs counters), so a receiver that
cannot keep up (iperf3's "lost") is not blamed on the emulator.  Needs root.

    python benchmarks/emu_updown.py [--nodes 7 18] [--pps 1000 10000 30000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.profiles import LinkProfile  # noqa: E402
from emu import state, system  # noqa: E402
from emu.linkcheck import IPERF_PORT  # noqa: E402
from emu.testbed import EmuTestbed  # noqa: E402

DATAGRAM_BYTES = 1000
UP_TARGET_S = 20.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tx_packets(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/statistics/tx_packets").read_text())


def time_up_down(nodes: int) -> tuple[float, float]:
    testbed = EmuTestbed(f"jv-bench-updown{nodes}", backend="userspace")
    start = time.perf_counter()
    try:
        testbed.up(nodes)
        up_s = time.perf_counter() - start
    finally:
        start = time.perf_counter()
        testbed.down()
    return up_s, time.perf_counter() - start


def shaper_cost(pps_list: list[int], seconds: float) -> list[dict]:
    testbed = EmuTestbed("jv-bench-cpu", backend="userspace")
    hosts = testbed.up(1, {0: LinkProfile("bench", delay_ms=10), 1: LinkProfile("bench", delay_ms=10)})
    rows = []
    try:
        manifest = state.load(testbed.prefix)
        pid = next(p["pid"] for p in manifest["processes"] if p["what"] == "shaper")
        to_user = manifest["plan"]["nodes"][0]["root_if"]
        user, node = hosts
        for pps in pps_list:
            server = subprocess.Popen(["ip", "netns", "exec", user.namespace, "iperf3", "-s", "-1", "-p",
                                       str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            before, sent_before, t0 = cpu_seconds(pid), tx_packets(to_user), time.perf_counter()
            out = system.run(["ip", "netns", "exec", node.namespace, "iperf3", "-u", "-c", user.address, "-p",
                              str(IPERF_PORT), "-l", str(DATAGRAM_BYTES), "-b", str(pps * DATAGRAM_BYTES * 8),
                              "-t", f"{seconds:g}", "-J"], timeout=seconds + 30).stdout
            time.sleep(0.1)  # the last frames leave the 10 ms delay line
            cpu, wall = cpu_seconds(pid) - before, time.perf_counter() - t0
            forwarded = tx_packets(to_user) - sent_before
            server.wait(timeout=10)
            end = json.loads(out)["end"]["sum"]
            rows.append({"offered_pps": pps, "sent": end["packets"], "forwarded": forwarded,
                         "receiver_lost_pct": end["lost_percent"], "shaper_cpu_pct": 100 * cpu / wall,
                         "us_per_packet": 1e6 * cpu / max(forwarded, 1)})
    finally:
        testbed.down()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[7, 18])
    parser.add_argument("--pps", type=int, nargs="+", default=[1000, 10000, 30000])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    system.require_root()
    print(f"{'nodes':>5}  {'up s':>6}  {'down s':>6}")
    for nodes in args.nodes:
        up_s, down_s = time_up_down(nodes)
        verdict = f"  (target <= {UP_TARGET_S:g} s: {'ok' if up_s <= UP_TARGET_S else 'MISSED'})" if nodes == 18 else ""
        print(f"{nodes:>5}  {up_s:6.2f}  {down_s:6.2f}{verdict}")
    print(f"\nshaper CPU, UDP {DATAGRAM_BYTES}-byte datagrams through a 10 ms delay line, {args.seconds:g} s each")
    print(f"{'offered pps':>11}  {'sent':>7}  {'forwarded':>9}  {'shaper CPU %':>12}  {'us/packet':>9}  "
          f"{'iperf3 receiver lost %':>22}")
    for row in shaper_cost(args.pps, args.seconds):
        print(f"{row['offered_pps']:>11}  {row['sent']:>7}  {row['forwarded']:>9}  {row['shaper_cpu_pct']:12.1f}  "
              f"{row['us_per_packet']:9.1f}  {row['receiver_lost_pct']:22.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
