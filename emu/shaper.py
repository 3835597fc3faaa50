"""Userspace packet-level link emulator, for kernels without netem.

It is the switch of an emu testbed: every node's access link ends in a
root-namespace veth, and this process owns one AF_PACKET socket per veth.  A
frame from node *i* to node *j* crosses *i*'s uplink, then *j*'s downlink; each
direction applies, in order,

1. random loss (per packet, ``loss_pct``),
2. a rate limiter with a bounded droptail queue (``rate_mbit``, ``queue_pkts``
   packets waiting or in service; counted in layer-2 frame bytes, like netem),
   or, with a ``trace``, the same queue served by a Mahimahi delivery trace
   (testbed/traces.py; the trace's clock starts when the direction is first
   given that trace and runs on across reloads),
3. a delay line: ``delay_ms`` plus jitter (``normal``: std dev ``jitter_ms``;
   ``uniform``: +/- ``jitter_ms``), clipped at zero.  Unless ``preserve_order``
   is false, a packet never overtakes the one before it in the same direction
   (netem reorders on jitter; real access links mostly do not).

This mirrors the Pantheon/mahimahi calibrated emulators (delay, loss, rate,
droptail queue).  Faults beyond a profile act where a frame is switched from
node *i* to node *j*, with the impairments of both ends (Toxiproxy's and
netem's kinds): a blackhole on either end drops it (the links stay up, so
no reset, no ICMP, no carrier loss); a one-way drop (*i*, *j*) drops it in
that direction only; ``corrupt_pct`` flips one byte past the Ethernet header
(the receiving kernel's checksums then drop it, as a real NIC's would);
``duplicate_pct`` delivers it twice; ``reorder_pct`` holds it back
``REORDER_HOLD_S`` outside the FIFO order, so the frames after it overtake.  Run it as ``python -m emu.shaper --config FILE``.  SIGHUP
re-reads the config (profiles and partition groups; the ports are fixed), so a
profile can change during a run; after every (re)load it writes a status file
with the generation it applied and the exact time it did.  SIGTERM stops it.

Timing: the process runs SCHED_FIFO with 1 ns timer slack and sleeps in
select() (microsecond timeouts, unlike epoll's milliseconds), so busy
neighbours on a small machine do not stretch delays; frames due within 50 us
are sent at once.  Plain Python forwards a few tens of thousands of frames per
second (see benchmarks/emu_updown.py): ample for Wi-Fi and cellular rates, at
the edge for a full GbE link.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from testbed.traces import DeliverySchedule, read_trace

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23
SOL_PACKET = 263
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOCKET_BUFFER = 16 * 1024 * 1024
PR_SET_TIMERSLACK = 29
BATCH = 64
FRAME_BUFFER = 9216  # offloads are off, so frames are at most MTU + 14; a 64 KB buffer per recv costs ~1 us/frame
REALTIME_PRIORITY = 10  # SCHED_FIFO, low among RT tasks: above every normal process, below kernel RT threads
REORDER_HOLD_S = 0.010  # a reordered frame arrives this much later than its place in line (netem's gap, in time)
EARLY_S = 50e-6  # frames due this soon are sent now: one wakeup per frame at 1 Gbit/s (12 us) costs more than it buys


@dataclass(frozen=True)
class DirectionConfig:
    """One direction of an access link, in the units of LinkProfile."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "normal"
    loss_pct: float = 0.0
    rate_mbit: float | None = None
    queue_pkts: int = 1000
    trace: str | None = None  # a Mahimahi trace file: capacity from it instead of rate_mbit

    @classmethod
    def from_dict(cls, data: dict) -> "DirectionConfig":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class Direction:
    """Loss, droptail rate queue and delay line of one direction; pure, driven by the caller's clock.

    ``admit(now, size)`` returns when the frame leaves this direction, or None
    if it is dropped.  Callers must admit frames in time order, which the
    switch guarantees by processing its event heap in order.
    """

    def __init__(self, config: DirectionConfig, rng: random.Random, *, preserve_order: bool = True,
                 now: float = 0.0):
        self.rng = rng
        self.preserve_order = preserve_order
        self.schedule: DeliverySchedule | None = None
        self.config = DirectionConfig()
        self.configure(config, now)
        self._busy_until = 0.0
        self._backlog: deque[float] = deque()
        self._last_departure = 0.0
        self.dropped_loss = 0
        self.dropped_queue = 0

    def configure(self, config: DirectionConfig, now: float = 0.0) -> None:
        """Take a new config at time ``now``; a trace already being served keeps its clock."""
        if config.trace != self.config.trace:
            self.schedule = None if config.trace is None else DeliverySchedule(read_trace(config.trace), now)
        self.config = config
        self._loss = config.loss_pct / 100.0
        self._delay = config.delay_ms / 1000.0
        self._jitter = config.jitter_ms / 1000.0
        self._bits_per_s = None if config.rate_mbit is None else config.rate_mbit * 1e6
        self._uniform = config.distribution == "uniform"

    def admit(self, now: float, size: int, *, hold: float = 0.0) -> float | None:
        """When the frame leaves (None: dropped); a ``hold`` delays it that much more, out of FIFO order."""
        if self._loss and self.rng.random() < self._loss:
            self.dropped_loss += 1
            return None
        leave = now
        if self._bits_per_s is not None or self.schedule is not None:
            backlog = self._backlog
            while backlog and backlog[0] <= now:
                backlog.popleft()
            if len(backlog) >= self.config.queue_pkts:
                self.dropped_queue += 1
                return None
            start = max(now, self._busy_until)
            if self.schedule is not None:
                leave = self.schedule.departure(start, size)
            else:
                leave = start + size * 8 / self._bits_per_s
            self._busy_until = leave
            backlog.append(leave)
        delay = self._delay
        if self._jitter:
            if self._uniform:
                delay += self.rng.uniform(-self._jitter, self._jitter)
            else:
                delay += self.rng.gauss(0.0, self._jitter)
            delay = max(0.0, delay)
        departure = leave + delay
        if hold:
            return max(departure, self._last_departure) + hold
        if self.preserve_order:
            departure = max(departure, self._last_departure)
            self._last_departure = departure
        return departure


