"""Synthetic run directories with known answers, made the way real runs are: events, then collection.

Tests and benchmarks need runs whose right answers are known without a model or a
testbed.  ``write_run`` simulates a chain 0 -> 1 -> ... -> N -> 0 in true time, gives
every host its own wall-clock offset and monotonic origin, and logs what each node
would have logged through the nodes' own event writer (:class:`payload.events.EventLog`,
checked against the schema), stamped with the simulated clocks.  The run directory is
then written by the same collection code as a real run's (:func:`experiment.collect.write_tables`),
and ``write_run`` returns the ``Truth`` an analysis must recover: clock offsets,
detection and reroute latencies, degraded tokens, lost layers and where each session's
tokens diverge from a fault-free run of the same spec.

The token model makes quality checkable: a token depends only on (prompt, step), and
changes whenever a layer is skipped, so a run and its fault-free twin agree exactly up
to the first degraded token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiment.collect import publish, start_partial, write_tables
from experiment.deploy import Deployment
from payload.events import EventLog
from payload.routing import explicit_placement

T0_NS = 1_760_000_000_000_000_000  # true time of the run start (wall clock of the control host)
PROMPT_POSITIONS = 8
HIDDEN_BYTES = 2560  # bytes per position of a 640-wide fp32 hidden state
HEADER_BYTES = 64
VOCAB = (" the", " model", ",", "\n", ' "edge"', " node", ".", " layer", " JARVIS", " it's", "\t", " 42")
VERSIONS = {"python": "synthetic", "torch": None, "transformers": None, "jarvis_commit": None, "platform": "synthetic"}


@dataclass(frozen=True)
class Profile:
    """An access link: one-way delay and jitter in ms, rate in Mbit/s."""

    name: str
    delay_ms: float
    jitter_ms: float
    rate_mbit: float

    def link(self) -> dict:
        """The link as a testbed describes it (per direction), for links.csv."""
        direction = {"delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms, "distribution": "normal",
                     "loss_pct": 0.0, "rate_mbit": self.rate_mbit, "queue_pkts": 1000}
        return {"name": self.name, "source": "synthetic", "uplink": direction, "downlink": dict(direction)}


PROFILES = {
    "wifi": Profile("wifi", 4.0, 1.0, 30.0),
    "lte": Profile("lte", 20.0, 4.0, 10.0),
    "server": Profile("server", 0.2, 0.05, 1000.0),
}


@dataclass(frozen=True)
class Kill:
    """Kill layer node ``node`` right after token ``token`` of the session numbered ``session`` (0-based)."""

    node: int
    token: int
    session: int = 0
    detect_ms: float = 250.0


@dataclass(frozen=True)
class Spec:
    """What to simulate.  ``profiles`` is cycled over node indices 0..N.

    ``clock_offsets_ms`` gives each host's wall-clock offset (index 0 = user node); the
    default leaves the user node on the control host's clock and puts node k at 3k - 7 ms.
    """

    nodes: int = 3
    layers: int = 6
    prompts: int = 1
    repeats: int = 1
    tokens: int = 16
    profiles: tuple[str, ...] = ("wifi",)
    clock_offsets_ms: tuple[float, ...] = ()
    kills: tuple[Kill, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Truth:
    """Answers an analysis of the written run must reproduce (ns, node indices, layer indices)."""

    run_id: str
    clock_offsets_ns: dict[int, int]
    detection_ns: tuple[int, ...]
    reroute_ns: tuple[int | None, ...]
    degraded_tokens: tuple[int, ...]
    layers_lost: tuple[tuple[int, ...], ...]
    first_divergence: dict[str, int | None]


@dataclass
class _Sim:
    """Mutable state of one simulation: the clocks, the chain, each node's event log, the ground truth."""

    spec: Spec
    rng: np.random.Generator
    offsets: dict[int, int]
    placement: dict[int, tuple[int, ...]]
    names: dict[int, str]
    logs: dict[int, EventLog] = field(default_factory=dict)
    stamp: tuple[int, int] = (0, 0)  # the clock every log reads: set to the simulated time before each event
    dead: set[int] = field(default_factory=set)
    out: set[int] = field(default_factory=set)
    tokens: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    detections: dict[int, int] = field(default_factory=dict)  # killed node -> true detection time

    def wall(self, node: int, true_ns: int) -> int:
        return true_ns + self.offsets[node]

    def mono(self, node: int, true_ns: int) -> int:
        return true_ns - T0_NS + (node + 1) * 10**12  # each host's monotonic clock has its own origin

    def log(self, node: int, ev: str, true_ns: int, **fields: object) -> None:
        self.stamp = (self.wall(node, true_ns), self.mono(node, true_ns))
        self.logs[node].log(ev, **fields)

    def profile(self, node: int) -> Profile:
        return PROFILES[self.spec.profiles[node % len(self.spec.profiles)]]


