"""The consistency oracle: replay a run's tokens through the monolithic model.

For each step of a session, apply exactly the decoder layers that tokens.csv
records for that step, in route order, rounding hidden states to the wire
dtype of the sending node at every node boundary as the chain did.  Each layer keeps its own KV
cache holding only the positions of steps where it ran; layers listed in
``rebuilt`` have their cache rebuilt from the previous hop's history, as the
chain replays it: the output of the last layer applied before them at every
earlier position, followed by the step's own positions, in one forward (as the
rebuilding node computes them).  Spans listed in ``bridges`` are not computed but
bridged (:mod:`payload.bridges`) on exactly what the chain bridged: the step's
positions, the last position only before the head, or the whole history when
the hop after the gap rebuilds.  A decode step a node computed in a batch of other sessions' steps
(``batch_decode``: the ``batch`` of its ``compute`` event; ``head_batch`` for the user node's head) is
replayed as the same row of a batch of the same size, the other rows zeros: a row's sums depend on the
batch's shape and its place in it, not on the other rows.  The replay must reproduce the recorded token ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from payload.bridges import BridgeSet, bridge_wire, load_bridges, parse_spans
from payload.config import compute_threads
from payload.events import read_events
from payload.frames import WireDtype
from payload.prepare import sha256_file
from payload.routing import Placement
from payload.schema import TABLES, RunDirError
from payload.slices import Head, LayerSlice, ModelSpec, SessionCache
from payload.tensors import to_wire


@dataclass
class ReplayResult:
    session: str
    expected: list[int]
    replayed: list[int]
    kl: list[float] | None = None  # per step: KL(full model || chain) of the next-token distribution, in nats

    @property
    def ok(self) -> bool:
        return self.expected == self.replayed

    @property
    def first_mismatch(self) -> int | None:
        return next((i for i, (a, b) in enumerate(zip(self.expected, self.replayed)) if a != b), None)


class Monolith:
    """Every layer of a prepared model in one process, one single-layer slice each."""

    def __init__(self, prepared: Path, compute_dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer

        self.spec = ModelSpec(prepared)
        self.head = Head(self.spec, compute_dtype)
        self.layers = [LayerSlice.load(self.spec, i, i + 1, compute_dtype) for i in range(self.spec.num_layers)]
        self.tokenizer = AutoTokenizer.from_pretrained(prepared)


def _node_layers(nodes_csv: pd.DataFrame) -> dict[int, tuple[int, int]]:
    out = {}
    for row in nodes_csv.itertuples():
        if row.index and isinstance(row.layers, str) and row.layers.strip():
            ids = [int(x) for x in row.layers.split()]
            out[int(row.index)] = (ids[0], ids[-1] + 1)
    return out


def _contiguous_runs(layers: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for layer in layers:
        if runs and runs[-1][-1] == layer - 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


def _owners(route: object, layers: list[int], ranges: dict[int, list[tuple[int, int]]]) -> dict[int, int]:
    """Which node applied each of a step's ``layers``: the route's hops in order, each one range it holds."""
    nodes = [int(x) for x in route.split()][1:-1] if isinstance(route, str) else []
    pending, at, owners = sorted(layers), 0, {}
    for node in nodes:
        if at == len(pending):
            break
        span = next(((a, b) for a, b in ranges.get(node, []) if a <= pending[at] < b), None)
        if span is None:
            raise ValueError(f"route {route!r} visits node {node} for layer {pending[at]}, which it does not hold")
        while at < len(pending) and span[0] <= pending[at] < span[1]:
            owners[pending[at]] = node
            at += 1
    if at < len(pending):
        raise ValueError(f"route {route!r} does not reach layers {pending[at:]} that the step applied")
    return owners


# (step, first position) -> layer -> (rows, place) of the batch a node computed that layer in, for one session.
Batches = dict[tuple[int, int], dict[int, tuple[int, int]]]


def node_batches(run_dir: Path, nodes_csv: pd.DataFrame, tokens: pd.DataFrame) -> dict[str, Batches]:
    """Per session, the batches its decode steps were computed in (``compute`` events with ``batch``), from
    the attempt its token came from: the latest epoch at or before the token's."""
    final = {(r.session, int(r.step)): int(r.epoch) for r in tokens.itertuples()}
    found: dict[str, dict[tuple[int, int], dict[int, tuple[int, int, int]]]] = {}
    for row in nodes_csv.itertuples():
        log = run_dir / "nodes" / str(row.name) / "events.jsonl"
        if not row.index or not log.is_file():
            continue
        for event in read_events(log):
            if event["ev"] != "compute" or "batch" not in event:
                continue
            epoch, ceiling = int(event["epoch"]), final.get((event["session"], int(event["step"])))
            if ceiling is None or epoch > ceiling:
                continue
            rows, place = (int(x) for x in event["batch"])
            per = found.setdefault(event["session"], {}).setdefault(
                (int(event["step"]), int(event.get("pos_start", 0))), {})
            for layer in event["layers"]:
                if int(layer) not in per or per[int(layer)][0] <= epoch:
                    per[int(layer)] = (epoch, rows, place)
    return {sid: {frame: {layer: (rows, place) for layer, (_, rows, place) in layers.items()}
                  for frame, layers in per.items()} for sid, per in found.items()}