@dataclass(frozen=True)
class Impairment:
    """Faults on one node's access link beyond its profile, for frames in both directions."""

    blackhole: bool = False
    corrupt_pct: float = 0.0
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "Impairment":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (data or {}).items() if k in names})


def _either(rng: random.Random, a: float, b: float) -> bool:
    """Whether a frame is touched, with chance ``a`` % at one end and ``b`` % at the other."""
    return (a > 0 or b > 0) and rng.random() < 1 - (1 - a / 100) * (1 - b / 100)


@dataclass
class Port:
    """One node's root-side veth end: its socket, its MAC, its two directions and partition group."""

    node: int
    ifname: str
    mac: bytes
    sock: socket.socket
    uplink: Direction
    downlink: Direction
    group: int = 0
    impairment: Impairment = Impairment()


def open_port_socket(ifname: str) -> socket.socket:
    """A non-blocking AF_PACKET socket on ``ifname`` that ignores its own transmissions."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # kernels before 4.20: outgoing frames are skipped by pkttype in the receive loop instead
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def _rng(seed: int | None, node: int, direction: str) -> random.Random:
    """One generator per direction: with a seed, each direction's draws depend only on its own frames."""
    return random.Random(None if seed is None else f"{seed}/{node}/{direction}")


class Switch:
    """Forwards frames between ports through the sender's uplink and the receiver's downlink."""

    def __init__(self, config: dict):
        seed = config.get("seed")
        self.ports: list[Port] = []
        self.by_mac: dict[bytes, int] = {}
        preserve = bool(config.get("preserve_order", True))
        for spec in config["ports"]:
            directions = {
                name: Direction(DirectionConfig.from_dict(spec[name]), _rng(seed, spec["node"], name),
                                preserve_order=preserve, now=time.monotonic())
                for name in ("uplink", "downlink")}
            port = Port(node=int(spec["node"]), ifname=spec["ifname"], mac=bytes.fromhex(spec["mac"].replace(":", "")),
                        sock=open_port_socket(spec["ifname"]), **directions, group=int(spec.get("group", 0)),
                        impairment=Impairment.from_dict(spec.get("impairment")))
            self.by_mac[port.mac] = len(self.ports)
            self.ports.append(port)
        self.by_fd = {p.sock.fileno(): i for i, p in enumerate(self.ports)}
        self.rng = _rng(seed, 0, "impairments")
        self.one_way = self._one_way(config)
        self.dropped_fault = 0
        self.corrupted = 0
        self.duplicated = 0
        self.reordered = 0
        self.generation = int(config.get("generation", 0))
        self.heap: list[tuple[float, int, int, int, bytes]] = []
        self._seq = 0
        self.forwarded = 0
        self.send_errors = 0
        self.scheduling = "normal"

    def reconfigure(self, config: dict) -> None:
        """Apply new directions and groups; frames already scheduled keep their times."""
        by_node = {int(spec["node"]): spec for spec in config["ports"]}
        if set(by_node) != {p.node for p in self.ports}:
            raise ValueError("a reload may change profiles and groups, not the set of ports")
        preserve = bool(config.get("preserve_order", True))
        for port in self.ports:
            spec = by_node[port.node]
            now = time.monotonic()
            port.uplink.configure(DirectionConfig.from_dict(spec["uplink"]), now)
            port.downlink.configure(DirectionConfig.from_dict(spec["downlink"]), now)
            port.uplink.preserve_order = port.downlink.preserve_order = preserve
            port.group = int(spec.get("group", 0))
            port.impairment = Impairment.from_dict(spec.get("impairment"))
        self.one_way = self._one_way(config)
        self.generation = int(config.get("generation", self.generation))

    def _one_way(self, config: dict) -> set[tuple[int, int]]:
        """The one-way drops as (sending port, receiving port) pairs; the config names nodes."""
        port_of = {p.node: i for i, p in enumerate(self.ports)}
        return {(port_of[int(a)], port_of[int(b)]) for a, b in config.get("one_way", [])}

    # Event kinds in the heap: a frame reaching the switch, or a frame leaving on a port.
    _AT_SWITCH = 0
    _TRANSMIT = 1

    def _push(self, when: float, kind: int, port: int, frame: bytes) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (when, self._seq, kind, port, frame))

    def receive(self, index: int, frame: bytes, now: float) -> None:
        """A frame arrived from node ``index``'s access link."""
        leave = self.ports[index].uplink.admit(now, len(frame))
        if leave is None:
            return
        if leave <= now + EARLY_S:
            self._switch(index, frame, leave)
        else:
            self._push(leave, self._AT_SWITCH, index, frame)

    def _switch(self, src: int, frame: bytes, now: float) -> None:
        dst = self.by_mac.get(frame[:6])
        targets = [dst] if dst is not None else [i for i in range(len(self.ports)) if i != src]
        sender = self.ports[src]
        for target in targets:
            port = self.ports[target]
            if target == src or port.group != sender.group:
                continue
            mine, theirs = sender.impairment, port.impairment
            if mine.blackhole or theirs.blackhole or (src, target) in self.one_way:
                self.dropped_fault += 1
                continue
            out = frame
            if _either(self.rng, mine.corrupt_pct, theirs.corrupt_pct):
                out = self._corrupt(frame)
            hold = 0.0
            if _either(self.rng, mine.reorder_pct, theirs.reorder_pct):
                hold = REORDER_HOLD_S
                self.reordered += 1
            leave = port.downlink.admit(now, len(out), hold=hold)
            if leave is None:
                continue
            copies = 2 if _either(self.rng, mine.duplicate_pct, theirs.duplicate_pct) else 1
            self.duplicated += copies - 1
            for _ in range(copies):
                if leave <= now + EARLY_S:
                    self._transmit(target, out)
                else:
                    self._push(leave, self._TRANSMIT, target, out)

    def _corrupt(self, frame: bytes) -> bytes:
        """The frame with one byte past the Ethernet header changed (XOR with a non-zero byte)."""
        if len(frame) <= 14:
            return frame
        self.corrupted += 1
        damaged = bytearray(frame)
        damaged[self.rng.randrange(14, len(frame))] ^= self.rng.randrange(1, 256)
        return bytes(damaged)

    def _transmit(self, target: int, frame: bytes) -> None:
        try:
            self.ports[target].sock.send(frame)
            self.forwarded += 1
        except OSError:
            self.send_errors += 1  # link down (ENETDOWN) or a full device queue: the frame is lost, as on a wire

    def run_due(self, now: float) -> None:
        """Process every scheduled event whose time has come, in time order."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            when, _, kind, port, frame = heapq.heappop(heap)
            if kind == self._AT_SWITCH:
                self._switch(port, frame, when)
            else:
                self._transmit(port, frame)

    def drain(self, index: int) -> None:
        """Read up to BATCH waiting frames from one port."""
        sock = self.ports[index].sock
        for _ in range(BATCH):
            try:
                frame, address = sock.recvfrom(FRAME_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # ENETDOWN once after the link went down; the socket keeps working after link up
            if address[2] == PACKET_OUTGOING:
                continue
            self.receive(index, frame, time.monotonic())

    def close(self) -> None:
        for port in self.ports:
            port.sock.close()


def write_status(path: Path, switch: Switch, error: str = "") -> None:
    """Atomically publish which generation is in force and since when (the fault's effective time)."""
    status = {"pid": os.getpid(), "generation": switch.generation, "applied_wall_ns": time.time_ns(),
              "applied_mono_ns": time.monotonic_ns(), "forwarded": switch.forwarded,
              "send_errors": switch.send_errors,
              "dropped_loss": sum(p.uplink.dropped_loss + p.downlink.dropped_loss for p in switch.ports),
              "dropped_queue": sum(p.uplink.dropped_queue + p.downlink.dropped_queue for p in switch.ports),
              "dropped_fault": switch.dropped_fault, "corrupted": switch.corrupted,
              "duplicated": switch.duplicated, "reordered": switch.reordered,
              "scheduling": switch.scheduling, "error": error,
              "trace_epochs_mono_ns": {f"{p.node}/{name}": round(d.schedule.epoch * 1e9)
                                       for p in switch.ports for name, d in (("uplink", p.uplink),
                                                                            ("downlink", p.downlink))
                                       if d.schedule is not None}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def _low_timer_slack() -> None:
    """Ask for 1 ns timer slack so select() wakes when a frame is due, not up to 50 us later."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _realtime(priority: int) -> str:
    """Run as a SCHED_FIFO task so other busy processes cannot delay frames past their due time.

    The loop blocks in select() between frames, so it only takes CPU it needs;
    the kernel's RT throttling still leaves 5% to others if it ever saturates.
    Falls back to a high nice level where RT scheduling is refused.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return f"fifo:{priority}"
    except (OSError, AttributeError):
        try:
            os.nice(-10)
            return "nice:-10"
        except OSError:
            return "normal"


def serve(config_path: Path) -> int:
    """Run the switch until SIGTERM/SIGINT; SIGHUP reloads ``config_path``."""
    config = json.loads(config_path.read_text())
    status_path = Path(config["status_file"])
    switch = Switch(config)
    flags = {"reload": False, "stop": False}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGHUP, lambda *_: flags.__setitem__("reload", True))
    signal.signal(signal.SIGTERM, lambda *_: flags.__setitem__("stop", True))
    signal.signal(signal.SIGINT, lambda *_: flags.__setitem__("stop", True))
    _low_timer_slack()
    switch.scheduling = _realtime(REALTIME_PRIORITY)
    write_status(status_path, switch)
    fds = [*switch.by_fd, wake_r]
    by_fd = switch.by_fd
    while not flags["stop"]:
        if flags["reload"]:
            flags["reload"] = False
            try:
                switch.reconfigure(json.loads(config_path.read_text()))
                write_status(status_path, switch)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                write_status(status_path, switch, error=f"reload rejected: {exc}")
        switch.run_due(time.monotonic() + EARLY_S)
        timeout = max(0.0, switch.heap[0][0] - EARLY_S - time.monotonic()) if switch.heap else None
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in ready:
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            else:
                switch.drain(by_fd[fd])
    switch.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emu.shaper", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="JSON config written by emu.shaping")
    args = parser.parse_args(argv)
    return serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