def token_id(prompt: int, step: int, degraded: bool) -> int:
    """The synthetic model: a token per (prompt, step), shifted whenever layers were skipped."""
    return (prompt * 7919 + step * 104729 + (1 if degraded else 0)) % 50_000


def write_run(path: str | Path, spec: Spec = Spec()) -> Truth:
    """Write a complete run directory at ``path`` (replaced if it exists) and return its known answers."""
    path = Path(path)
    partial = start_partial(path)
    sim = _new_sim(spec, partial)
    sessions = [(p, r) for p in range(spec.prompts) for r in range(spec.repeats)]
    now = T0_NS + 50_000_000
    for node in sim.names:
        if node:
            sim.log(node, "start", T0_NS + node * 1000, peak_rss_bytes=300_000_000 + node * 1000)
        sim.log(node, "ready", T0_NS + 10_000_000 + node * 1000, peak_rss_bytes=400_000_000 + node * 1000)
    kill_truth = []
    for number, (prompt, repeat) in enumerate(sessions):
        session = f"p{prompt}-r{repeat}"
        sim.log(0, "session_start", now, session=session, prompt_index=prompt, repeat=repeat,
                prompt_tokens=PROMPT_POSITIONS, prompt_ids=list(range(1, PROMPT_POSITIONS + 1)))
        epoch, emitted = 0, []
        for step in range(spec.tokens):
            now, epoch, text = _step(sim, session, prompt, repeat, step, epoch, now)
            emitted.append(text)
            for kill in spec.kills:
                if kill.session == number and kill.token == step:
                    now = _kill(sim, kill, session, step, now, kill_truth)
        sim.log(0, "session_end", now, session=session, tokens=spec.tokens, error=None, text="".join(emitted))
        now += 5_000_000
    for node in sim.names:
        if node not in sim.dead:
            sim.log(node, "stop", now + node * 1000, peak_rss_bytes=400_000_000 + node * 1000)
    for log in sim.logs.values():
        log.close()
    deployment = _deployment(sim)
    scenario = {"name": "synthetic", "model": "synthetic", "nodes": spec.nodes, "layers": spec.layers,
                "prompts": [f"prompt {p}" for p in range(spec.prompts)], "repeats": spec.repeats,
                "max_new_tokens": spec.tokens, "profiles": list(spec.profiles), "seed": spec.seed,
                "faults": [{"action": "kill", "node": k.node, "at_token": k.token} for k in spec.kills]}
    write_tables(partial, deployment, testbed_desc={"kind": "synthetic", "shaping": "none (synthetic run)",
                                                    "hosts": deployment.hosts},
                 versions_info=VERSIONS, faults=sim.faults, scenario=scenario, started_wall_ns=T0_NS, complete=True,
                 user_exit=0)
    publish(partial, path)
    return _truth(sim, path.name, kill_truth)


def _new_sim(spec: Spec, run: Path) -> _Sim:
    if spec.nodes < 1 or spec.layers < spec.nodes:
        raise ValueError(f"need 1 <= nodes <= layers, got nodes={spec.nodes}, layers={spec.layers}")
    defaults = [0.0] + [3.0 * k - 7.0 for k in range(1, spec.nodes + 1)]
    offsets_ms = list(spec.clock_offsets_ms) + defaults[len(spec.clock_offsets_ms):]
    bounds = np.linspace(0, spec.layers, spec.nodes + 1).round().astype(int)
    placement = {k: tuple(range(bounds[k - 1], bounds[k])) for k in range(1, spec.nodes + 1)}
    names = {0: "user", **{k: f"node{k}" for k in range(1, spec.nodes + 1)}}
    sim = _Sim(spec=spec, rng=np.random.default_rng(spec.seed),
               offsets={k: round(offsets_ms[k] * 1e6) for k in names}, placement=placement, names=names)
    sim.logs = {k: EventLog(run / "nodes" / name / "events.jsonl", k, clock=lambda: sim.stamp)
                for k, name in names.items()}
    return sim


