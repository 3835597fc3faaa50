"""Layer node: receive hidden states, ack, apply this node's layers, forward along the route.

Per session the node keeps one KV cache per layer range it holds and the
history of hidden states it sent downstream (at wire dtype), so a replica or a
rejoining successor can rebuild its cache by replay.  What a frame does to
those caches (drop it as stale, start afresh, roll back, extend, refuse a gap)
is decided by the pure rules of :mod:`payload.cache_rules`; this module moves
bytes, computes, and applies the decision.

Failures of the successor are reported to the end-user node (node 0), which
re-plans the route and re-sends; nodes never reroute on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from payload.batching import RowBatcher
from payload.clock import follow_skew, wall_ns
from payload.bridges import BridgeSet, bridge_wire
from payload.collector import freeze_loaded
from payload.cache_rules import Action, admit, decide
from payload import eventloop
from payload.config import NodeConfig, compute_threads
from payload.events import EventLog
from payload.frames import Frame, FrameFlag, FrameType, HopFlag, WireDtype
from payload.routing import USER_NODE
from payload.slices import LayerSlice, ModelSpec, SessionCache, dtype_of, model_config
from payload.stragglers import MAX_HEARTBEAT_SAMPLES
from payload.tensors import from_bytes, to_bytes, to_wire
from payload.transport import (NO_SESSION, ConnectionGate, FailureKind, PeerFailed, PeerLink, PendingAck, Wire,
                               frame_cap, serve_connection)

# Steps this short (decode: one position) of a node's only session are computed on the event loop
# itself: a few milliseconds of blocking is cheaper than two thread hand-offs per hop, which add up
# over an 18-hop chain.  Longer steps (prefill, replay), and every step while the node holds other
# sessions, go to the compute thread so that acks and heartbeats keep flowing while they run: the
# frames of other sessions share the connection, and one computed on the loop would leave theirs
# unread, so their acks would wait out its compute (under a flood on shared cores that took past the
# ack deadline, and a healthy node was declared silent).
INLINE_POSITIONS = 4


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class RangeState:
    """One session's state for one layer range: KV cache and sent history."""

    cache: SessionCache
    history: list[torch.Tensor] = field(default_factory=list)  # wire-dtype [1, t, H] chunks

    @property
    def history_len(self) -> int:
        return sum(t.shape[1] for t in self.history)

    def truncate_history(self, length: int) -> None:
        kept, total = [], 0
        for chunk in self.history:
            if total + chunk.shape[1] <= length:
                kept.append(chunk)
                total += chunk.shape[1]
            else:
                if length > total:
                    kept.append(chunk[:, : length - total])
                break
        self.history = kept

    def history_tensor(self) -> torch.Tensor:
        return torch.cat(self.history, dim=1)


@dataclass
class SessionState:
    max_epoch: int = 0
    ranges: dict[int, RangeState] = field(default_factory=dict)  # keyed by first layer
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: int = 0  # frames handed to a task that has not taken the lock yet (the chunks of a prefill)
    used: float = field(default_factory=time.monotonic)  # last frame for it (for idle eviction)


