"""End-user node: tokenizer, embeddings, head, sampling; plans routes and owns epochs.

The user node is the single authority for a session's route and epoch.  Layer
nodes detect failures (refused/reset connections at once, silent peers by the
ack deadline) and report them here; heartbeats add detection of nodes that go
silent after acking.  On any failure touching the step in flight the user
node marks the node out, re-plans (skip, replica, or replica-then-skip), bumps
the epoch and re-sends the step; nodes roll their caches back to the step's
start, so no position is ever cached twice or from a stale route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from payload.config import NodeConfig, compute_threads
from payload.events import EventLog
from payload.frames import DEFAULT_MAX_FRAME, Frame, FrameType, HopFlag, WireDtype, encode
from payload.node import USER_NODE, peak_rss_bytes
from payload.routing import Placement, Policy, RouteError, RoutePlan, plan_route
from payload.slices import Head, ModelSpec, dtype_of, model_config
from payload.tensors import from_bytes, to_bytes, to_wire
from payload.transport import AdaptiveDeadline, PeerFailed, PeerLink, serve_connection


class SessionError(RuntimeError):
    """A session could not complete (no route left, attempts exhausted)."""


@dataclass(frozen=True)
class Sampling:
    """Greedy by default; temperature > 0 samples with top-k / top-p under a seed."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class UserConfig:
    node: NodeConfig
    placement: Placement
    policy: Policy = Policy.SKIP

    @classmethod
    def load(cls, path: Path | str) -> "UserConfig":
        data = json.loads(Path(path).read_text())
        p = data["placement"]
        placement = Placement(
            int(p["num_layers"]),
            {int(k): (int(v[0]), int(v[1])) for k, v in p["slices"].items()},
            {int(k): tuple(int(x) for x in v) for k, v in p.get("replicas", {}).items()},
        )
        return cls(NodeConfig.from_dict(data["node"]), placement, Policy(data.get("policy", "skip")))


@dataclass
class Attempt:
    """The step attempt in flight: its epoch, the nodes it visits, the result future, and its largest frame."""

    epoch: int
    nodes: frozenset[int]
    result: asyncio.Future
    frame_bytes: int = 0


@dataclass
class TokenRecord:
    session: str
    prompt_index: int
    repeat: int
    step: int
    token_id: int
    text: str
    t_emit_ns: int
    t_emit_mono_ns: int
    latency_ns: int
    layers: str
    route: str
    epoch: int
    attempts: int
    nodes_out: str
    rebuilt: str