def _deployment(sim: _Sim) -> Deployment:
    placement = explicit_placement(sim.spec.layers, [(p[0], p[-1] + 1) for p in sim.placement.values()])
    hosts = [{"name": name, "index": k, "address": f"10.0.0.{k + 1}", "workdir": "", "ssh_host": None,
              "ssh_port": None, "ssh_user": None, "namespace": None, "profile": sim.profile(k).name,
              "extra": {"link": sim.profile(k).link()}} for k, name in sim.names.items()]
    return Deployment(testbed="synthetic", model="synthetic", prepared="", placement=placement.to_dict(),
                      policy="skip", hosts=hosts)


def _step(sim: _Sim, session: str, prompt: int, repeat: int, step: int, epoch: int, now: int
          ) -> tuple[int, int, str]:
    """Simulate one generation step (re-sending after a failure); return the next start time, epoch, token text."""
    positions = PROMPT_POSITIONS if step == 0 else 1
    pos_start = 0 if step == 0 else PROMPT_POSITIONS + step - 1
    size = HEADER_BYTES + positions * HIDDEN_BYTES
    first_send = None
    attempts = 0
    while True:
        attempts += 1
        epoch += 1
        route = [0] + [k for k in sim.placement if k not in sim.out] + [0]
        ready, failed = now, None
        for src, dst in zip(route, route[1:]):
            draw = sim.rng.random(5)
            serialize = 150_000 + size * 2 + int(draw[0] * 50_000)
            t1 = ready + serialize
            first_send = t1 if first_send is None else first_send
            if dst in sim.dead:
                failed = (src, dst, t1)
                break
            ready = _hop(sim, session, step, epoch, src, dst, positions, pos_start, size, serialize, t1, draw)
        if failed is None:
            break
        now = _detect(sim, session, step, epoch, *failed)
    emit = ready + 1_500_000  # head and sampling at the user node
    degraded = bool(sim.out)
    layers = sorted(layer for k in route[1:-1] for layer in sim.placement[k])
    tid = token_id(prompt, step, degraded)
    text = VOCAB[tid % len(VOCAB)]
    record = dict(session=session, prompt_index=prompt, repeat=repeat, step=step, token_id=tid, text=text,
                  t_emit_ns=sim.wall(0, emit), t_emit_mono_ns=sim.mono(0, emit), latency_ns=emit - first_send,
                  layers=" ".join(map(str, layers)), route=" ".join(map(str, route)), epoch=epoch, attempts=attempts,
                  nodes_out=" ".join(map(str, sorted(sim.out))), rebuilt="", bridges="", chunks="", head_batch="")
    sim.tokens.append(record)
    sim.log(0, "token", emit, **record)
    return emit + 200_000, epoch, text