def _batch_of(cell: object) -> tuple[int, int] | None:
    """``rows place`` of a head_batch cell, None when the head ran alone."""
    values = _indices(cell)
    return (values[0], values[1]) if values else None


def _as_row(rows: int, place: int, item):
    """Padding around ``item`` at ``place`` in a batch of ``rows`` (what the oracle replays a batched step as)."""
    return [None] * place + [item] + [None] * (rows - place - 1)


def replay_session(model: Monolith, prompt_ids: list[int], steps: pd.DataFrame, slices: dict[int, tuple[int, int]],
                   wires: dict[int, WireDtype], ranges: dict[int, list[tuple[int, int]]],
                   bridges: BridgeSet | None = None, logits: list[torch.Tensor] | None = None,
                   batches: Batches | None = None) -> list[int]:
    """Token ids the monolith produces when each step applies the recorded layers (and bridges); with
    ``logits``, each step's next-token logits are appended to it (the distribution the chain chose from).

    ``wires`` is each node's output dtype (``auto`` gives nodes different ones): what crosses a node boundary
    is rounded to its sender's, the node that applied the last layer before it (the user node before any)."""
    caches = {i: SessionCache.new(model.spec, (i,)) for i in range(model.spec.num_layers)}
    # Wire-rounded output of each layer at every position (None where it did not run): a rebuild replays
    # the history of the hop before it on the route, which is its last layer's output at each position.
    outputs: dict[int, list[torch.Tensor | None]] = {i: [] for i in range(model.spec.num_layers)}
    boundaries = {a for a, _ in slices.values()}
    ids = list(prompt_ids)
    produced: list[int] = []
    positions = 0
    for row in steps.itertuples():
        layers = set(_indices(row.layers))
        owners = _owners(row.route, sorted(layers), ranges)
        wire_of = {layer: wires[node] for layer, node in owners.items()}
        runs = {run[0]: run for run in _contiguous_runs(sorted(_indices(row.rebuilt)))}
        spans = parse_spans(getattr(row, "bridges", ""))
        chunks = _indices(getattr(row, "chunks", "")) or [len(ids) - positions]
        if sum(chunks) != len(ids) - positions:
            raise ValueError(f"step {row.step}'s chunks {chunks} do not add up to its {len(ids) - positions} "
                             "new positions: the run's tokens.csv is inconsistent")
        start = positions
        for size in chunks:  # a chunked prefill: each chunk through every layer, as each node computed them
            batched = (batches or {}).get((int(row.step), start), {})
            hidden, sender = _frame(model, ids, start, start + size, layers, wire_of, wires[0], runs, spans, bridges,
                                    caches, outputs, boundaries, batched)
            start += size
        hidden = to_wire(hidden, sender)
        head_batch = _batch_of(getattr(row, "head_batch", ""))
        if head_batch:
            step_logits = model.head.logits_rows(_as_row(*head_batch, hidden[:, -1:]))[head_batch[1]][0, -1]
        else:
            step_logits = model.head.logits(hidden[:, -1:])[0, -1]
        if logits is not None:
            logits.append(step_logits)
        token = int(torch.argmax(step_logits))
        produced.append(token)
        positions = len(ids)
        ids.append(int(row.token_id))
    return produced