@dataclass
class SessionResult:
    session: str
    prompt: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Pick the next token from logits [V]."""
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        ordered, index = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(ordered, dim=-1)
        ordered[(cumulative - ordered) > sampling.top_p] = 0
        probs = torch.zeros_like(probs).scatter(0, index, ordered)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def resume_hop(failed: RoutePlan | None, plan: RoutePlan, reporter: int | None) -> int | None:
    """Hop from which a failed step can resume instead of restarting at the first hop.

    The node that reported its successor's failure (``reporter``) already holds
    the step's output; if the new route reaches it through exactly the same
    hops, with no cache to rebuild, it can re-forward that output.
    """
    if failed is None or reporter in (None, USER_NODE):
        return None
    for index, hop in enumerate(failed.hops):
        if hop.node == reporter:
            same_prefix = plan.hops[: index + 1] == failed.hops[: index + 1]
            clean = all(not (h.flags & HopFlag.REPLAY) for h in plan.hops[: index + 1])
            return index if same_prefix and clean else None
    return None


class UserNode:
    def __init__(self, config: UserConfig, *, emit=None):
        from transformers import AutoTokenizer

        self.config = config
        self.node = config.node
        self.log = EventLog(self.node.log_path, USER_NODE)
        self.spec = ModelSpec(self.node.model_dir)
        self.head = Head(self.spec, dtype_of(self.node.compute_dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(self.node.model_dir)
        self.wire_dtype = WireDtype.from_name(self.node.wire_dtype)
        self.dead: dict[int, int] = {}  # node -> monotonic ns when declared failed
        self.last_heartbeat: dict[int, int] = {}
        self.heartbeat_gaps: dict[int, AdaptiveDeadline] = {}
        self.attempts: dict[uuid.UUID, Attempt] = {}
        self.cold: dict[uuid.UUID, set[int]] = {}
        self.links: dict[int, PeerLink] = {}
        self.emit = emit or (lambda record: None)
        self._tasks: set[asyncio.Task] = set()

    def link(self, peer: int) -> PeerLink:
        if peer not in self.links:
            self.links[peer] = PeerLink(me=USER_NODE, peer=peer, address=self.node.peers[peer], key=self.node.key,
                                        timing=self.node.timing, log=self.log)
        return self.links[peer]

    # -- failure knowledge ------------------------------------------------------------
    def mark_failed(self, peer: int, kind: str, reason: str, reporter: int) -> None:
        if peer == USER_NODE:
            return
        if kind == "rejected":
            for cold in self.cold.values():
                cold.add(peer)
        elif peer not in self.dead:
            self.dead[peer] = time.monotonic_ns()
            critical = peer in self.config.placement.slices and self.config.placement.critical(peer)
            first, end = self.config.placement.slices.get(peer, (0, 0))
            self.log.log("node_out", peer=peer, kind=kind, reason=reason, reporter=reporter, critical=critical,
                         layers=list(range(first, end)))
            print(f"[user] node {peer} out ({kind}: {reason}); layers {first}-{end - 1} "
                  f"{'CRITICAL ' if critical else ''}skipped or served by a replica", file=sys.stderr, flush=True)
        for attempt in self.attempts.values():
            if peer in attempt.nodes and not attempt.result.done():
                attempt.result.set_exception(PeerFailed(peer, kind, reason, reporter=reporter))

    async def on_frame(self, frame: Frame, writer: asyncio.StreamWriter, t2: int) -> None:
        if frame.type == FrameType.HEARTBEAT:
            self._heartbeat(frame.src)
            return
        if frame.type == FrameType.FAIL:
            if self._stale_report(frame):
                self.log.log("stale", kind="fail_report", session=str(frame.session), step=frame.step,
                             epoch=frame.epoch, src=frame.src)
                return
            try:
                report = json.loads(frame.payload)
                self.mark_failed(int(report["failed"]), str(report["kind"]), str(report["reason"]),
                                 int(report["reporter"]))
            except (ValueError, KeyError, TypeError) as exc:
                self.log.log("reject", reason=f"malformed failure report: {exc}", peer=frame.src)
            return
        if frame.type != FrameType.DATA:
            self.log.log("reject", reason=f"unexpected {frame.type.name} frame", peer=frame.src)
            return
        if frame.hidden != self.spec.hidden_size or frame.n_pos != 1 or frame.dtype == WireDtype.NONE:
            reason = f"result frame must carry 1 x {self.spec.hidden_size} hidden values"
            self.log.log("reject", reason=reason, peer=frame.src)
            writer.write(encode(frame.reply(FrameType.ERROR, reason.encode()), self.node.key))
            return
        writer.write(encode(frame.reply(FrameType.ACK, t_a=t2, t_b=time.time_ns()), self.node.key))
        attempt = self.attempts.get(frame.session)
        if attempt is None or attempt.epoch != frame.epoch or attempt.result.done():
            self.log.log("stale", session=str(frame.session), step=frame.step, epoch=frame.epoch, src=frame.src)
            return
        attempt.result.set_result(frame)

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

    def _heartbeat(self, peer: int) -> None:
        now = time.monotonic_ns()
        if peer in self.last_heartbeat:
            gaps = self.heartbeat_gaps.setdefault(
                peer, AdaptiveDeadline(self.node.timing.heartbeat_floor_ms / 1000, 4.0))
            gaps.observe((now - self.last_heartbeat[peer]) / 1e9)
        self.last_heartbeat[peer] = now
        since = self.dead.get(peer)
        if since is not None and (now - since) / 1e9 >= self.node.timing.rejoin_after_s:
            del self.dead[peer]
            for cold in self.cold.values():
                cold.add(peer)
            self.log.log("rejoin", peer=peer)
            print(f"[user] node {peer} is back: it rejoins with a cache rebuilt by replay", file=sys.stderr, flush=True)

    async def watch_heartbeats(self) -> None:
        """Declare a node failed when its heartbeats stop (catches nodes that stop after acking)."""
        interval = self.node.timing.heartbeat_ms / 1000
        last_tick = time.monotonic_ns()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic_ns()
            late_ns = now - last_tick - int(interval * 1e9)
            last_tick = now
            if late_ns > interval * 1e9:
                # This loop itself was held up: silence it could not hear is not the nodes' fault.
                for peer in self.last_heartbeat:
                    self.last_heartbeat[peer] += late_ns
                continue
            for peer, last in list(self.last_heartbeat.items()):
                if peer not in self.dead and (now - last) / 1e9 > self.silence_limit_s(peer):
                    self.mark_failed(peer, "silent", f"no heartbeat for {(now - last) / 1e6:.0f} ms", USER_NODE)

    def silence_limit_s(self, peer: int) -> float:
        """How long ``peer`` may go unheard before it is declared failed.

        ``max(floor, 4 x p99 heartbeat gap)``, plus the largest frame in flight
        at ``Timing.slowest_link_mbps`` (as for ack deadlines): a node sending a
        long prompt's hidden states over a cellular uplink queues its heartbeats
        behind them for seconds, and is busy, not silent.
        """
        gaps = self.heartbeat_gaps.get(peer)
        limit_s = gaps.value() if gaps else self.node.timing.heartbeat_floor_ms / 1000
        in_flight = max((a.frame_bytes for a in self.attempts.values() if not a.result.done()), default=0)
        return limit_s + self.node.timing.wire_time_s(in_flight)

    # -- generation ------------------------------------------------------------------
    def _max_attempts(self) -> int:
        return self.node.timing.max_attempts or len(self.config.placement.nodes) + 2

    async def _attempt(self, sid: uuid.UUID, step: int, epoch: int, plan: RoutePlan, ids: list[int],
                       positions: int, resume_hop: int | None = None) -> Frame:
        """Send one attempt of a step along ``plan`` and wait for the final hidden state.

        With ``resume_hop`` the step is not recomputed from the start: the node at
        that hop re-forwards the output it already computed, under the new epoch.
        """
        if resume_hop is not None:
            first = plan.hops[resume_hop]
            frame = Frame(FrameType.RESUME, sid, step=step, epoch=epoch, pos_start=positions,
                          n_pos=len(ids) - positions, hop=resume_hop, route=plan.hops, src=USER_NODE, dst=first.node)
        else:
            first = plan.hops[0]
            if first.flags & HopFlag.REPLAY:
                new_ids, pos_start, replay_len = ids, 0, positions
            else:
                new_ids, pos_start, replay_len = ids[positions:], positions, 0
            hidden = to_wire(self.head.embed_ids(torch.tensor([new_ids])), self.wire_dtype)
            frame = Frame(FrameType.DATA, sid, step=step, epoch=epoch, pos_start=pos_start, n_pos=len(new_ids),
                          replay_len=replay_len, hidden=self.spec.hidden_size, dtype=self.wire_dtype, hop=0,
                          route=plan.hops, src=USER_NODE, dst=first.node, payload=to_bytes(hidden))
        # A hop that rebuilds a cache receives the whole history; other hops get this step's positions.
        frame_positions = len(ids) if any(h.flags & HopFlag.REPLAY for h in plan.hops) else len(ids) - positions
        attempt = Attempt(epoch, frozenset(h.node for h in plan.hops), asyncio.get_running_loop().create_future(),
                          frame_positions * self.spec.hidden_size * self.wire_dtype.itemsize)
        self.attempts[sid] = attempt
        t_enc = time.monotonic_ns()
        encoded = encode(frame, self.node.key)
        serialize_ns = time.monotonic_ns() - t_enc
        sending = asyncio.ensure_future(self.link(first.node).send_data(frame, encoded))
        try:
            # The attempt can end while the first hop's ack is still awaited: a failure heard meanwhile
            # (heartbeats, a report) ends it at once instead of after a whole ack deadline, and a result that
            # overtook the ack is used as it is.
            await asyncio.wait({sending, attempt.result}, return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():
                return attempt.result.result()
            timing = sending.result()
            self.log.log("ack", session=str(sid), step=step, epoch=epoch, src=USER_NODE, dst=first.node,
                         positions=frame.n_pos, bytes=timing.bytes, serialize_ns=serialize_ns,
                         t1_wall_ns=timing.t1_wall_ns, t1_mono_ns=timing.t1_mono_ns, t2_wall_ns=timing.t2_wall_ns,
                         t3_wall_ns=timing.t3_wall_ns, t4_wall_ns=timing.t4_wall_ns, t4_mono_ns=timing.t4_mono_ns,
                         rtt_ns=timing.rtt_ns)
            return await asyncio.wait_for(asyncio.shield(attempt.result), self.node.timing.step_timeout_s)
        finally:
            # The attempt is over: later reports about it change nothing (and leave no unretrieved exception).
            if not sending.done():
                sending.cancel()
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
                       prompt_index: int = 0, repeat: int = 0, stream=None, chat: bool = False) -> SessionResult:
        """Run one session to EOS or ``max_new_tokens``; every token is logged as it is emitted."""
        sid = uuid.uuid4()
        ids = self.prompt_ids(prompt, chat=chat)
        self.cold[sid] = set()
        generator = torch.Generator().manual_seed(sampling.seed + repeat)
        warm: set[tuple[int, int]] = set()
        positions, epoch, emitted = 0, 0, []
        result = SessionResult(str(sid), prompt, "")
        self.log.log("session_start", session=str(sid), prompt_index=prompt_index, repeat=repeat,
                     prompt_tokens=len(ids), prompt_ids=ids)
        eos = self.tokenizer.eos_token_id
        try:
            for step in range(max_new_tokens):
                t_start = time.monotonic_ns()
                failed_plan: RoutePlan | None = None
                resume_at: int | None = None
                for attempts in range(1, self._max_attempts() + 1):
                    epoch += 1
                    cold = self.cold[sid]
                    warm -= {pair for pair in warm if pair[0] in cold}
                    cold.clear()
                    out = sorted(self.dead)  # the nodes this attempt routes around, recorded with its token
                    try:
                        plan = plan_route(self.config.placement, set(out), policy=self.config.policy,
                                          warm=warm, positions=positions)
                    except RouteError as exc:
                        raise SessionError(str(exc)) from None
                    hop = resume_hop(failed_plan, plan, resume_at)
                    try:
                        final = await self._attempt(sid, step, epoch, plan, ids, positions, resume_hop=hop)
                        break
                    except PeerFailed as exc:
                        refused_resume = hop is not None and exc.kind == "rejected" and exc.peer == plan.hops[hop].node
                        if not refused_resume:
                            self.mark_failed(exc.peer, exc.kind, exc.reason, USER_NODE)
                        failed_plan, resume_at = plan, (None if refused_resume else exc.reporter)
                        self.log.log("retry", session=str(sid), step=step, epoch=epoch, peer=exc.peer,
                                     kind=exc.kind, reason=exc.reason, resumed_at=hop)
                    except asyncio.TimeoutError:
                        self.log.log("retry", session=str(sid), step=step, epoch=epoch, peer=-1, kind="timeout",
                                     reason=f"no result within {self.node.timing.step_timeout_s}s")
                else:
                    raise SessionError(f"step {step} failed after {self._max_attempts()} attempts")
                hidden = from_bytes(final.payload, final.dtype, 1, final.hidden)
                logits = await asyncio.get_running_loop().run_in_executor(None, self.head.logits, hidden)
                token = sample(logits[0, -1], sampling, generator)
                warm = {(h.node, h.first) for h in plan.hops}
                positions = len(ids)
                ids.append(token)
                emitted.append(token)
                text = self.tokenizer.decode(emitted, skip_special_tokens=True)
                piece, result.text = text[len(result.text):], text
                record = TokenRecord(
                    session=str(sid), prompt_index=prompt_index, repeat=repeat, step=step, token_id=token,
                    text=self.tokenizer.decode([token]), t_emit_ns=time.time_ns(), t_emit_mono_ns=time.monotonic_ns(),
                    latency_ns=time.monotonic_ns() - t_start, layers=" ".join(map(str, plan.layers)),
                    route=" ".join(map(str, [USER_NODE, *(h.node for h in plan.hops), USER_NODE])), epoch=epoch,
                    attempts=attempts, nodes_out=" ".join(map(str, out)),
                    rebuilt=" ".join(str(i) for h in plan.hops if h.flags & HopFlag.REPLAY for i in h.layers),
                )
                self.log.log("token", **record.__dict__)
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
            for peer in self.config.placement.nodes:
                if peer not in self.dead:
                    await self.link(peer).send_control(Frame(FrameType.END, sid, src=USER_NODE, dst=peer))
        self.log.log("session_end", session=str(sid), tokens=len(result.token_ids), error=result.error,
                     text=result.text)
        return result

    async def serve(self):
        server = await asyncio.start_server(
            lambda r, w: serve_connection(r, w, key=self.node.key, max_frame=DEFAULT_MAX_FRAME,
                                          handler=self.on_frame, log=self.log),
            self.node.listen[0], self.node.listen[1], reuse_address=True)
        watcher = asyncio.create_task(self.watch_heartbeats())
        self._tasks.add(watcher)
        return server

    async def wait_for_nodes(self, timeout_s: float) -> None:
        """Wait until every layer node has sent a heartbeat (so failures are detectable from step 0)."""
        deadline = time.monotonic() + timeout_s
        wanted = set(self.config.placement.nodes) | {h for h in self.config.placement.replicas}
        while not wanted <= set(self.last_heartbeat):
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(self.last_heartbeat))
                raise SessionError(f"layer nodes {missing} did not report within {timeout_s:.0f}s")
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Job:
    """What the user node runs: prompts x repeats, with sampling and concurrency."""

    prompts: list[str]
    max_new_tokens: int = 32
    sampling: Sampling = Sampling()
    repeats: int = 1
    concurrency: int = 1
    chat: bool = False
    wait_nodes_s: float = 300.0


async def run_job(config: UserConfig, job: Job, *, jsonl: bool = False) -> list[SessionResult]:
    """Serve, wait for the layer nodes, run every session, print tokens as they come."""
    def emit(record: TokenRecord) -> None:
        if jsonl:
            print(json.dumps({"ev": "token", **record.__dict__}), flush=True)

    user = UserNode(config, emit=emit)
    user.log.log("ready", peak_rss_bytes=peak_rss_bytes())
    server = await user.serve()
    results: list[SessionResult] = []
    async with server:
        await user.wait_for_nodes(job.wait_nodes_s)
        semaphore = asyncio.Semaphore(max(1, job.concurrency))
        stream = None if jsonl or job.concurrency > 1 else (lambda piece: print(piece, end="", flush=True))

        async def one(index: int, prompt: str, repeat: int) -> SessionResult:
            async with semaphore:
                if jsonl:
                    print(json.dumps({"ev": "session_start", "prompt_index": index, "repeat": repeat}), flush=True)
                res = await user.generate(prompt, max_new_tokens=job.max_new_tokens, sampling=job.sampling,
                                          prompt_index=index, repeat=repeat, stream=stream, chat=job.chat)
                if stream:
                    print(flush=True)
                if jsonl:
                    print(json.dumps({"ev": "session_end", "prompt_index": index, "repeat": repeat,
                                      "session": res.session, "text": res.text, "error": res.error}), flush=True)
                return res

        tasks = [one(i, p, r) for r in range(job.repeats) for i, p in enumerate(job.prompts)]
        results = list(await asyncio.gather(*tasks))
    user.log.log("stop", peak_rss_bytes=peak_rss_bytes())
    return results


def prewarm(argv: list[str]) -> None:
    """Import the tokenizer and model family code without starting anything (the local testbed forks after this)."""
    import tokenizers  # noqa: F401  (the fast tokenizer's library)
    from transformers import AutoTokenizer  # noqa: F401

    model_config(UserConfig.load(_parser().parse_args(argv).config).node.model_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="JARVIS end-user node: enter prompts, stream the answers")
    parser.add_argument("--config", required=True, help="user node config JSON written by deploy")
    parser.add_argument("--job", help="job JSON (prompts, max_new_tokens, sampling, repeats, concurrency)")
    parser.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--jsonl", action="store_true", help="print token events as JSON lines (for orchestration)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(compute_threads())
    if args.job:
        data = json.loads(Path(args.job).read_text())
        job = Job(prompts=list(data["prompts"]), max_new_tokens=int(data.get("max_new_tokens", 32)),
                  sampling=Sampling(**data.get("sampling", {})), repeats=int(data.get("repeats", 1)),
                  concurrency=int(data.get("concurrency", 1)), chat=bool(data.get("chat", False)),
                  wait_nodes_s=float(data.get("wait_nodes_s", 300)))
    elif args.prompt:
        job = Job(prompts=args.prompt, max_new_tokens=args.max_new_tokens)
    else:
        parser.error("give --prompt or --job")
    results = asyncio.run(run_job(UserConfig.load(args.config), job, jsonl=args.jsonl))
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"[user] session {r.session} failed: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
