"""asyncio byte moving around the sans-IO codec: outbound peer links and inbound connections.

Failure detection lives here, split the way the failures show up:

* a crashed peer refuses or resets the connection: detected at once, either
  while sending or by the reader seeing EOF;
* a silent peer (stopped, link cut, packets dropped) misses the ack deadline,
  which adapts to observed round trips and leaves room for one TCP
  retransmission (see :class:`AdaptiveDeadline`).  The deadline runs from
  *before* the write, and covers, at the slowest link's rate, the frame's bytes
  and those of the unacked frames written before it on the same connection
  (its ack cannot come before theirs): a peer that stops reading in the middle
  of a frame larger than the socket buffers stalls the write itself, and that
  is its failure too.

Every process speaks frames through one :class:`Wire`: its signer (boot and
sequence numbers), its replay window, optional payload sealing, the frame cap
derived from its model, and rate-limited logging of what it refuses.  Inbound
connections pass a :class:`ConnectionGate`: connections that have not yet
shown an authentic frame are capped per address and in all, and closed when
they show none in time; authenticated connections idle for long are closed
with a BYE frame, which the other side takes as "reconnect when needed".

Every timeout is an ``asyncio.timeout`` block, never ``asyncio.wait_for``: on
Python 3.11 ``wait_for`` drops a cancellation that arrives as its inner await
completes (CPython gh-86296), so a connection that keeps receiving
(heartbeats) outlived the cancellation meant to stop it, and a user node
hung at exit after its last session.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import errno
import fcntl
import re
import struct
import termios
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from payload.clock import wall_ns
from payload.config import Timing
from payload.events import EventLog
from payload.frames import (MAX_OVERHEAD, Decoder, Frame, FrameSigner, FrameType, PeerFrameError, ReplayWindow,
                            Sealing)

READ_CHUNK = 1 << 16
NO_SESSION = uuid.UUID(int=0)  # control frames about no session (heartbeats, BYE)
CONTROL_PAYLOAD = 64 * 1024  # the largest JSON a control frame (heartbeat, failure report) may carry
LOCAL_EXHAUSTION = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# A deadline timer that fires this much past its time means this process was starved (a busy event loop,
# a CPU shared with other work): it then looks once more before blaming the peer.
LATE_WAKEUP_S = 0.05
_KIND = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+")


def frame_cap(positions: int, position_bytes: int) -> int:
    """The largest legitimate frame: ``positions`` hidden states (a full replayed history) plus overhead."""
    return MAX_OVERHEAD + max(positions * position_bytes, CONTROL_PAYLOAD)


class FailureKind(str, enum.Enum):
    """How a peer failed, as its predecessor (or the user node) saw it."""

    CRASHED = "crashed"  # refused or reset the connection, or it closed: the process is gone
    SILENT = "silent"  # no ack within the deadline, no heartbeat within the silence limit: stopped or cut off
    REJECTED = "rejected"  # it answered, refusing the frame (e.g. it has no cache for the session)
    TIMEOUT = "timeout"  # the user node's backstop: no result for a step at all


class PeerFailed(Exception):
    """A peer did not take a frame: crashed (refused/reset/EOF), silent (deadline) or rejected it."""

    def __init__(self, peer: int, kind: FailureKind, reason: str, reporter: int | None = None):
        super().__init__(f"node {peer} {kind.value}: {reason}")
        self.peer = peer
        self.kind = kind
        self.reason = reason
        self.reporter = reporter  # the node that saw it (its predecessor), None when seen here


class AdaptiveDeadline:
    """Ack deadline from recent round trips, never below the floor.

    ``max(floor, multiplier x p99, 3 x p99 + retransmit)``: the last term lets
    one lost segment be retransmitted before the peer is called silent, so a
    single loss on a WiFi link is not taken for a failure.  A decode frame and
    its ack are a segment or two each; Linux resends the last segment of a
    flight by its tail loss probe, 2 SRTT + 200 ms (its minimum RTO) after it
    was sent, and the probe then travels: a lost ack arrives about
    3 RTT + 200 ms after the frame was written.
    """

    def __init__(self, floor_s: float, multiplier: float, window: int = 64, retransmit_s: float = 0.0):
        self.floor_s = floor_s
        self.multiplier = multiplier
        self.retransmit_s = retransmit_s
        self._samples: collections.deque[float] = collections.deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)

    @property
    def observed(self) -> bool:
        return bool(self._samples)

    def value(self) -> float:
        if not self._samples:
            return max(self.floor_s, self.retransmit_s)
        ordered = sorted(self._samples)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return max(self.floor_s, self.multiplier * p99, 3 * p99 + self.retransmit_s)


class RateLimiter:
    """At most one line per key and interval.

    ``allow`` says whether to log now, with how many were held back since the
    last line; ``due`` gives the keys whose interval has passed with refusals
    still held back (so a burst's count is reported even if nothing follows it).
    """

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last: dict[object, float] = {}
        self._held: collections.Counter = collections.Counter()

    def allow(self, key: object) -> int | None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return None
        self._last[key] = now
        if len(self._last) > 4096:  # a flood from many addresses must not grow this without bound
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s or k in self._held}
        return self._held.pop(key, 0)

    def due(self) -> list[tuple[object, int]]:
        """(key, count held back) for every key whose interval passed with refusals held back; now logged."""
        now = time.monotonic()
        ready = [key for key in self._held if now - self._last.get(key, 0.0) >= self.interval_s]
        out = []
        for key in ready:
            out.append((key, self._held.pop(key)))
            self._last[key] = now
        return out


@dataclass
class Wire:
    """How one process speaks frames: sign, seal, cap, check freshness, and log what it refuses (rate-limited)."""

    key: bytes
    log: EventLog
    max_frame: int
    encrypt: bool = False  # seal every payload (ChaCha20-Poly1305); then only sealed frames are accepted
    timing: Timing = field(default_factory=Timing)
    sealing: Sealing | None = field(init=False)
    signer: FrameSigner = field(init=False)
    window: ReplayWindow = field(init=False, default_factory=ReplayWindow)
    limiter: RateLimiter = field(init=False)
    _latest: dict = field(init=False, default_factory=dict)  # refusal kind -> (peer, its latest reason)

    def __post_init__(self) -> None:
        self.sealing = Sealing(self.key) if self.encrypt else None
        self.signer = FrameSigner(self.key, sealing=self.sealing)
        self.limiter = RateLimiter(self.timing.log_interval_s)

    def encode(self, frame: Frame) -> bytes:
        return self.signer.encode(frame)

    def decoder(self, peer: object = "?") -> Decoder:
        """A decoder for one connection from ``peer``: replays are refused at their header (see :meth:`fresh`)."""
        return Decoder(self.key, max_frame=self.max_frame, sealing=self.sealing,
                       require_sealed=self.sealing is not None,
                       fresh=lambda src, boot, seq, kind: self.fresh(src, boot, seq, kind, peer))

    def reject(self, peer: object, reason: str, *, what: str = "", **fields) -> None:
        """Log a refusal once per peer and kind of refusal per interval, with the count held back.

        The kind is ``what``, or the reason with its numbers and ids masked (one line for a flood of
        "frame length 123 exceeds ..." whatever the lengths).
        """
        key = (str(peer), what or _KIND.sub("#", reason))
        held = self.limiter.allow(key)
        self._latest[key] = (peer if isinstance(peer, int) else str(peer), reason)
        if held is not None:
            self.log.log("reject", reason=reason, peer=self._latest[key][0], suppressed=held, **fields)

    def flush(self) -> None:
        """Log the count of refusals held back whose interval has passed (called periodically)."""
        for key, held in self.limiter.due():
            peer, reason = self._latest.pop(key, (key[0], key[1]))
            self.log.log("reject", reason=f"{held} more like: {reason}", peer=peer, suppressed=held)

    def fresh(self, src: int, boot: int, seq: int, kind: int, peer: object) -> bool:
        """Whether a frame is new (not a replay of one this process accepted); a replay is logged, rate-limited."""
        if self.window.fresh(src, boot, seq):
            return True
        name = FrameType(kind).name if kind in FrameType._value2member_map_ else str(kind)
        self.reject(src, f"replayed {name} frame from node {src} (boot {boot}, seq {seq}) over {peer}", what="replay")
        return False


@dataclass(frozen=True)
class HopTiming:
    """TWAMP-style stamps of one delivered frame (T1/T4 here, T2/T3 from the peer's ack)."""

    t1_wall_ns: int
    t1_mono_ns: int
    t2_wall_ns: int
    t3_wall_ns: int
    t4_wall_ns: int
    t4_mono_ns: int
    bytes: int

    @property
    def rtt_ns(self) -> int:
        return (self.t4_mono_ns - self.t1_mono_ns) - (self.t3_wall_ns - self.t2_wall_ns)


@dataclass(frozen=True)
class PendingAck:
    """A frame written to a peer whose ack has not been awaited yet; the ack is due by ``due`` (monotonic s)."""

    key: tuple
    future: asyncio.Future
    writer: asyncio.StreamWriter
    frame: Frame
    serialize_ns: int
    t1_wall_ns: int
    t1_mono_ns: int
    bytes: int
    due: float


class PeerLink:
    """One outbound connection to a peer, reconnected lazily after a failure."""

    def __init__(self, *, me: int, peer: int, address: tuple[str, int], wire: Wire, timing: Timing,
                 on_lost: Callable[[int, str], None] | None = None):
        self.me, self.peer, self.address = me, peer, address
        self.wire = wire
        self.timing = timing
        self.deadline = AdaptiveDeadline(timing.ack_floor_ms / 1000, timing.ack_multiplier,
                                         retransmit_s=timing.retransmit_ms / 1000)
        self._on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._pending: dict[tuple, asyncio.Future] = {}
        self._unacked: dict[tuple, PendingAck] = {}  # frames written whose ack has not come (bytes ahead in the pipe)
        self._connect_lock = asyncio.Lock()

    async def _ensure(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timing.connect_timeout_ms / 1000):
                    reader, writer = await asyncio.open_connection(*self.address)
            except asyncio.TimeoutError:
                raise PeerFailed(self.peer, FailureKind.SILENT, f"connect to {self.address} timed out") from None
            except OSError as exc:
                if exc.errno in LOCAL_EXHAUSTION:  # this node is out of descriptors or memory: not the peer's fault
                    raise PeerFailed(self.me, FailureKind.CRASHED,
                                     f"cannot open a connection: {exc.strerror or exc}") from None
                raise PeerFailed(self.peer, FailureKind.CRASHED,
                                 f"connect to {self.address}: {exc.strerror or exc}") from None
            if not self.deadline.observed:
                # The handshake took one round trip: the first frame's deadline then suits a slow (cellular)
                # link instead of the loopback-sized floor.
                self.deadline.observe(time.monotonic() - started)
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_acks(reader, writer))
            return writer

    async def _read_acks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = self.wire.decoder(self.address)
        reason, goodbye = "connection closed by peer", False
        try:
            while not goodbye:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                decoder.feed(data)
                while isinstance(frame := decoder.next_frame(), Frame):
                    if frame.type == FrameType.BYE:
                        goodbye = True
                        continue
                    fut = self._pending.get((frame.session, frame.step, frame.epoch, frame.pos_start))
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
        except PeerFrameError as exc:
            reason = f"invalid reply: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            self._drop(writer)
            waiting = [fut for fut in self._pending.values() if not fut.done()]
            for fut in waiting:
                fut.set_exception(PeerFailed(self.peer, FailureKind.CRASHED, reason))
                fut.add_done_callback(lambda f: f.exception())  # whoever gave up waiting need not retrieve it
            # A BYE closes an idle connection: nothing is lost unless a frame was still waiting for its ack.
            if self._on_lost is not None and (waiting or not goodbye):
                self._on_lost(self.peer, reason)

    def _drop(self, writer: asyncio.StreamWriter | None) -> None:
        if writer is not None:
            writer.close()
        if self._writer is writer:
            self._writer = None

    def due_in(self, frame_bytes: int) -> float:
        """Seconds a frame of ``frame_bytes`` may take from the start of its write to its ack: a round trip's
        deadline, plus its bytes and those still unacked ahead of it on this connection at the slowest link's
        rate (a pipelined prefill writes its chunks faster than a cellular link drains them: the fourth one's
        ack comes after four chunks' wire time)."""
        writer = self._writer
        ahead = sum(p.bytes for p in self._unacked.values() if p.writer is writer and not p.future.done())
        return self.deadline.value() + self.timing.wire_time_s(ahead + frame_bytes)

    async def send(self, frame: Frame, encoded: bytes, serialize_ns: int = 0) -> "PendingAck":
        """Write a DATA (or RESUME) frame now; the returned handle waits for its ack.

        Splitting the write from the wait lets a node hand its output downstream
        and return to its socket at once, leaving the ack to a background task.
        The ack deadline starts now: a write that cannot finish before it (the
        peer stopped reading mid-frame) fails the peer as silent.
        ``serialize_ns`` (the time ``encoded`` took to make) goes into the hop's ack event.
        """
        key = (frame.session, frame.step, frame.epoch, frame.pos_start)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            writer = await self._ensure()
            t1_wall, t1_mono = wall_ns(), time.monotonic_ns()
            allowed_s = self.due_in(len(encoded))
            due = time.monotonic() + allowed_s
            try:
                writer.write(encoded)
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await writer.drain()
            except asyncio.TimeoutError:
                self._drop(writer)
                raise PeerFailed(self.peer, FailureKind.SILENT,
                                 f"a {len(encoded)}-byte frame was not taken within {allowed_s * 1000:.0f} ms "
                                 "(it stopped reading)") from None
            except (ConnectionError, OSError) as exc:
                self._drop(writer)
                raise PeerFailed(self.peer, FailureKind.CRASHED, f"send failed: {exc}") from None
        except BaseException:
            self._pending.pop(key, None)
            raise
        sent = self._unacked[key] = PendingAck(key, fut, writer, frame, serialize_ns, t1_wall, t1_mono, len(encoded),
                                               due)
        return sent

    async def wait_ack(self, sent: "PendingAck") -> HopTiming:
        """The hop's timing once its ack arrives (logged as the hop's ``ack`` event); PeerFailed if it does
        not arrive by the deadline that started with the write."""
        try:
            try:
                async with asyncio.timeout(max(0.0, sent.due - time.monotonic())):
                    reply: Frame = await asyncio.shield(sent.future)
            except asyncio.TimeoutError:
                reply = await self._second_look(sent)
            t4_wall, t4_mono = wall_ns(), time.monotonic_ns()
            if reply.type == FrameType.ERROR:
                raise PeerFailed(self.peer, FailureKind.REJECTED, reply.payload.decode("utf-8", "replace"))
            timing = HopTiming(sent.t1_wall_ns, sent.t1_mono_ns, reply.t_a, reply.t_b, t4_wall, t4_mono, sent.bytes)
            self.deadline.observe(max(timing.rtt_ns, 0) / 1e9)
            frame = sent.frame
            self.wire.log.log("ack", session=str(frame.session), step=frame.step, epoch=frame.epoch, src=frame.src,
                              dst=frame.dst, positions=frame.n_pos, pos_start=frame.pos_start, bytes=timing.bytes,
                              serialize_ns=sent.serialize_ns, t1_wall_ns=timing.t1_wall_ns,
                              t1_mono_ns=timing.t1_mono_ns, t2_wall_ns=timing.t2_wall_ns,
                              t3_wall_ns=timing.t3_wall_ns, t4_wall_ns=timing.t4_wall_ns,
                              t4_mono_ns=timing.t4_mono_ns, rtt_ns=timing.rtt_ns)
            return timing
        finally:
            self._pending.pop(sent.key, None)
            self._unacked.pop(sent.key, None)

    async def _second_look(self, sent: "PendingAck") -> Frame:
        """At the deadline: fail the peer as silent, unless this process is the one that was slow.

        If the ack's bytes already wait in the socket, or this wake-up came
        late (the event loop was starved: other work, CPU contention), the
        peer may well have answered in time; it gets one more deadline rather
        than being declared dead by a node that could not look.
        """
        late_s = time.monotonic() - sent.due
        if sent.future.done() or _pending_bytes(sent.writer) > 0 or late_s > LATE_WAKEUP_S:
            try:
                async with asyncio.timeout(self.deadline.value()):
                    return await asyncio.shield(sent.future)
            except asyncio.TimeoutError:
                pass
        self._drop(sent.writer)
        waited = (time.monotonic_ns() - sent.t1_mono_ns) / 1e6
        raise PeerFailed(self.peer, FailureKind.SILENT, f"no ack within {waited:.0f} ms")

    async def send_data(self, frame: Frame, encoded: bytes, serialize_ns: int = 0) -> HopTiming:
        """Send a DATA (or RESUME) frame and wait for its ack within the adaptive deadline."""
        return await self.wait_ack(await self.send(frame, encoded, serialize_ns))

    async def send_control(self, frame: Frame) -> bool:
        """Best-effort control frame (heartbeat, failure report, session end); False if undeliverable.

        A peer that does not take it within the ack deadline loses the connection (reconnected at the next
        frame), so control frames never pile up behind a stalled peer.
        """
        try:
            writer = await self._ensure()
        except PeerFailed:
            return False
        try:
            writer.write(self.wire.encode(frame))
            async with asyncio.timeout(self.deadline.value()):
                await writer.drain()
            return True
        except (ConnectionError, OSError, asyncio.TimeoutError):
            self._drop(writer)
            return False

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._drop(self._writer)


class ConnectionGate:
    """Caps on inbound connections, so a flood without the key cannot exhaust a node's descriptors.

    A connection is *unproven* until it delivers a frame with an authentic
    header (a peer with the key does so within milliseconds of connecting);
    unproven connections are capped per address and in all, and closed if
    they prove nothing within ``first_frame_timeout_s``.  Over a cap, the
    oldest unproven connection that has sent nothing and is older than
    ``GRACE_S`` is closed, not the newcomer: a flood then cannot lock out a
    legitimate peer connecting in the middle of it (on a shared address, or the
    node's loopback), it only shortens how long an idle intruder is held.  A
    burst faster than that may exceed a cap up to ``HARD_FACTOR`` times it;
    beyond that the oldest silent connection goes even within its grace, and the
    newcomer only when every other has bytes waiting (refusing newcomers at the
    hard cap let a burst of idle connections lock out a peer with the key: the
    soak's user node, which then declared a healthy node crashed).  Proven
    connections are capped in all.
    """

    GRACE_S = 0.25
    HARD_FACTOR = 4

    def __init__(self, timing: Timing):
        self.timing = timing
        self.unproven: dict[str, collections.deque[tuple[asyncio.StreamWriter, float]]] = {}
        self.proven = 0

    def admit(self, address: str, writer: asyncio.StreamWriter) -> str | None:
        """Count a new connection as unproven, closing old silent ones over a cap; what was closed, if anything
        (the newcomer itself when even the hard cap is reached: check :meth:`admitted`)."""
        self.unproven.setdefault(address, collections.deque()).append((writer, time.monotonic()))
        closed = self._trim(address, 1, self.GRACE_S) + self._trim(address, self.HARD_FACTOR, 0.0)
        if self.admitted(address, writer) and self._over(address, self.HARD_FACTOR):
            self._forget(address, writer)  # every other one has bytes waiting: the newcomer is the one to go
            writer.close()
            closed.append("a burst beyond the hard cap: refused the newcomer")
        if not closed:
            return None
        return f"closed {len(closed)} unproven connection(s) from {address}: {closed[-1]}"

    def admitted(self, address: str, writer: asyncio.StreamWriter) -> bool:
        return any(w is writer for w, _ in self.unproven.get(address, ()))

    def _total(self) -> int:
        return sum(len(q) for q in self.unproven.values())

    def _over(self, address: str, factor: int) -> bool:
        """Whether ``address`` or the node holds more unproven connections than ``factor`` times the caps."""
        return len(self.unproven.get(address, ())) > factor * self.timing.max_unproven_per_address or \
            self._total() > factor * self.timing.max_unproven_connections

    def _trim(self, address: str, factor: int, grace_s: float) -> list[str]:
        """Close the oldest silent connections past ``grace_s`` until ``address``, then the node, is within
        ``factor`` times its cap (the busiest address loses one first); why each was closed."""
        per_address = factor * self.timing.max_unproven_per_address
        in_all = factor * self.timing.max_unproven_connections
        closed = []
        while len(self.unproven.get(address, ())) > per_address and self._close_oldest(address, grace_s):
            closed.append(f"{per_address} unproven connections from {address}")
        while self._total() > in_all and \
                self._close_oldest(max(self.unproven, key=lambda a: len(self.unproven[a])), grace_s):
            closed.append(f"{in_all} unproven connections")
        return closed

    def _close_oldest(self, address: str, grace_s: float) -> bool:
        """Close the oldest unproven connection from ``address`` that is past ``grace_s`` and has sent nothing
        (a peer with the key has its first frame waiting to be read: it is spared); False if there is none."""
        now = time.monotonic()
        queue = self.unproven.get(address, collections.deque())
        victim = next((item for item in queue if now - item[1] >= grace_s and _pending_bytes(item[0]) == 0),
                      None)
        if victim is None:
            return False
        queue.remove(victim)
        victim[0].close()  # its serve loop sees the end and releases nothing more
        return True

    def prove(self, address: str, writer: asyncio.StreamWriter) -> str | None:
        """The connection showed an authentic frame; why it is refused anyway (None: kept, counted as proven)."""
        self._forget(address, writer)
        if self.proven >= self.timing.max_connections:
            return f"{self.proven} connections already"
        self.proven += 1
        return None

    def release(self, address: str, writer: asyncio.StreamWriter, proven: bool) -> None:
        if proven:
            self.proven -= 1
        else:
            self._forget(address, writer)

    def _forget(self, address: str, writer: asyncio.StreamWriter) -> None:
        queue = self.unproven.get(address)
        if queue is not None:
            for item in queue:
                if item[0] is writer:
                    queue.remove(item)
                    break
            if not queue:
                del self.unproven[address]


def _pending_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes the kernel holds for this connection that nobody has read yet (0 if it cannot tell)."""
    sock = writer.get_extra_info("socket")
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, AttributeError, ValueError):
        return 0


FrameHandler = Callable[[Frame, asyncio.StreamWriter, int], Awaitable[None]]


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, wire: Wire,
                           gate: ConnectionGate, handler: FrameHandler) -> None:
    """Decode frames from one inbound connection and hand each fresh one to ``handler`` with its receive time.

    A framing or authentication error closes only this connection (its byte
    stream can no longer be trusted) and is logged, rate-limited; the node
    serves on.  A replayed frame is dropped and closes its connection (a
    peer with the key never repeats a sequence number, so the connection is
    an intruder's: it costs a reconnect per replay, not a header check).
    """
    peer = writer.get_extra_info("peername")
    address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
    closed = gate.admit(address, writer)
    if closed is not None:
        wire.reject(address, closed, what="gate")
    if not gate.admitted(address, writer):
        return
    counted = "unproven"  # how the gate counts this connection: unproven, proven, or not at all
    decoder = wire.decoder(address)
    timing = wire.timing
    try:
        while True:
            limit = timing.idle_timeout_s if counted == "proven" else timing.first_frame_timeout_s
            try:
                async with asyncio.timeout(limit):
                    data = await reader.read(READ_CHUNK)
            except asyncio.TimeoutError:
                if counted == "proven":  # an idle peer: say goodbye, so it reconnects rather than reports a failure
                    writer.write(wire.encode(Frame(FrameType.BYE, NO_SESSION)))
                else:
                    wire.reject(address, f"closed: no authentic frame within {limit:.0f} s", what="silent")
                return
            if not data:
                return
            t2 = wall_ns()
            decoder.feed(data)
            while True:
                frame = decoder.next_frame()
                if decoder.replays:  # only a capture is replayed: the sender has no fresh frame to offer
                    return
                if decoder.authenticated and counted == "unproven":  # proven before its frame is handled, so
                    refused = gate.prove(address, writer)  # a long compute cannot make it look silent
                    counted = "proven" if refused is None else "none"
                    if refused is not None:
                        wire.reject(address, f"connection refused: {refused}", what="gate")
                        return
                if not isinstance(frame, Frame):
                    break
                await handler(frame, writer, t2)
    except PeerFrameError as exc:
        wire.reject(address, str(exc), fatal=True)
    except (ConnectionError, OSError, asyncio.CancelledError):
        return  # peer went away, or this node is shutting down
    finally:
        if counted != "none":
            gate.release(address, writer, proven=counted == "proven")
        writer.close()