def _frame(model: Monolith, ids: list[int], positions: int, stop: int, layers: set[int],
           wire_of: dict[int, WireDtype], user_wire: WireDtype, runs: dict[int, list[int]], spans: dict[int, int],
           bridges: BridgeSet | None, caches: dict[int, SessionCache], outputs: dict[int, list[torch.Tensor | None]],
           boundaries: set[int], batched: dict[int, tuple[int, int]]) -> tuple[torch.Tensor, WireDtype]:
    """One frame's journey: positions ``[positions, stop)`` of ``ids`` through the step's layers, rebuilds and
    bridges, as the chain computed them; returns the last hidden state and the dtype of the node that sent it."""
    new_ids = ids[positions:stop]
    sender = user_wire  # the dtype of whoever sent what ``hidden`` holds now
    hidden = to_wire(model.head.embed_ids(torch.tensor([new_ids])), sender)
    unbridged: dict[int, tuple[list, torch.Tensor]] = {}  # layer after a gap -> (maps, state before them)
    layer = 0
    while layer < model.spec.num_layers:
        if layer in boundaries:
            hidden = to_wire(hidden, sender)
        if layer in spans:
            end = spans[layer]
            maps = bridges.cover(layer, end) if bridges is not None else None
            if maps is None:
                raise ValueError(f"the run bridged layers {layer}-{end - 1} but no bridges for them were given")
            unbridged[end] = (maps, hidden)
            # The last hop sends the user node its last position only: a gap at the end is bridged on that.
            hidden = bridge_wire(maps, hidden[:, -1:] if end == model.spec.num_layers else hidden, sender)
            for index in range(layer, end):
                outputs[index].extend([None] * len(new_ids))
            layer = end
            continue
        if layer in runs:
            # A rebuilding node gets the previous hop's history and this step's positions in one frame and
            # computes them in one forward: so does the replay (a forward over T+1 positions is not bit for
            # bit a forward over T, then 1).  After a gap the previous hop bridges that whole frame at once.
            run = runs[layer]
            if positions:
                history = _replay_source(model, ids[:positions], outputs, sorted(layers), layer, sender)
                if layer in unbridged:
                    maps, before = unbridged[layer]
                    hidden = bridge_wire(maps, torch.cat([history, before], dim=1), sender)
                else:
                    hidden = torch.cat([history, hidden], dim=1)
            for index in run:
                caches[index] = SessionCache.new(model.spec, (index,))
                outputs[index] = []
            hidden = _apply(model, run, hidden, 0, caches, outputs, boundaries, wire_of)[:, positions:]
            sender = wire_of[run[-1]]
            layer = run[-1] + 1
            continue
        if layer in layers:
            hidden = _apply(model, [layer], hidden, positions, caches, outputs, boundaries, wire_of,
                            batched.get(layer))
            sender = wire_of[layer]
        else:
            outputs[layer].extend([None] * len(new_ids))
        layer += 1
    return hidden, sender


def _indices(cell: object) -> list[int]:
    """The integers of a space-separated index cell (empty cells and NaN give none)."""
    return [int(x) for x in cell.split()] if isinstance(cell, str) else []


def _apply(model: Monolith, run: list[int], hidden: torch.Tensor, start: int, caches: dict[int, SessionCache],
           outputs: dict[int, list[torch.Tensor | None]], boundaries: set[int],
           wire_of: dict[int, WireDtype], batch: tuple[int, int] | None = None) -> torch.Tensor:
    """Apply consecutive layers ``run`` to positions ``start...``, rounding at node boundaries inside the run
    (to the dtype of the node that applied the layer before); ``batch`` (rows, place) replays a decode step a
    node computed in a batch."""
    pos = torch.arange(start, start + hidden.shape[1]).unsqueeze(0)
    for index in run:
        if index in boundaries and index != run[0]:
            hidden = to_wire(hidden, wire_of[index - 1])
        if batch is not None:
            rows, place = batch
            hidden = model.layers[index].forward_rows(_as_row(rows, place, (hidden, start, caches[index])))[place]
        else:
            hidden = model.layers[index].forward(hidden, pos, caches[index])
        caches[index].commit()
        rounded = to_wire(hidden, wire_of[index])
        outputs[index].extend(rounded[:, j:j + 1] for j in range(rounded.shape[1]))
    return hidden


def _replay_source(model: Monolith, ids: list[int], outputs: dict[int, list[torch.Tensor | None]],
                   layers: list[int], first: int, sender: WireDtype) -> torch.Tensor:
    """What the chain replays into rebuilt layers starting at ``first``: the previous hop's history.

    That is the output of the last layer applied before ``first`` at this step,
    at every earlier position (rounded as its node sent it), or the embeddings
    (at ``sender``'s dtype: the user node's) when no layer comes before.
    """
    before = [layer for layer in layers if layer < first]
    if not before:
        return to_wire(model.head.embed_ids(torch.tensor([ids])), sender)
    history = outputs[before[-1]][:len(ids)]
    missing = [p for p, chunk in enumerate(history) if chunk is None]
    if missing:
        raise ValueError(f"layer {before[-1]} never ran at positions {missing[:5]}..., so it has no history "
                         f"to rebuild layer {first} from: the run's tokens.csv is inconsistent")
    return torch.cat(history, dim=1)


def read_table(run_dir: Path, name: str) -> pd.DataFrame:
    """One of the run directory's tables with the schema's columns (a table missing one is refused)."""
    table = TABLES[name]
    frame = pd.read_csv(run_dir / table.file, keep_default_na=False, dtype={c: "str" for c, d in table.dtypes.items()
                                                                            if d == "str"})
    frame = frame.assign(**{c: v for c, v in table.absent.items() if c not in frame.columns})  # an older run
    missing = [c for c in table.names if c not in frame.columns]
    if missing:
        raise RunDirError(f"{run_dir / table.file} lacks column(s) {', '.join(missing)} (payload/schema.py)")
    return frame