class SessionTable:
    """A node's sessions, bounded: idle ones expire after ``ttl_s``, at most ``limit`` are held, and a session
    that ended (or was evicted) is remembered so that a late or replayed frame never recreates it."""

    def __init__(self, *, ttl_s: float, limit: int, log: EventLog, remembered: int = 4096):
        self.ttl_s, self.limit, self.log = ttl_s, limit, log
        self.live: dict[uuid.UUID, SessionState] = {}
        self.ended: collections.OrderedDict[uuid.UUID, None] = collections.OrderedDict()
        self._remembered = remembered

    def get(self, session: uuid.UUID) -> SessionState | None:
        state = self.live.get(session)
        if state is not None:
            state.used = time.monotonic()
        return state

    def open(self, session: uuid.UUID) -> SessionState | str:
        """The session's state, created if need be; or why it cannot be (ended here, or the node is full)."""
        state = self.get(session)
        if state is not None:
            return state
        if session in self.ended:
            return f"session {session} has ended on this node"
        self.expire()
        if len(self.live) >= self.limit:
            idle = [(s.used, sid) for sid, s in self.live.items() if not s.lock.locked()]
            if not idle:
                return f"this node holds {len(self.live)} sessions, all busy (max_sessions)"
            self.close(min(idle)[1], "evicted: max_sessions reached")
        state = self.live[session] = SessionState()
        return state

    def close(self, session: uuid.UUID, why: str) -> None:
        """Forget a session's caches and history (END, expiry, eviction); later frames for it are refused."""
        self.live.pop(session, None)
        self.ended[session] = None
        while len(self.ended) > self._remembered:
            self.ended.popitem(last=False)
        self.log.log("session_end", session=str(session), reason=why)

    def expire(self) -> None:
        now = time.monotonic()
        for sid in [sid for sid, s in self.live.items() if now - s.used > self.ttl_s and not s.lock.locked()]:
            self.close(sid, f"expired: idle for more than {self.ttl_s:.0f} s")


