"""Synthetic run directories that follow docs/run-directory.md, with known answers.

Tests and benchmarks need runs whose right answers are known without a model or a
testbed.  ``write_run`` simulates a chain 0 -> 1 -> ... -> N -> 0 in true time, gives
every host its own wall-clock offset and monotonic origin, stamps what each host would
have logged, and returns the ``Truth`` an analysis must recover: clock offsets,
detection and reroute latencies, degraded tokens, lost layers and where each session's
tokens diverge from a fault-free run of the same spec.

The token model makes quality checkable: a token depends only on (prompt, step), and
changes whenever a layer is skipped, so a run and its fault-free twin agree exactly up
to the first degraded token.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

T0_NS = 1_760_000_000_000_000_000  # true time of the run start (wall clock of the control host)
PROMPT_POSITIONS = 8
HIDDEN_BYTES = 2560  # bytes per position of a 640-wide fp32 hidden state
HEADER_BYTES = 64
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # compact, like payload/events.py; built once
VOCAB = (" the", " model", ",", "\n", ' "edge"', " node", ".", " layer", " JARVIS", " it's", "\t", " 42")


@dataclass(frozen=True)
class Profile:
    """An access link: one-way delay and jitter in ms, rate in Mbit/s."""

    name: str
    delay_ms: float
    jitter_ms: float
    rate_mbit: float


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
    data_plane_events: bool = True
    run_id: str | None = None


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
    """Mutable state of one simulation: the clocks, the chain, and the rows being logged."""

    spec: Spec
    rng: np.random.Generator
    offsets: dict[int, int]
    placement: dict[int, tuple[int, ...]]
    names: dict[int, str]
    dead: set[int] = field(default_factory=set)
    out: set[int] = field(default_factory=set)
    tokens: list[list] = field(default_factory=list)
    hops: list[list] = field(default_factory=list)
    faults: list[list] = field(default_factory=list)
    events: dict[int, list[str]] = field(default_factory=dict)
    detections: dict[int, int] = field(default_factory=dict)  # killed node -> true detection time

    def wall(self, node: int, true_ns: int) -> int:
        return true_ns + self.offsets[node]

    def mono(self, node: int, true_ns: int) -> int:
        return true_ns - T0_NS + (node + 1) * 10**12  # each host's monotonic clock has its own origin

    def log(self, node: int, ev: str, true_ns: int, **fields: object) -> None:
        record = {"ev": ev, "node": node, "wall_ns": self.wall(node, true_ns), "mono_ns": self.mono(node, true_ns),
                  **fields}
        self.events[node].append(_ENCODE(record))

    def profile(self, node: int) -> Profile:
        return PROFILES[self.spec.profiles[node % len(self.spec.profiles)]]


def token_id(prompt: int, step: int, degraded: bool) -> int:
    """The synthetic model: a token per (prompt, step), shifted whenever layers were skipped."""
    return (prompt * 7919 + step * 104729 + (1 if degraded else 0)) % 50_000


def write_run(path: str | Path, spec: Spec = Spec()) -> Truth:
    """Write a complete run directory at ``path`` (created) and return its known answers."""
    path = Path(path)
    run_id = spec.run_id or path.name
    sim = _new_sim(spec)
    sessions = [(p, r) for p in range(spec.prompts) for r in range(spec.repeats)]
    now = T0_NS + 50_000_000
    for node in sim.names:
        sim.log(node, "start", T0_NS + node * 1000)
        sim.log(node, "ready", T0_NS + 10_000_000 + node * 1000)
    kill_truth = []
    for number, (prompt, repeat) in enumerate(sessions):
        session = f"p{prompt}-r{repeat}"
        epoch = 0
        for step in range(spec.tokens):
            now, epoch = _step(sim, session, prompt, repeat, step, epoch, now)
            for kill in spec.kills:
                if kill.session == number and kill.token == step:
                    now = _kill(sim, kill, session, step, now, kill_truth)
        sim.log(0, "session_end", now, session=session)
        now += 5_000_000
    for node in sim.names:
        if node not in sim.dead:
            sim.log(node, "stop", now + node * 1000)
    _write_files(path, sim, run_id, sessions, now)
    return _truth(sim, run_id, kill_truth)


def _new_sim(spec: Spec) -> _Sim:
    if spec.nodes < 1 or spec.layers < spec.nodes:
        raise ValueError(f"need 1 <= nodes <= layers, got nodes={spec.nodes}, layers={spec.layers}")
    defaults = [0.0] + [3.0 * k - 7.0 for k in range(1, spec.nodes + 1)]
    offsets_ms = list(spec.clock_offsets_ms) + defaults[len(spec.clock_offsets_ms):]
    bounds = np.linspace(0, spec.layers, spec.nodes + 1).round().astype(int)
    placement = {k: tuple(range(bounds[k - 1], bounds[k])) for k in range(1, spec.nodes + 1)}
    names = {0: "user", **{k: f"node{k}" for k in range(1, spec.nodes + 1)}}
    return _Sim(
        spec=spec, rng=np.random.default_rng(spec.seed),
        offsets={k: round(offsets_ms[k] * 1e6) for k in names}, placement=placement, names=names,
        events={k: [] for k in names},
    )


def _step(sim: _Sim, session: str, prompt: int, repeat: int, step: int, epoch: int, now: int) -> tuple[int, int]:
    """Simulate one generation step (re-sending after a failure); return the next start time and epoch."""
    positions = PROMPT_POSITIONS if step == 0 else 1
    size = HEADER_BYTES + positions * HIDDEN_BYTES
    first_send = None
    attempts = 0
    while True:
        attempts += 1
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
            ready = _hop(sim, session, step, epoch, src, dst, positions, size, serialize, t1, draw)
        if failed is None:
            break
        now = _detect(sim, session, step, epoch, *failed)
        epoch += 1
    emit = ready + 1_500_000  # head and sampling at the user node
    degraded = bool(sim.out)
    layers = sorted(layer for k in route[1:-1] for layer in sim.placement[k])
    tid = token_id(prompt, step, degraded)
    sim.tokens.append([
        session, prompt, repeat, step, tid, VOCAB[tid % len(VOCAB)], sim.wall(0, emit), sim.mono(0, emit),
        emit - first_send, " ".join(map(str, layers)), " ".join(map(str, route)), epoch, attempts,
        " ".join(map(str, sorted(sim.out))),
    ])
    if sim.spec.data_plane_events:
        sim.log(0, "token", emit, session=session, step=step, token_id=tid)
    return emit + 200_000, epoch


def _hop(sim: _Sim, session: str, step: int, epoch: int, src: int, dst: int, positions: int, size: int,
         serialize: int, t1: int, draw: np.ndarray) -> int:
    """Deliver one frame src -> dst and its ack; log the hop; return when dst is ready to forward."""
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
    row = [session, step, epoch, src, dst, positions, size, w1, w2, w3, w4, sim.mono(src, t1), sim.mono(src, t4),
           (w4 - w1) - (w3 - w2), serialize, queue, compute]
    sim.hops.append(row)
    if sim.spec.data_plane_events:
        _data_plane(sim, row, t2, t2 + queue)
    return t2 + queue + compute


def _data_plane(sim: _Sim, row: list, received: int, start: int) -> None:
    """Log send, recv, ack (and compute) of the hop in hops.csv ``row``; true times of receive and compute start.

    Formatted directly instead of through json: these four lines per hop dominate synthesis
    time, and every value is an int or a generated session id (nothing JSON would escape).
    """
    session, step, epoch, src, dst, positions, size, w1, w2, w3, w4, m1, m4, _, _, _, compute = row
    sim.events[src].append(f'{{"ev":"send","node":{src},"wall_ns":{w1},"mono_ns":{m1},'
                           f'"dst":{dst},"bytes":{size}}}')
    sim.events[dst].append(f'{{"ev":"recv","node":{dst},"wall_ns":{w2},"mono_ns":{sim.mono(dst, received)},'
                           f'"session":"{session}","step":{step},"epoch":{epoch},"src":{src},"bytes":{size},'
                           f'"positions":{positions}}}')
    sim.events[src].append(f'{{"ev":"ack","node":{src},"wall_ns":{w4},"mono_ns":{m4},"dst":{dst},'
                           f'"t1":{w1},"t2":{w2},"t3":{w3},"t4":{w4}}}')
    if dst != 0:
        end = start + compute
        layers = ",".join(map(str, sim.placement[dst]))
        sim.events[dst].append(f'{{"ev":"compute","node":{dst},"wall_ns":{sim.wall(dst, end)},'
                               f'"mono_ns":{sim.mono(dst, end)},"session":"{session}","step":{step},'
                               f'"layers":[{layers}],"start_mono_ns":{sim.mono(dst, start)},'
                               f'"end_mono_ns":{sim.mono(dst, end)}}}')


def _detect(sim: _Sim, session: str, step: int, epoch: int, src: int, dst: int, sent: int) -> int:
    """``src`` times out on dead ``dst``; the user node reroutes around it.  Return the re-send time."""
    kill = next(k for k in sim.spec.kills if k.node == dst)
    detected = sent + round(kill.detect_ms * 1e6)
    sim.detections.setdefault(dst, sim.wall(src, detected))
    sim.log(src, "peer_failed", detected, peer=dst, reason="ack timeout", detect_ns=round(kill.detect_ms * 1e6))
    sim.out.add(dst)
    resend = detected + 1_000_000
    sim.log(0, "reroute", resend, session=session, step=step, epoch=epoch + 1, nodes_out=sorted(sim.out))
    sim.log(0, "replay", resend, session=session, step=step, epoch=epoch + 1)
    return resend


def _kill(sim: _Sim, kill: Kill, session: str, step: int, now: int, kill_truth: list) -> int:
    """Fire ``kill`` after the token just emitted; the next step starts once it is in effect."""
    requested = now + 300_000
    effective = requested + 2_000_000
    sim.dead.add(kill.node)
    sim.faults.append([
        "kill", sim.names[kill.node], f"token:{kill.token}", session, step, requested, effective,
        effective - T0_NS + 10**15, "SIGKILL",
    ])
    kill_truth.append((kill, session, effective, len(sim.tokens)))
    return effective + 500_000


def _truth(sim: _Sim, run_id: str, kill_truth: list) -> Truth:
    detection, reroute, degraded, lost = [], [], [], []
    for kill, session, effective, first_row in kill_truth:
        later = sim.tokens[first_row:]
        detection.append(sim.detections[kill.node] - effective)
        in_session = [row for row in later if row[0] == session]
        reroute.append(in_session[0][6] - effective if in_session else None)
        degraded.append(sum(1 for row in later if str(kill.node) in row[13].split()))
        lost.append(sim.placement[kill.node] if degraded[-1] else ())
    divergence: dict[str, int | None] = {}
    for row in sim.tokens:  # the first token made with a node out is the first to differ
        divergence.setdefault(row[0], None)
        if row[13] and divergence[row[0]] is None:
            divergence[row[0]] = row[3]
    return Truth(run_id, dict(sim.offsets), tuple(detection), tuple(reroute), tuple(degraded), tuple(lost), divergence)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _write_files(path: Path, sim: _Sim, run_id: str, sessions: list[tuple[int, int]], end: int) -> None:
    spec = sim.spec
    path.mkdir(parents=True, exist_ok=True)
    _write_csv(path / "tokens.csv", ["session", "prompt_index", "repeat", "step", "token_id", "text", "t_emit_ns",
                                     "t_emit_mono_ns", "latency_ns", "layers", "route", "epoch", "attempts",
                                     "nodes_out"], sim.tokens)
    _write_csv(path / "hops.csv", ["session", "step", "epoch", "src", "dst", "positions", "bytes", "t1_wall_ns",
                                   "t2_wall_ns", "t3_wall_ns", "t4_wall_ns", "t1_mono_ns", "t4_mono_ns", "rtt_ns",
                                   "serialize_ns", "queue_ns", "compute_ns"], sim.hops)
    _write_csv(path / "faults.csv", ["action", "target", "trigger", "session", "step", "requested_wall_ns",
                                     "effective_wall_ns", "effective_mono_ns", "detail"], sim.faults)
    _write_csv(path / "nodes.csv", ["index", "name", "address", "layers", "replicas", "profile", "peak_rss_bytes"], [
        [k, name, f"10.0.0.{k + 1}", " ".join(map(str, sim.placement.get(k, ()))), "", sim.profile(k).name,
         "" if k in sim.dead else 400_000_000 + k * 1000]
        for k, name in sim.names.items()
    ])
    _write_csv(path / "links.csv", ["node", "name", "direction", "profile", "delay_ms", "jitter_ms", "loss_pct",
                                    "rate_mbit", "queue_pkts"], [
        [k, name, direction, p.name, p.delay_ms, p.jitter_ms, 0.0, p.rate_mbit, 1000]
        for k, name in sim.names.items() for p in [sim.profile(k)] for direction in ("egress", "ingress")
    ])
    for node, lines in sim.events.items():
        log = path / "nodes" / sim.names[node] / "events.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    scenario = {
        "name": "synthetic", "model": "synthetic", "nodes": spec.nodes, "layers": spec.layers,
        "prompts": [f"prompt {p}" for p in range(spec.prompts)], "repeats": spec.repeats,
        "max_new_tokens": spec.tokens, "profiles": list(spec.profiles), "seed": spec.seed,
        "faults": [{"action": "kill", "target": sim.names[k.node], "trigger": f"token:{k.token}"} for k in spec.kills],
    }
    (path / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    hosts = [{"name": name, "index": k, "address": f"10.0.0.{k + 1}", "ssh": None, "namespace": None,
              "profile": sim.profile(k).name} for k, name in sim.names.items()]
    _write_json(path / "testbed.json", {"kind": "synthetic", "hosts": hosts, "shaping": "none"})
    _write_json(path / "versions.json", {"python": "synthetic", "torch": None, "transformers": None,
                                         "jarvis": "synthetic", "git_commit": None})
    _write_json(path / "summary.json", {
        "run_id": run_id, "scenario": "synthetic", "model": "synthetic", "testbed": "synthetic",
        "nodes": spec.nodes, "layers_per_node": [len(sim.placement[k]) for k in sim.placement], "complete": True,
        "started_wall_ns": T0_NS, "ended_wall_ns": end,
        "sessions": [{"session": f"p{p}-r{r}", "prompt": f"prompt {p}", "error": None} for p, r in sessions],
        "peak_rss_bytes": {}, "faults": len(sim.faults),
    })


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