def _hop(sim: _Sim, session: str, step: int, epoch: int, src: int, dst: int, positions: int, pos_start: int,
         size: int, serialize: int, t1: int, draw: np.ndarray) -> int:
    """Deliver one frame src -> dst and its ack; log recv, compute and ack; return when dst is ready to forward."""
    a, b = sim.profile(src), sim.profile(dst)
    base_ms = a.delay_ms + b.delay_ms
    jitter_ms = (a.jitter_ms + b.jitter_ms) / 2
    rate = min(a.rate_mbit, b.rate_mbit) * 1e6 / 8  # bytes per second
    forward = round((base_ms + jitter_ms * draw[1]) * 1e6 + size / rate * 1e9)
    back = round((base_ms + jitter_ms * draw[2]) * 1e6 + HEADER_BYTES / rate * 1e9)
    t2 = t1 + forward
    t3 = t2 + 30_000  # the ack leaves as soon as the frame is in
    t4 = t3 + back
    queue = 20_000 + int(draw[3] * 180_000)
    compute = 0 if dst == 0 else round(len(sim.placement[dst]) * (2e6 + 5e4 * positions) * (0.9 + 0.2 * draw[4]))
    w1, w2, w3, w4 = sim.wall(src, t1), sim.wall(dst, t2), sim.wall(dst, t3), sim.wall(src, t4)
    frame = dict(session=session, step=step, epoch=epoch)
    sim.log(dst, "recv", t2, **frame, src=src, positions=positions, pos_start=pos_start, replay_len=0,
            bytes=size - HEADER_BYTES, t2_wall_ns=w2, t3_wall_ns=w3)
    start = t2 + queue
    if dst != 0:
        end = start + compute
        sim.log(dst, "compute", end, **frame, src=src, layers=list(sim.placement[dst]), positions=positions,
                pos_start=pos_start,
                start_mono_ns=sim.mono(dst, start), end_mono_ns=sim.mono(dst, end), queue_ns=queue,
                compute_ns=compute)
    sim.log(src, "ack", t4, **frame, src=src, dst=dst, positions=positions, pos_start=pos_start, bytes=size,
            serialize_ns=serialize,
            t1_wall_ns=w1, t1_mono_ns=sim.mono(src, t1), t2_wall_ns=w2, t3_wall_ns=w3, t4_wall_ns=w4,
            t4_mono_ns=sim.mono(src, t4), rtt_ns=(w4 - w1) - (w3 - w2))
    return start + compute


def _detect(sim: _Sim, session: str, step: int, epoch: int, src: int, dst: int, sent: int) -> int:
    """``src`` times out on dead ``dst``; the user node marks it out and re-sends.  Return the re-send time."""
    kill = next(k for k in sim.spec.kills if k.node == dst)
    detected = sent + round(kill.detect_ms * 1e6)
    sim.detections.setdefault(dst, sim.wall(src, detected))
    reason = f"no ack within {kill.detect_ms:.0f} ms"
    if src != 0:  # a layer node reports its successor; the user node sees its first hop fail itself
        sim.log(src, "peer_failed", detected, peer=dst, kind="silent", reason=reason, session=session, step=step,
                epoch=epoch)
    resend = detected + 1_000_000
    if dst not in sim.out:
        sim.log(0, "node_out", resend, peer=dst, kind="silent", reason=reason, reporter=src,
                critical=dst in (1, sim.spec.nodes), layers=list(sim.placement[dst]))
    sim.out.add(dst)
    sim.log(0, "retry", resend, session=session, step=step, epoch=epoch, peer=dst, kind="silent", reason=reason)
    return resend


def _kill(sim: _Sim, kill: Kill, session: str, step: int, now: int, kill_truth: list) -> int:
    """Fire ``kill`` after the token just emitted; the next step starts once it is in effect."""
    requested = now + 300_000
    effective = requested + 2_000_000
    sim.dead.add(kill.node)
    sim.faults.append({"action": "kill", "target": sim.names[kill.node], "trigger": f"token:{kill.token}",
                       "session": session, "step": step, "requested_wall_ns": requested,
                       "effective_wall_ns": effective, "effective_mono_ns": effective - T0_NS + 10**15,
                       "detail": "SIGKILL"})
    kill_truth.append((kill, session, effective, len(sim.tokens)))
    return effective + 500_000


def _truth(sim: _Sim, run_id: str, kill_truth: list) -> Truth:
    detection, reroute, degraded, lost = [], [], [], []
    for kill, session, effective, first_row in kill_truth:
        later = sim.tokens[first_row:]
        detection.append(sim.detections[kill.node] - effective)
        in_session = [row for row in later if row["session"] == session]
        reroute.append(in_session[0]["t_emit_ns"] - effective if in_session else None)
        degraded.append(sum(1 for row in later if str(kill.node) in row["nodes_out"].split()))
        lost.append(sim.placement[kill.node] if degraded[-1] else ())
    divergence: dict[str, int | None] = {}
    for row in sim.tokens:  # the first token made with a node out is the first to differ
        divergence.setdefault(row["session"], None)
        if row["nodes_out"] and divergence[row["session"]] is None:
            divergence[row["session"]] = row["step"]
    return Truth(run_id, dict(sim.offsets), tuple(detection), tuple(reroute), tuple(degraded), tuple(lost), divergence)