class LayerNode:
    """The node service: an asyncio server plus one compute thread."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self.log = EventLog(config.log_path, config.node)
        self.wire_dtype = WireDtype.from_name(config.wire_dtype)
        self.spec = ModelSpec(config.model_dir)
        compute = dtype_of(config.compute_dtype)
        self.slices = {a: LayerSlice.load(self.spec, a, b, compute) for a, b in config.ranges}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        # batch_decode: single-position steps of different sessions at one slice computed together, on the
        # loop or the compute thread by the same rule as unbatched steps (``_alone``).
        self.batchers = {a: RowBatcher(sl.forward_rows, config.batch_decode, executor=self.executor,
                                       inline=self._alone)
                         for a, sl in self.slices.items()} if config.batch_decode > 1 else {}
        self.bridges = BridgeSet.load(config.bridges_file, self.spec.hidden_size)
        self.sessions = SessionTable(ttl_s=config.timing.session_ttl_s, limit=config.timing.max_sessions, log=self.log)
        self.steps_ns: list[int] = []  # decode steps' arrival-to-output times since the last heartbeat
        self.links: dict[int, PeerLink] = {}
        # The largest legitimate frame is a replay of every position at the wire dtype.
        self.wire = Wire(config.key, self.log, frame_cap(config.max_positions,
                                                         config.largest_position_bytes(self.spec.hidden_size)),
                         encrypt=config.encrypt, timing=config.timing)
        self.gate = ConnectionGate(config.timing)
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()

    # -- peers -----------------------------------------------------------------
    def link(self, peer: int) -> PeerLink:
        if peer not in self.links:
            if peer not in self.config.peers:
                raise PeerFailed(peer, FailureKind.REJECTED, f"node {peer} is not in this node's peer table")
            self.links[peer] = PeerLink(me=self.config.node, peer=peer, address=self.config.peers[peer],
                                        wire=self.wire, timing=self.config.timing, on_lost=self._peer_lost)
        return self.links[peer]

    def _peer_lost(self, peer: int, reason: str) -> None:
        if peer == USER_NODE or self._stopping.is_set():
            return
        self.log.log("peer_lost", peer=peer, reason=reason)
        self._spawn(self.report_failure(peer, FailureKind.CRASHED, reason, None))

    async def report_failure(self, peer: int, kind: FailureKind, reason: str, frame: Frame | None) -> None:
        detect_ns = wall_ns()
        self.log.log("peer_failed", peer=peer, kind=kind.value, reason=reason,
                     session=str(frame.session) if frame else None,
                     step=frame.step if frame else None, epoch=frame.epoch if frame else None)
        body = json.dumps({"failed": peer, "kind": kind.value, "reason": reason, "detect_wall_ns": detect_ns,
                           "reporter": self.config.node}).encode()
        report = Frame(FrameType.FAIL, frame.session if frame else NO_SESSION,
                       step=frame.step if frame else 0, epoch=frame.epoch if frame else 0,
                       src=self.config.node, dst=USER_NODE, payload=body)
        await self.link(USER_NODE).send_control(report)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- inbound -----------------------------------------------------------------
    def _validate(self, frame: Frame) -> str | None:
        """Return why a DATA frame cannot be served here, or None."""
        if frame.dst != self.config.node:
            return f"frame addressed to node {frame.dst}, this is node {self.config.node}"
        if not frame.route or frame.route[frame.hop].node != self.config.node:
            return "route does not name this node at the frame's hop"
        hop = frame.route[frame.hop]
        sl = self.slices.get(hop.first)
        if sl is None or sl.end != hop.end:
            return f"this node does not hold layers [{hop.first}, {hop.end})"
        if frame.hidden != self.spec.hidden_size:
            return f"hidden size {frame.hidden} does not match the model's {self.spec.hidden_size}"
        if hop.flags & HopFlag.BRIDGE and self._bridge_after(frame.route, frame.hop) is None:
            first, end = self._gap_after(frame.route, frame.hop)
            return f"no bridges here cover layers [{first}, {end}) after this hop"
        if frame.dtype == WireDtype.NONE:
            return "DATA frame without a tensor dtype"
        if frame.n_pos == 0 or frame.pos_start + frame.n_pos > self.config.max_positions:
            return f"positions [{frame.pos_start}, {frame.pos_start + frame.n_pos}) outside 1..{self.config.max_positions}"
        return None

    async def on_frame(self, frame: Frame, writer: asyncio.StreamWriter, t2: int) -> None:
        if frame.type == FrameType.END:
            self.sessions.close(frame.session, "END from the user node")
            return
        if frame.type == FrameType.RESUME:
            problem = self._resumable(frame)
            reply = frame.reply(FrameType.ERROR, problem.encode()) if problem else frame.reply(
                FrameType.ACK, t_a=t2, t_b=wall_ns())
            writer.write(self.wire.encode(reply))
            if problem is None:
                self._spawn(self.resume(frame))
            else:
                self.log.log("resume_refused", reason=problem, session=str(frame.session), step=frame.step)
            return
        if frame.type != FrameType.DATA:
            self.log.log("reject", reason=f"unexpected {frame.type.name} frame", peer=frame.src)
            return
        problem = self._validate(frame)
        state: SessionState | str | None = None
        if problem is None:
            known = self.sessions.get(frame.session)
            problem = admit(frame.pos_start, known is not None and frame.route[frame.hop].first in known.ranges)
        if problem is None:
            state = self.sessions.open(frame.session)
            problem = state if isinstance(state, str) else None
        if problem is not None:
            self.wire.reject(frame.src, problem, session=str(frame.session), step=frame.step)
            writer.write(self.wire.encode(frame.reply(FrameType.ERROR, problem.encode())))
            return
        t3 = wall_ns()
        writer.write(self.wire.encode(frame.reply(FrameType.ACK, t_a=t2, t_b=t3)))
        recv_mono = time.monotonic_ns()
        received = dict(session=str(frame.session), step=frame.step, epoch=frame.epoch, src=frame.src,
                        positions=frame.n_pos, pos_start=frame.pos_start, replay_len=frame.replay_len,
                        bytes=len(frame.payload), t2_wall_ns=t2, t3_wall_ns=t3)
        batch = self._batchable(frame)
        if self._inline(frame) and not state.lock.locked() and not state.queued and not batch:
            # Nothing here waits on the network: this returns once the output is written downstream, and the
            # step's receipt is logged only then (its times are in the event), off the decode critical path.
            try:
                await self.process(frame, state, recv_mono, batch=False)
            finally:
                self.log.log("recv", **received)
        else:
            self.log.log("recv", **received)
            state.queued += 1  # until its task holds the lock: a short frame behind it must not overtake it
            self._spawn(self.process(frame, state, recv_mono, queued=True, batch=batch))

    def _inline(self, frame: Frame) -> bool:
        """Whether a step is computed on the event loop (see ``INLINE_POSITIONS``): short, and of the only session
        here."""
        return frame.n_pos <= INLINE_POSITIONS and self._alone(1)

    def _alone(self, rows: int) -> bool:
        """Whether ``rows`` steps computed together hold one of every session here, so that no other session's
        frame can be waiting behind them on a connection (the only case a step or batch may hold up the event
        loop).  A session whose END never came counts until its TTL: its cost is a thread hand-off per step."""
        return rows >= len(self.sessions.live)

    def _batchable(self, frame: Frame) -> bool:
        """A decode step that goes to its slice's batcher (batch_decode on).  It never holds up the connection
        it came on, or the steps of other sessions behind it there could never join its batch; a lone step
        still runs at once (sending every step this way measured better at 8 sessions than running steps
        inline when no batch was forming: the first of a burst then held the rest up)."""
        if not self.batchers or frame.n_pos != 1 or frame.replay_len:
            return False
        return frame.route[frame.hop].first in self.batchers

    def _gap_after(self, route, index: int) -> tuple[int, int]:
        """Layers between hop ``index``'s end and the next hop's first (or the model's end)."""
        follows = route[index + 1].first if index + 1 < len(route) else self.spec.num_layers
        return route[index].end, follows

    def _bridge_after(self, route, index: int):
        """The bridges this hop applies to what it sends (``[]`` when it bridges nothing), None if it cannot."""
        if not route[index].flags & HopFlag.BRIDGE:
            return []
        return self.bridges.cover(*self._gap_after(route, index))

    def _resumable(self, frame: Frame) -> str | None:
        """Why this node cannot re-forward the step's output now (None if it can)."""
        if not frame.route or frame.hop >= len(frame.route) or frame.route[frame.hop].node != self.config.node:
            return "route does not name this node at the frame's hop"
        if self._bridge_after(frame.route, frame.hop) is None:
            return "no bridges here cover the layers after this hop"
        state = self.sessions.get(frame.session)
        rs = state.ranges.get(frame.route[frame.hop].first) if state else None
        if state is None or rs is None:
            return "unknown session"
        if state.lock.locked():
            return "still processing a step of this session"
        if frame.epoch <= state.max_epoch:
            return f"epoch {frame.epoch} is not newer than {state.max_epoch}"
        if rs.history_len != frame.pos_start + frame.n_pos:
            return f"history holds {rs.history_len} positions, the step ends at {frame.pos_start + frame.n_pos}"
        return None

    async def resume(self, frame: Frame) -> None:
        """Re-forward this node's output of a step along the frame's new route (the successor failed).

        Upstream nodes computed the step once with the same inputs, so their
        caches stay valid: only the nodes from here on see the new epoch.
        """
        state = self.sessions.live[frame.session]
        await state.lock.acquire()
        handed_over = False
        try:
            if frame.epoch <= state.max_epoch:
                return
            state.max_epoch = frame.epoch
            rs = state.ranges[frame.route[frame.hop].first]
            wire = rs.history_tensor()[:, frame.pos_start:frame.pos_start + frame.n_pos]
            self.log.log("resume", session=str(frame.session), step=frame.step, epoch=frame.epoch,
                         route=[h.node for h in frame.route])
            as_data = Frame(FrameType.DATA, frame.session, step=frame.step, epoch=frame.epoch,
                            pos_start=frame.pos_start, n_pos=frame.n_pos, hidden=self.spec.hidden_size,
                            dtype=self.wire_dtype, hop=frame.hop, route=frame.route, src=frame.src,
                            dst=self.config.node)
            handed_over = await self.forward(as_data, rs, wire, state.lock)
        finally:
            if not handed_over:
                state.lock.release()

    # -- compute and forward -------------------------------------------------------
    async def process(self, frame: Frame, state: SessionState, recv_mono: int, *, queued: bool = False,
                      batch: bool = False) -> None:
        """Apply this node's layers to a step and send the result on.

        The session lock is held from here until the next hop acks the output
        (``forward`` hands it to the task that waits for that ack), so a later
        step or a resume of this session never overtakes this one.  With ``batch`` the step is computed by
        its slice's batcher, with the steps of other sessions waiting there (:meth:`_batchable`).
        """
        try:
            await state.lock.acquire()
        finally:
            if queued:
                state.queued -= 1
        handed_over = False
        try:
            hop = frame.route[frame.hop]
            sl = self.slices[hop.first]
            rs = state.ranges.get(hop.first)
            try:
                hidden = from_bytes(frame.payload, frame.dtype, frame.n_pos, frame.hidden)
            except ValueError as exc:  # compressed codes that decode to nothing valid: refused before any cache moves
                await self._refuse(frame, f"undecodable {frame.dtype.name} payload: {exc}")
                return
            decision = decide(epoch=frame.epoch, pos_start=frame.pos_start, session_epoch=state.max_epoch,
                              cached=rs.cache.length if rs is not None else None)
            if decision.action == Action.DROP_STALE:
                self.log.log("stale", session=str(frame.session), step=frame.step, epoch=frame.epoch,
                             current_epoch=state.max_epoch)
                return
            state.max_epoch = frame.epoch
            if decision.action == Action.REFUSE_GAP:
                await self._refuse(frame, decision.reason)
                return
            if decision.action == Action.START:
                rs = state.ranges[hop.first] = RangeState(sl.new_cache())
                if frame.replay_len:
                    self.log.log("replay", session=str(frame.session), step=frame.step, positions=frame.replay_len,
                                 layers=list(hop.layers))
            elif decision.action == Action.ROLLBACK:
                rs.cache.rollback(decision.rollback)
                rs.truncate_history(frame.pos_start)
                self.log.log("rollback", session=str(frame.session), step=frame.step, epoch=frame.epoch,
                             positions=decision.rollback)
            else:
                rs.cache.commit()
            batched: dict = {}
            rows_follow = False  # rows of this step's batch go on to the same next hop after it
            if batch:
                nxt = self._next_node(frame)
                done = await self.batchers[hop.first].submit((hidden, frame.pos_start, rs.cache), tag=nxt,
                                                             more=bool(frame.flags & FrameFlag.BATCH))
                out, start, end = done.out, done.start_ns, done.end_ns
                batched = dict(batch=[done.rows, done.row]) if done.rows > 1 else {}
                rows_follow = nxt in done.later
            else:
                positions = torch.arange(frame.pos_start, frame.pos_start + frame.n_pos).unsqueeze(0)
                start = time.monotonic_ns()
                if self._inline(frame):
                    out = sl.forward(hidden, positions, rs.cache)
                else:
                    out = await asyncio.get_running_loop().run_in_executor(
                        self.executor, sl.forward, hidden, positions, rs.cache)
                end = time.monotonic_ns()
            if frame.n_pos == 1 and not frame.replay_len:  # what the user node tells stragglers by
                self.steps_ns.append(end - recv_mono)
            wire = to_wire(out, self.wire_dtype)
            rs.history.append(wire)
            computed = dict(session=str(frame.session), step=frame.step, epoch=frame.epoch, layers=list(hop.layers),
                            positions=frame.n_pos, pos_start=frame.pos_start, start_mono_ns=start, end_mono_ns=end,
                            queue_ns=start - recv_mono,
                            compute_ns=end - start, src=frame.src, **batched)
            handed_over = await self.forward(frame, rs, wire, state.lock, computed=computed,
                                             rows_follow=rows_follow)
        finally:
            if not handed_over:
                state.lock.release()

    async def _refuse(self, frame: Frame, reason: str) -> None:
        self.log.log("reject", reason=reason, peer=frame.src, session=str(frame.session), step=frame.step)
        await self.report_failure(self.config.node, FailureKind.REJECTED, reason, frame)

    def _next_node(self, frame: Frame) -> int:
        """Where this hop's output goes: the next hop's node, or the user node after the last."""
        return USER_NODE if frame.hop + 1 >= len(frame.route) else frame.route[frame.hop + 1].node

    async def forward(self, frame: Frame, rs: RangeState, wire: torch.Tensor, lock: asyncio.Lock, *,
                      computed: dict | None = None, rows_follow: bool = False) -> bool:
        """Send this step's output to the next hop (or the user node after the last hop).

        Returns once the frame is written (the ``computed`` event is logged
        then, off the critical path).  On success ``lock`` passes to a task that
        waits for the ack and releases it (True); on failure the caller keeps it.
        A chunk with more of its step to come (``FrameFlag.MORE``) frees the
        session as soon as it is written, so the next chunk is computed while
        this one crosses the link: one TCP connection keeps them in order, and
        a chunk lost with a connection leaves a gap the successor refuses.  ``rows_follow`` marks the frame
        ``FrameFlag.BATCH``: more rows of its batch come to the same receiver right after it.
        """
        last = frame.hop + 1 >= len(frame.route)
        nxt = self._next_node(frame)
        new = wire[:, frame.replay_len:] if frame.replay_len else wire
        pos_start = frame.pos_start + frame.replay_len
        replay_len = 0
        if last:
            if new.shape[1] > 1:  # the user needs the last position only
                new, pos_start = new[:, -1:], pos_start + new.shape[1] - 1
            payload = new
        elif frame.route[frame.hop + 1].flags & HopFlag.REPLAY:
            payload = rs.history_tensor()
            replay_len, pos_start = payload.shape[1] - new.shape[1], 0
        else:
            payload = new
        maps = self._bridge_after(frame.route, frame.hop)  # checked when the frame was accepted
        if maps:  # the history keeps this node's own output; what goes on stands in for the lost layers too
            if payload.shape[1] <= INLINE_POSITIONS:
                payload = bridge_wire(maps, payload, self.wire_dtype)
            else:
                payload = await asyncio.get_running_loop().run_in_executor(
                    self.executor, bridge_wire, maps, payload, self.wire_dtype)
        out = Frame(FrameType.DATA, frame.session, step=frame.step, epoch=frame.epoch, pos_start=pos_start,
                    n_pos=payload.shape[1], replay_len=replay_len, hidden=frame.hidden, dtype=self.wire_dtype,
                    hop=frame.hop + 1 if not last else 0, route=frame.route, src=self.config.node, dst=nxt,
                    flags=(frame.flags & FrameFlag.MORE) | (FrameFlag.BATCH if rows_follow else FrameFlag.NONE),
                    payload=to_bytes(payload, self.wire_dtype))
        t_enc = time.monotonic_ns()
        encoded = self.wire.encode(out)
        serialize_ns = time.monotonic_ns() - t_enc
        link = self.link(nxt)
        try:
            sent = await link.send(out, encoded, serialize_ns)
        except PeerFailed as exc:
            sent = exc
        if computed is not None:
            self.log.log("compute", **computed)
        if isinstance(sent, PeerFailed):
            # Reported from a task so this session's lock is free by the time the user node asks to resume.
            self._spawn(self.report_failure(sent.peer, sent.kind, sent.reason, frame))
            return False
        if frame.flags & FrameFlag.MORE:
            lock.release()
            self._spawn(self._acked(frame, link, sent, None))
        else:
            self._spawn(self._acked(frame, link, sent, lock))
        return True

    async def _acked(self, frame: Frame, link: PeerLink, sent: PendingAck, lock: asyncio.Lock | None) -> None:
        """Wait for the next hop's ack (the link logs the hop), then free the session (unless it was freed)."""
        failure: PeerFailed | None = None
        try:
            await link.wait_ack(sent)
        except PeerFailed as exc:
            failure = exc
        finally:
            if lock is not None:
                lock.release()
        if failure is not None:
            await self.report_failure(failure.peer, failure.kind, failure.reason, frame)

    # -- liveness ------------------------------------------------------------------
    async def heartbeat(self) -> None:
        seq = 0
        interval = self.config.timing.heartbeat_ms / 1000
        while not self._stopping.is_set():
            seq += 1
            steps, self.steps_ns = self.steps_ns[-MAX_HEARTBEAT_SAMPLES:], []
            body = json.dumps({"seq": seq, "peak_rss_bytes": peak_rss_bytes(), "started_wall_ns": self.started,
                               "ranges": self.config.ranges, "steps_ns": steps}).encode()
            await self.link(USER_NODE).send_control(
                Frame(FrameType.HEARTBEAT, NO_SESSION, step=seq, src=self.config.node, dst=USER_NODE,
                      payload=body))
            self.sessions.expire()
            self.wire.flush()
            try:
                async with asyncio.timeout(interval):
                    await self._stopping.wait()
            except asyncio.TimeoutError:
                pass

    def _log_failed(self, reason: str) -> None:
        """The event log cannot be written (a full disk): say so to the user node and stop, rather than serve
        on without a record.  Called by the log, on the event loop."""
        print(f"node {self.config.node}: {reason}; stopping", file=sys.stderr, flush=True)
        self.exit_reason = reason

        async def report_and_stop() -> None:
            body = json.dumps({"failed": self.config.node, "kind": FailureKind.CRASHED.value, "reason": reason,
                               "reporter": self.config.node}).encode()
            await self.link(USER_NODE).send_control(Frame(FrameType.FAIL, NO_SESSION, src=self.config.node,
                                                          dst=USER_NODE, payload=body))
            self._stopping.set()

        self._spawn(report_and_stop())

    async def run(self) -> None:
        self.started = wall_ns()
        self.exit_reason: str | None = None
        self.log.on_failure = self._log_failed
        server = await asyncio.start_server(
            lambda r, w: serve_connection(r, w, wire=self.wire, gate=self.gate, handler=self.on_frame),
            self.config.listen[0], self.config.listen[1], reuse_address=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.log.log("ready", listen=list(self.config.listen), ranges=self.config.ranges,
                     peak_rss_bytes=peak_rss_bytes(), model_dir=self.config.model_dir, event_loop=eventloop.running(),
                     gc_frozen=freeze_loaded())
        print(f"node {self.config.node} ready on {self.config.listen[0]}:{self.config.listen[1]} "
              f"layers {self.config.ranges}", flush=True)
        hb = asyncio.create_task(self.heartbeat())
        async with server:
            await self._stopping.wait()
        hb.cancel()
        self.log.log("stop", peak_rss_bytes=peak_rss_bytes())


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="JARVIS layer node service")
    parser.add_argument("--config", required=True, help="node config JSON written by deploy")
    return parser.parse_args(argv)


def prewarm(argv: list[str]) -> None:
    """Import the model family's code without starting anything (the local testbed forks nodes after this)."""
    model_config(NodeConfig.load(_arguments(argv).config).model_dir)


def main(argv: list[str] | None = None) -> int:
    follow_skew()
    config = NodeConfig.load(_arguments(argv).config)
    torch.set_num_threads(compute_threads())
    node = LayerNode(config)
    node.log.log("start", peak_rss_bytes=peak_rss_bytes())
    if node.log.failed:
        print(f"node {config.node}: {node.log.failed}", file=sys.stderr)
        return 3
    try:
        loop = eventloop.resolve(config.event_loop)
    except ValueError as exc:  # the loop asked for cannot run here: fail at start, saying why
        print(f"node {config.node}: {exc}", file=sys.stderr)
        return 3
    eventloop.run(node.run(), loop)
    return 3 if node.exit_reason else 0


if __name__ == "__main__":
    sys.exit(main())
