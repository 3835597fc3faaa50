"""End-user node sessions: tokenizer, embeddings, head; plans routes and owns epochs.

The user node is the single authority for a session's route and epoch.  Layer
nodes detect failures (refused/reset connections at once, silent peers by the
ack deadline) and report them here; :mod:`payload.liveness` keeps that
knowledge and adds heartbeats.  On any failure touching the step in flight the
user node marks the node out, re-plans (skip, replica, or replica-then-skip),
bumps the epoch and re-sends the step; nodes roll their caches back to the
step's start, so no position is ever cached twice or from a stale route.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from payload.batching import RowBatcher
from payload.clock import wall_ns
from payload.bridges import BridgeError, BridgeSet, bridge_wire, span_label
from payload.config import UserConfig
from payload.events import EventLog
from payload.frames import Frame, FrameFlag, FrameType, HopFlag, WireDtype
from payload.liveness import Liveness
from payload.routing import USER_NODE, RouteError, RoutePlan, plan_route
from payload.sampling import Sampling, sample
from payload.slices import Head, ModelSpec, dtype_of
from payload.stragglers import heartbeat_steps
from payload.tensors import from_bytes, to_bytes, to_wire
from payload.transport import ConnectionGate, FailureKind, PeerFailed, PeerLink, Wire, frame_cap, serve_connection


class SessionError(RuntimeError):
    """A session could not complete (no route left, attempts exhausted)."""


@dataclass
class Attempt:
    """The step attempt in flight: its epoch, the nodes it visits, the result future, its largest frame, and the
    position of the result it waits for (a chunked prefill's earlier chunks come back too, and are not it)."""

    epoch: int
    nodes: frozenset[int]
    result: asyncio.Future
    frame_bytes: int = 0
    final_pos: int = 0


@dataclass
class SessionResult:
    session: str
    prompt: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None


def resume_hop(failed: RoutePlan | None, plan: RoutePlan, reporter: int | None) -> int | None:
    """Hop from which a failed step can resume instead of restarting at the first hop.

    The node that reported its successor's failure (``reporter``) already holds
    the step's output; if the new route reaches it through exactly the same
    hops, with no cache to rebuild, it can re-forward that output (bridged,
    if the new route has it bridge the lost successor: its history holds its
    own output either way).
    """
    if failed is None or reporter in (None, USER_NODE):
        return None
    for index, hop in enumerate(failed.hops):
        if hop.node == reporter:
            if index >= len(plan.hops):
                return None
            mine, was = plan.hops[index], hop
            same_prefix = (plan.hops[:index] == failed.hops[:index] and plan.lead_bridge == failed.lead_bridge
                           and (mine.node, mine.first, mine.end) == (was.node, was.first, was.end))
            clean = all(not (h.flags & HopFlag.REPLAY) for h in plan.hops[: index + 1])
            return index if same_prefix and clean else None
    return None


# How long a head batch waits for sessions whose step is still in the chain (batch_decode): about one pass of
# an 18-node chain here, so that groups of sessions half a pass apart merge; it is only ever waited while
# another session is in flight, never by a lone session.
HEAD_GATHER_S = 0.2


class UserNode:
    """The end-user node's sessions over one deployment: serve, wait for the layer nodes, generate."""

    def __init__(self, config: UserConfig, *, emit=None):
        from transformers import AutoTokenizer

        self.config = config
        self.node = config.node
        self.log = EventLog(self.node.log_path, USER_NODE)
        self.spec = ModelSpec(self.node.model_dir)
        self.head = Head(self.spec, dtype_of(self.node.compute_dtype))
        # batch_decode: the heads of sessions whose steps come back together computed as one product, off the
        # event loop (a large vocabulary's head takes tens of milliseconds), after waiting a little for sessions
        # still in the chain (HEAD_GATHER_S), so that groups which drifted apart come back together.
        self.in_chain: set[uuid.UUID] = set()
        if self.node.batch_decode > 1:
            self.head.pack_rows()
        self.heads = RowBatcher(self.head.logits_rows, self.node.batch_decode,
                                executor=ThreadPoolExecutor(1, thread_name_prefix="head"),
                                expected=lambda: len(self.in_chain), expect_s=HEAD_GATHER_S
                                ) if self.node.batch_decode > 1 else None
        self.tokenizer = AutoTokenizer.from_pretrained(self.node.model_dir)
        self.wire_dtype = WireDtype.from_name(self.node.wire_dtype)
        self.bridges = BridgeSet.load(self.node.bridges_file, self.spec.hidden_size)
        if config.policy.bridges:
            missing = self.bridges.missing(list(config.placement.slices.values()))
            if missing:
                raise BridgeError(f"on_failure: {config.policy.value} needs a bridge for every slice; "
                                  f"{self.node.bridges_file or 'no bridges file'} lacks {', '.join(missing)}")
        self.attempts: dict[uuid.UUID, Attempt] = {}
        self.cold: dict[uuid.UUID, set[int]] = {}
        self.unended: dict[int, set[uuid.UUID]] = {}  # node -> sessions that ended while it was out
        # Results carry one position; failure reports and heartbeats are small JSON.
        self.wire = Wire(self.node.key, self.log, frame_cap(1, self.node.largest_position_bytes(self.spec.hidden_size)), encrypt=self.node.encrypt,
                         timing=self.node.timing)
        self.gate = ConnectionGate(self.node.timing)
        self.liveness = Liveness(self.node.timing, config.placement, self.log, on_out=self._failed,
                                 on_back=self._back, in_flight_bytes=self._in_flight_bytes,
                                 on_tick=lambda: self.wire.flush(), on_slow=config.on_slow)
        self.links: dict[int, PeerLink] = {}
        self.emit = emit or (lambda record: None)
        self._tasks: set[asyncio.Task] = set()

    def link(self, peer: int) -> PeerLink:
        if peer not in self.links:
            self.links[peer] = PeerLink(me=USER_NODE, peer=peer, address=self.node.peers[peer], wire=self.wire,
                                        timing=self.node.timing)
        return self.links[peer]

    # -- what liveness tells the sessions --------------------------------------------------------
    def _failed(self, failure: PeerFailed) -> None:
        """End every attempt in flight that visits the failed node; a rejection cools its caches."""
        if failure.kind == FailureKind.REJECTED:
            self._cool(failure.peer)
        for attempt in self.attempts.values():
            if failure.peer in attempt.nodes and not attempt.result.done():
                attempt.result.set_exception(failure)

    def _cool(self, peer: int) -> None:
        """``peer``'s caches can no longer be trusted by any session: its next hop rebuilds them by replay."""
        for cold in self.cold.values():
            cold.add(peer)

    def _back(self, peer: int) -> None:
        """``peer`` rejoined: its caches are cold, and sessions that ended while it was out end there too."""
        self._cool(peer)
        for sid in self.unended.pop(peer, set()):
            task = asyncio.ensure_future(self.link(peer).send_control(Frame(FrameType.END, sid, src=USER_NODE,
                                                                            dst=peer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _in_flight_bytes(self) -> int:
        return max((a.frame_bytes for a in self.attempts.values() if not a.result.done()), default=0)

    def silence_limit_s(self, peer: int) -> float:
        return self.liveness.silence_limit_s(peer)

    async def on_frame(self, frame: Frame, writer: asyncio.StreamWriter, t2: int) -> None:
        if frame.type == FrameType.HEARTBEAT:
            self.liveness.heartbeat(frame.src, heartbeat_steps(frame.payload))
            return
        if frame.type == FrameType.FAIL:
            if self._stale_report(frame):
                self.log.log("stale", kind="fail_report", session=str(frame.session), step=frame.step,
                             epoch=frame.epoch, src=frame.src)
                return
            try:
                report = json.loads(frame.payload)
                kind = FailureKind(report["kind"])
                self.liveness.mark_failed(int(report["failed"]), kind, str(report["reason"]), int(report["reporter"]))
            except (ValueError, KeyError, TypeError) as exc:
                self.log.log("reject", reason=f"malformed failure report: {exc}", peer=frame.src)
            return
        if frame.type != FrameType.DATA:
            self.log.log("reject", reason=f"unexpected {frame.type.name} frame", peer=frame.src)
            return
        if frame.hidden != self.spec.hidden_size or frame.n_pos != 1 or frame.dtype == WireDtype.NONE:
            reason = f"result frame must carry 1 x {self.spec.hidden_size} hidden values"
            self.log.log("reject", reason=reason, peer=frame.src)
            writer.write(self.wire.encode(frame.reply(FrameType.ERROR, reason.encode())))
            return
        t3 = wall_ns()
        writer.write(self.wire.encode(frame.reply(FrameType.ACK, t_a=t2, t_b=t3)))
        attempt = self.attempts.get(frame.session)
        current = attempt is not None and attempt.epoch == frame.epoch and not attempt.result.done()
        if current and frame.pos_start == attempt.final_pos:
            attempt.result.set_result(frame)
        self.log.log("recv", session=str(frame.session), step=frame.step, epoch=frame.epoch, src=frame.src,
                     positions=frame.n_pos, pos_start=frame.pos_start, replay_len=frame.replay_len,
                     bytes=len(frame.payload), t2_wall_ns=t2, t3_wall_ns=t3)
        if not current:
            self.log.log("stale", session=str(frame.session), step=frame.step, epoch=frame.epoch, src=frame.src)

    def _stale_report(self, frame: Frame) -> bool:
        """A failure report about an attempt that is no longer the session's current one.

        A node whose own link was cut can only report its successor "silent"
        once the link is back, long after the user node re-planned around the
        reporter itself: believing it would mark a live node out.  The current
        attempt finds a real failure again; reports tied to no session (a
        connection reset seen between steps) always count.
        """
        if frame.session.int == 0:
            return False
        attempt = self.attempts.get(frame.session)
        return attempt is None or attempt.epoch != frame.epoch

    # -- generation ------------------------------------------------------------------
    def _max_attempts(self) -> int:
        return self.node.timing.max_attempts or len(self.config.placement.nodes) + 2

    def chunk_sizes(self, plan: RoutePlan, positions: int) -> list[int]:
        """How a step's ``positions`` new positions are split into frames: ``prefill_chunk`` at a time, so each
        node computes and forwards one chunk while the next arrives (the caches grow chunk by chunk: the same
        computation); in one frame when that is off, short enough, or a hop rebuilds its cache from history."""
        chunk = self.config.prefill_chunk
        if chunk <= 0 or positions <= chunk or any(h.flags & HopFlag.REPLAY for h in plan.hops):
            return [positions]
        return [chunk] * (positions // chunk) + ([positions % chunk] if positions % chunk else [])

    async def _inputs(self, ids: list[int], plan: RoutePlan) -> torch.Tensor:
        """The wire tensor the user node sends for ``ids``: embedded, rounded, and bridged over lost first slices."""
        hidden = to_wire(self.head.embed_ids(torch.tensor([ids])), self.wire_dtype)
        if plan.lead_bridge is not None:  # the first slices are lost: the user node bridges them
            maps = self.bridges.cover(*plan.lead_bridge)
            hidden = await asyncio.get_running_loop().run_in_executor(None, bridge_wire, maps, hidden,
                                                                      self.wire_dtype)
        return hidden

    async def _attempt(self, sid: uuid.UUID, step: int, epoch: int, plan: RoutePlan, ids: list[int],
                       positions: int, resume_hop: int | None = None, rows_follow: bool = False
                       ) -> tuple[Frame, list[int]]:
        """Send one attempt of a step along ``plan`` and wait for the final hidden state; return it and the
        chunk sizes its input went in (``[]``: one frame).

        With ``resume_hop`` the step is not recomputed from the start: the node at
        that hop re-forwards the output it already computed, under the new epoch.  ``rows_follow``: the steps
        of other sessions whose heads were computed with this one's go to the same first node right after it
        (``FrameFlag.BATCH``: it may hold its batch open for them).
        """
        chunks: list[int] = []
        if resume_hop is not None:
            first = plan.hops[resume_hop]
            frames = [Frame(FrameType.RESUME, sid, step=step, epoch=epoch, pos_start=positions,
                            n_pos=len(ids) - positions, hop=resume_hop, route=plan.hops, src=USER_NODE,
                            dst=first.node)]
        else:
            first = plan.hops[0]
            if first.flags & HopFlag.REPLAY:
                new_ids, pos_start, replay_len = ids, 0, positions
            else:
                new_ids, pos_start, replay_len = ids[positions:], positions, 0
            sizes = self.chunk_sizes(plan, len(new_ids))
            chunks = sizes if len(sizes) > 1 else []
            frames, at = [], 0
            for size in sizes:
                hidden = await self._inputs(new_ids[at:at + size], plan)
                frames.append(Frame(FrameType.DATA, sid, step=step, epoch=epoch, pos_start=pos_start + at,
                                    n_pos=size, replay_len=replay_len, hidden=self.spec.hidden_size,
                                    dtype=self.wire_dtype, hop=0, route=plan.hops, src=USER_NODE, dst=first.node,
                                    flags=FrameFlag.MORE if at + size < len(new_ids) else (
                                        FrameFlag.BATCH if rows_follow and size == 1 else FrameFlag.NONE),
                                    payload=to_bytes(hidden, self.wire_dtype)))
                at += size
        # A hop that rebuilds a cache receives the whole history; other hops get this step's positions (a chunk).
        frame_positions = len(ids) if any(h.flags & HopFlag.REPLAY for h in plan.hops) else max(
            f.n_pos for f in frames)
        attempt = Attempt(epoch, frozenset(h.node for h in plan.hops), asyncio.get_running_loop().create_future(),
                          frame_positions * self.wire_dtype.position_bytes(self.spec.hidden_size), len(ids) - 1)
        self.attempts[sid] = attempt

        async def send_all() -> None:
            # One chunk at a time, each acked before the next is written: a chunk's ack deadline then covers its
            # own bytes only, not those of chunks still queued before it on a slow link.
            for frame in frames:
                t_enc = time.monotonic_ns()
                encoded = self.wire.encode(frame)
                await self.link(first.node).send_data(frame, encoded, time.monotonic_ns() - t_enc)

        sending = asyncio.ensure_future(send_all())
        try:
            # The attempt can end while the first hop's ack is still awaited: a failure heard meanwhile
            # (heartbeats, a report) ends it at once instead of after a whole ack deadline, and a result that
            # overtook the ack is used as it is.
            await asyncio.wait({sending, attempt.result}, return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():
                return attempt.result.result(), chunks
            sending.result()  # the first hop's acks (PeerFailed if one never came)
            async with asyncio.timeout(self.node.timing.step_timeout_s):
                return await asyncio.shield(attempt.result), chunks
        finally:
            # The attempt is over: later reports about it change nothing (and leave no unretrieved exception).
            if not sending.done():
                sending.cancel()
            sending.add_done_callback(lambda task: task.cancelled() or task.exception())
            if not attempt.result.done():
                attempt.result.cancel()
            elif not attempt.result.cancelled():
                attempt.result.exception()

    def prompt_ids(self, prompt: str, *, chat: bool = False) -> list[int]:
        """Token ids of a prompt; ``chat`` wraps it in the tokenizer's chat template as a user turn."""
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise SessionError("this model's tokenizer has no chat template; set chat: false")
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer(prompt).input_ids

    async def generate(self, prompt: str, *, max_new_tokens: int, sampling: Sampling = Sampling(),
                       prompt_index: int = 0, repeat: int = 0, stream=None, chat: bool = False,
                       ignore_eos: bool = False) -> SessionResult:
        """Run one session to EOS or ``max_new_tokens``; every token is logged as it is emitted.

        ``ignore_eos`` generates exactly ``max_new_tokens``: latency benchmarks and fault schedules keyed to a
        token index need a fixed length, and a model whose layers are skipped may emit EOS at once.
        """
        sid = uuid.uuid4()
        ids = self.prompt_ids(prompt, chat=chat)
        self.cold[sid] = set()
        generator = torch.Generator().manual_seed(sampling.seed + repeat)
        warm: set[tuple[int, int]] = set()
        positions, epoch, emitted = 0, 0, []
        rows_follow = False  # the next step's frame has rows of its head batch following it to the first node
        result = SessionResult(str(sid), prompt, "")
        self.log.log("session_start", session=str(sid), prompt_index=prompt_index, repeat=repeat,
                     prompt_tokens=len(ids), prompt_ids=ids)
        eos = None if ignore_eos else self.tokenizer.eos_token_id
        try:
            for step in range(max_new_tokens):
                if self.log.failed:
                    raise SessionError(self.log.failed)
                t_start = time.monotonic_ns()
                failed_plan: RoutePlan | None = None
                resume_at: int | None = None
                for attempts in range(1, self._max_attempts() + 1):
                    epoch += 1
                    cold = self.cold[sid]
                    warm -= {pair for pair in warm if pair[0] in cold}
                    cold.clear()
                    slow = set(self.liveness.slow)
                    try:
                        plan = plan_route(self.config.placement, set(self.liveness.dead), policy=self.config.policy,
                                          warm=warm, positions=positions, slow=slow, on_slow=self.config.on_slow)
                    except RouteError as exc:
                        raise SessionError(str(exc)) from None
                    # The nodes this attempt routes around, recorded with its token: failed ones, and stragglers
                    # whose own slice it does not visit.
                    own = self.config.placement.slices
                    served = {h.node for h in plan.hops if own.get(h.node, (-1,))[0] == h.first}
                    out = sorted(set(self.liveness.dead) | (slow - served))
                    hop = resume_hop(failed_plan, plan, resume_at)
                    if hop is not None and len(self.chunk_sizes(plan, len(ids) - positions)) > 1:
                        hop = None  # a chunked step restarts whole: re-forwarding it as one frame is another sum
                    self.in_chain.add(sid)
                    try:
                        final, chunks = await self._attempt(sid, step, epoch, plan, ids, positions, resume_hop=hop,
                                                            rows_follow=rows_follow and attempts == 1)
                        break
                    except PeerFailed as exc:
                        refused_resume = (hop is not None and exc.kind == FailureKind.REJECTED
                                          and exc.peer == plan.hops[hop].node)
                        if not refused_resume:
                            self.liveness.mark_failed(exc.peer, exc.kind, exc.reason, USER_NODE)
                        failed_plan, resume_at = plan, (None if refused_resume else exc.reporter)
                        self.log.log("retry", session=str(sid), step=step, epoch=epoch, peer=exc.peer,
                                     kind=exc.kind.value, reason=exc.reason, resumed_at=hop)
                    except asyncio.TimeoutError:
                        self.log.log("retry", session=str(sid), step=step, epoch=epoch, peer=-1,
                                     kind=FailureKind.TIMEOUT.value,
                                     reason=f"no result within {self.node.timing.step_timeout_s}s")
                    finally:
                        self.in_chain.discard(sid)
                else:
                    raise SessionError(f"step {step} failed after {self._max_attempts()} attempts")
                hidden = from_bytes(final.payload, final.dtype, 1, final.hidden)
                head_batch = ""
                if self.heads is None:
                    logits = await asyncio.get_running_loop().run_in_executor(None, self.head.logits, hidden)
                else:
                    done = await self.heads.submit(hidden, tag=plan.hops[0].node)
                    logits, head_batch = done.out, f"{done.rows} {done.row}" if done.rows > 1 else ""
                    rows_follow = plan.hops[0].node in done.later
                token = sample(logits[0, -1], sampling, generator)
                warm = {(h.node, h.first) for h in plan.hops}
                positions = len(ids)
                ids.append(token)
                emitted.append(token)
                text = self.tokenizer.decode(emitted, skip_special_tokens=True)
                piece, result.text = text[len(result.text):], text
                record = dict(
                    session=str(sid), prompt_index=prompt_index, repeat=repeat, step=step, token_id=token,
                    text=self.tokenizer.decode([token]), t_emit_ns=wall_ns(), t_emit_mono_ns=time.monotonic_ns(),
                    latency_ns=time.monotonic_ns() - t_start, layers=" ".join(map(str, plan.layers)),
                    route=" ".join(map(str, [USER_NODE, *(h.node for h in plan.hops), USER_NODE])), epoch=epoch,
                    attempts=attempts, nodes_out=" ".join(map(str, out)),
                    rebuilt=" ".join(str(i) for h in plan.hops if h.flags & HopFlag.REPLAY for i in h.layers),
                    bridges=" ".join(span_label(a, b) for a, b in plan.bridges), chunks=" ".join(map(str, chunks)),
                    head_batch=head_batch,
                )
                self.log.log("token", **record)  # the schema's token fields: one row of tokens.csv
                self.emit(record)
                if stream:
                    stream(piece)
                result.token_ids.append(token)
                if eos is not None and token == eos:
                    break
        except SessionError as exc:
            result.error = str(exc)
            self.log.log("session_error", session=str(sid), error=str(exc))
        finally:
            self.attempts.pop(sid, None)
            self.cold.pop(sid, None)
            holders = set(self.config.placement.nodes) | set(self.config.placement.replicas)
            for peer in sorted(holders):
                if peer in self.liveness.dead:
                    self.unended.setdefault(peer, set()).add(sid)  # told when it rejoins
                else:
                    await self.link(peer).send_control(Frame(FrameType.END, sid, src=USER_NODE, dst=peer))
        self.log.log("session_end", session=str(sid), tokens=len(result.token_ids), error=result.error,
                     text=result.text)
        return result

    async def serve(self):
        server = await asyncio.start_server(
            lambda r, w: serve_connection(r, w, wire=self.wire, gate=self.gate, handler=self.on_frame),
            self.node.listen[0], self.node.listen[1], reuse_address=True)
        watcher = asyncio.create_task(self.liveness.watch())
        self._tasks.add(watcher)
        return server

    async def wait_for_nodes(self, timeout_s: float) -> None:
        """Wait until every layer node has sent a heartbeat (so failures are detectable from step 0)."""
        wanted = set(self.config.placement.nodes) | set(self.config.placement.replicas)
        missing = await self.liveness.wait_for(wanted, timeout_s)
        if missing:
            raise SessionError(f"layer nodes {missing} did not report within {timeout_s:.0f}s")


