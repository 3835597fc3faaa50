"""asyncio byte moving around the sans-IO codec: outbound peer links and inbound connections.

Failure detection lives here, split the way the failures show up:

* a crashed peer refuses or resets the connection: detected at once, either
  while sending or by the reader seeing EOF;
* a silent peer (stopped, link cut, packets dropped) misses the ack deadline,
  which adapts to observed round trips and leaves room for one TCP
  retransmission (see :class:`AdaptiveDeadline`).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from payload.events import EventLog
from payload.frames import Decoder, Frame, FrameType, PeerFrameError, encode
from payload.config import Timing

READ_CHUNK = 1 << 16


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

    ``max(floor, multiplier x p99, 2 x p99 + retransmit)``: the last term lets
    one lost segment be retransmitted before the peer is called silent (Linux
    resends after about RTT + 200 ms, its minimum RTO, and the ack then needs
    a trip back), so a single loss on a WiFi link is not taken for a failure.
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
        return max(self.floor_s, self.multiplier * p99, 2 * p99 + self.retransmit_s)


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
    """A frame written to a peer whose ack has not been awaited yet."""

    key: tuple
    future: asyncio.Future
    writer: asyncio.StreamWriter
    frame: Frame
    serialize_ns: int
    t1_wall_ns: int
    t1_mono_ns: int
    bytes: int


class PeerLink:
    """One outbound connection to a peer, reconnected lazily after a failure."""

    def __init__(self, *, me: int, peer: int, address: tuple[str, int], key: bytes, timing: Timing,
                 log: EventLog, on_lost: Callable[[int, str], None] | None = None):
        self.me, self.peer, self.address, self.key = me, peer, address, key
        self.timing = timing
        self.log = log
        self.deadline = AdaptiveDeadline(timing.ack_floor_ms / 1000, timing.ack_multiplier,
                                         retransmit_s=timing.retransmit_ms / 1000)
        self._on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._pending: dict[tuple, asyncio.Future] = {}
        self._connect_lock = asyncio.Lock()

    async def _ensure(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            started = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.address), self.timing.connect_timeout_ms / 1000
                )
            except asyncio.TimeoutError:
                raise PeerFailed(self.peer, FailureKind.SILENT, f"connect to {self.address} timed out") from None
            except OSError as exc:
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
        decoder = Decoder(self.key)
        reason = "connection closed by peer"
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                decoder.feed(data)
                while isinstance(frame := decoder.next_frame(), Frame):
                    fut = self._pending.get((frame.session, frame.step, frame.epoch))
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
        except PeerFrameError as exc:
            reason = f"invalid reply: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            self._drop(writer)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(PeerFailed(self.peer, FailureKind.CRASHED, reason))
            if self._on_lost is not None:
                self._on_lost(self.peer, reason)

    def _drop(self, writer: asyncio.StreamWriter | None) -> None:
        if writer is not None:
            writer.close()
        if self._writer is writer:
            self._writer = None

    async def send(self, frame: Frame, encoded: bytes, serialize_ns: int = 0) -> "PendingAck":
        """Write a DATA (or RESUME) frame now; the returned handle waits for its ack.

        Splitting the write from the wait lets a node hand its output downstream
        and return to its socket at once, leaving the ack to a background task.
        ``serialize_ns`` (the time ``encoded`` took to make) goes into the hop's ack event.
        """
        key = (frame.session, frame.step, frame.epoch)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            writer = await self._ensure()
            t1_wall, t1_mono = time.time_ns(), time.monotonic_ns()
            try:
                writer.write(encoded)
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                self._drop(writer)
                raise PeerFailed(self.peer, FailureKind.CRASHED, f"send failed: {exc}") from None
        except BaseException:
            self._pending.pop(key, None)
            raise
        return PendingAck(key, fut, writer, frame, serialize_ns, t1_wall, t1_mono, len(encoded))

    async def wait_ack(self, sent: "PendingAck") -> HopTiming:
        """The hop's timing once its ack arrives (logged as the hop's ``ack`` event); PeerFailed if it does
        not arrive within the adaptive deadline."""
        # Time on the wire grows with the frame: a prompt's hidden states cross a 2.5 Mbit/s uplink slowly.
        deadline = self.deadline.value() + self.timing.wire_time_s(sent.bytes)
        try:
            try:
                reply: Frame = await asyncio.wait_for(asyncio.shield(sent.future), deadline)
            except asyncio.TimeoutError:
                self._drop(sent.writer)
                raise PeerFailed(self.peer, FailureKind.SILENT, f"no ack within {deadline * 1000:.0f} ms") from None
            t4_wall, t4_mono = time.time_ns(), time.monotonic_ns()
            if reply.type == FrameType.ERROR:
                raise PeerFailed(self.peer, FailureKind.REJECTED, reply.payload.decode("utf-8", "replace"))
            timing = HopTiming(sent.t1_wall_ns, sent.t1_mono_ns, reply.t_a, reply.t_b, t4_wall, t4_mono, sent.bytes)
            self.deadline.observe(max(timing.rtt_ns, 0) / 1e9)
            frame = sent.frame
            self.log.log("ack", session=str(frame.session), step=frame.step, epoch=frame.epoch, src=frame.src,
                         dst=frame.dst, positions=frame.n_pos, bytes=timing.bytes, serialize_ns=sent.serialize_ns,
                         t1_wall_ns=timing.t1_wall_ns, t1_mono_ns=timing.t1_mono_ns, t2_wall_ns=timing.t2_wall_ns,
                         t3_wall_ns=timing.t3_wall_ns, t4_wall_ns=timing.t4_wall_ns, t4_mono_ns=timing.t4_mono_ns,
                         rtt_ns=timing.rtt_ns)
            return timing
        finally:
            self._pending.pop(sent.key, None)

    async def send_data(self, frame: Frame, encoded: bytes, serialize_ns: int = 0) -> HopTiming:
        """Send a DATA (or RESUME) frame and wait for its ack within the adaptive deadline."""
        return await self.wait_ack(await self.send(frame, encoded, serialize_ns))

    async def send_control(self, frame: Frame) -> bool:
        """Best-effort control frame (heartbeat, failure report, session end); False if undeliverable."""
        try:
            writer = await self._ensure()
            writer.write(encode(frame, self.key))
            await asyncio.wait_for(writer.drain(), self.deadline.value())
            return True
        except (PeerFailed, ConnectionError, OSError, asyncio.TimeoutError):
            return False

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._drop(self._writer)


FrameHandler = Callable[[Frame, asyncio.StreamWriter, int], Awaitable[None]]


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, key: bytes,
                           max_frame: int, handler: FrameHandler, log: EventLog) -> None:
    """Decode frames from one inbound connection and hand each to ``handler`` with its receive time.

    A framing or authentication error closes only this connection (its byte
    stream can no longer be trusted) and is logged; the node serves on.
    """
    decoder = Decoder(key, max_frame=max_frame)
    peer = writer.get_extra_info("peername")
    try:
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            t2 = time.time_ns()
            decoder.feed(data)
            while isinstance(frame := decoder.next_frame(), Frame):
                await handler(frame, writer, t2)
    except PeerFrameError as exc:
        log.log("reject", reason=str(exc), peer=str(peer), fatal=True)
    except (ConnectionError, OSError, asyncio.CancelledError):
        return  # peer went away, or this node is shutting down
    finally:
        writer.close()