def check_run(run_dir: Path, prepared: Path, *, model: Monolith | None = None,
              divergence: bool = False) -> list[ReplayResult]:
    """Replay every session of a greedy run; return per-session expected vs replayed tokens.

    Prompt token ids come from the user node's log (``session_start``), so chat
    templates and tokenizer settings are replayed exactly as the run used them.
    With ``divergence`` each result also holds, per step, the KL divergence of the
    chain's next-token distribution from the full model's on the same prefix (the
    chain's own tokens: teacher forcing), i.e. what the faults cost at each step.
    """
    run_dir = Path(run_dir)
    tokens = read_table(run_dir, "tokens")
    nodes = read_table(run_dir, "nodes")
    deployment = json.loads((run_dir / "deployment.json").read_text())
    wires = run_wire_dtypes(deployment)
    placement = Placement.from_dict(deployment["placement"])
    ranges = {n: placement.ranges_of(n) for n in wires if n != 0}
    user = nodes.loc[nodes["index"] == 0, "name"].iloc[0]
    starts = {e["session"]: e["prompt_ids"] for e in read_events(run_dir / "nodes" / user / "events.jsonl")
              if e["ev"] == "session_start"}
    model = model or Monolith(prepared)
    bridges = run_bridges(deployment, model.spec.hidden_size) if (tokens["bridges"] != "").any() else None
    batches = node_batches(run_dir, nodes, tokens)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(compute_threads())  # the nodes' float sums, bit for bit: a greedy token can hinge on them
    try:
        for sid, steps in tokens.groupby("session", sort=False):
            steps = steps.sort_values("step")
            chain: list[torch.Tensor] | None = [] if divergence else None
            replayed = replay_session(model, starts[sid], steps, _node_layers(nodes), wires, ranges, bridges, chain,
                                      batches.get(str(sid)))
            result = ReplayResult(str(sid), steps["token_id"].astype(int).tolist(), replayed)
            if chain is not None:
                full: list[torch.Tensor] = []
                intact = steps.assign(layers=" ".join(map(str, range(model.spec.num_layers))), rebuilt="", bridges="",
                                      route=" ".join(map(str, [0, *placement.nodes, 0])), head_batch="")
                replay_session(model, starts[sid], intact, _node_layers(nodes), wires, ranges, None, full)
                result.kl = [_kl(p, q) for p, q in zip(full, chain)]
            results.append(result)
    finally:
        torch.set_num_threads(threads)
    return results


def _kl(full: torch.Tensor, chain: torch.Tensor) -> float:
    """KL(softmax(full) || softmax(chain)) in nats, from logits."""
    log_p, log_q = torch.log_softmax(full.double(), -1), torch.log_softmax(chain.double(), -1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def run_wire_dtypes(deployment: dict) -> dict[int, WireDtype]:
    """Each node's output dtype in a run (one for all in runs deployed before ``wire_dtypes`` was recorded)."""
    named = deployment.get("wire_dtypes") or {str(i): deployment.get("wire_dtype", "bfloat16")
                                              for i in range(len(deployment["hosts"]))}
    return {int(node): WireDtype.from_name(name) for node, name in named.items()}


def run_bridges(deployment: dict, hidden: int) -> BridgeSet:
    """The bridges a run's nodes held: the file its deployment names, refused if it changed since."""
    path = Path(deployment.get("bridges") or "")
    if not deployment.get("bridges") or not path.is_file():
        raise RunDirError(f"this run bridged layers, but the bridges file its deployment names "
                          f"({deployment.get('bridges') or 'none'}) is not here: refit it with the same "
                          f"`fab prepare-bridges` options")
    if sha256_file(path) != deployment.get("bridges_sha256"):
        raise RunDirError(f"{path} is not the bridges file this run used (its sha256 differs)")
    return BridgeSet(load_bridges(path, hidden=hidden))


def check_run_dir(run_dir: Path) -> list[ReplayResult]:
    """``fab check-run``: replay ``run_dir`` with the model its deployment names (prepared if need be)."""
    from payload.prepare import prepare

    deployment = Path(run_dir) / "deployment.json"
    if not deployment.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no deployment.json)")
    return check_run(Path(run_dir), prepare(json.loads(deployment.read_text())["model"]))


def load_hf_model(prepared: Path, dtype: torch.dtype = torch.float32):
    """The whole model as one transformers module (for monolithic references and benchmarks)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    spec = ModelSpec(prepared)
    model = AutoModelForCausalLM.from_config(spec.config, dtype=dtype)
    state = {}
    for rel in [spec.manifest["head_file"], *spec.manifest["layer_files"]]:
        state.update(load_file(Path(prepared) / rel))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise ValueError(f"prepared weights do not fit the model: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model.eval()
