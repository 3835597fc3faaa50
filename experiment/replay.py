"""The consistency oracle: replay a run's tokens through the monolithic model.

For each step of a session, apply exactly the decoder layers that tokens.csv
records for that step, in route order, rounding hidden states to the wire
dtype at every node boundary as the chain did.  Each layer keeps its own KV
cache holding only the positions of steps where it ran; layers listed in
``rebuilt`` first have their cache rebuilt from the previous hop's history, as
the chain replays it: the output of the last layer applied before them, at
every earlier position.  The replay must reproduce the recorded token ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from payload.config import compute_threads
from payload.frames import WireDtype
from payload.slices import Head, LayerSlice, ModelSpec, SessionCache
from payload.tensors import to_wire


@dataclass
class ReplayResult:
    session: str
    expected: list[int]
    replayed: list[int]

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


def replay_session(model: Monolith, prompt_ids: list[int], steps: pd.DataFrame, slices: dict[int, tuple[int, int]],
                   wire: WireDtype) -> list[int]:
    """Token ids the monolith produces when each step applies the recorded layers."""
    caches = {i: SessionCache.new(model.spec, (i,)) for i in range(model.spec.num_layers)}
    # Wire-rounded output of each layer at every position (None where it did not run): a rebuild replays
    # the history of the hop before it on the route, which is its last layer's output at each position.
    outputs: dict[int, list[torch.Tensor | None]] = {i: [] for i in range(model.spec.num_layers)}
    boundaries = {a for a, _ in slices.values()}
    ids = list(prompt_ids)
    produced: list[int] = []
    positions = 0
    for row in steps.itertuples():
        layers = [int(x) for x in str(row.layers).split()] if isinstance(row.layers, str) and row.layers else []
        rebuilt = set(int(x) for x in str(row.rebuilt).split()) if isinstance(row.rebuilt, str) and row.rebuilt else set()
        for run in _contiguous_runs(sorted(rebuilt)):
            for layer in run:
                caches[layer] = SessionCache.new(model.spec, (layer,))
            if not positions:
                continue
            history = _replay_source(model, ids[:positions], outputs, layers, run[0], wire)
            for layer in run:
                if layer in boundaries:  # a run can span nodes: each replays its predecessor's wire-dtype history
                    history = to_wire(history, wire)
                history = model.layers[layer].forward(history, torch.arange(0, positions).unsqueeze(0), caches[layer])
                rounded = to_wire(history, wire)
                outputs[layer] = [rounded[:, j:j + 1] for j in range(positions)]
        new_ids = ids[positions:]
        hidden = to_wire(model.head.embed_ids(torch.tensor([new_ids])), wire)
        pos = torch.arange(positions, positions + len(new_ids)).unsqueeze(0)
        for layer in range(model.spec.num_layers):
            if layer in boundaries:
                hidden = to_wire(hidden, wire)
            if layer in layers:
                hidden = model.layers[layer].forward(hidden, pos, caches[layer])
                caches[layer].commit()
                rounded = to_wire(hidden, wire)
                outputs[layer].extend(rounded[:, j:j + 1] for j in range(rounded.shape[1]))
            else:
                outputs[layer].extend([None] * len(new_ids))
        hidden = to_wire(hidden, wire)
        token = int(torch.argmax(model.head.logits(hidden[:, -1:])[0, -1]))
        produced.append(token)
        positions = len(ids)
        ids.append(int(row.token_id))
    return produced


def _replay_source(model: Monolith, ids: list[int], outputs: dict[int, list[torch.Tensor | None]],
                   layers: list[int], first: int, wire: WireDtype) -> torch.Tensor:
    """What the chain replays into rebuilt layers starting at ``first``: the previous hop's history.

    That is the output of the last layer applied before ``first`` at this step,
    at every earlier position, or the embeddings when no layer comes before.
    """
    before = [layer for layer in layers if layer < first]
    if not before:
        return to_wire(model.head.embed_ids(torch.tensor([ids])), wire)
    history = outputs[before[-1]][:len(ids)]
    missing = [p for p, chunk in enumerate(history) if chunk is None]
    if missing:
        raise ValueError(f"layer {before[-1]} never ran at positions {missing[:5]}..., so it has no history "
                         f"to rebuild layer {first} from: the run's tokens.csv is inconsistent")
    return torch.cat(history, dim=1)


def check_run(run_dir: Path, prepared: Path, *, model: Monolith | None = None) -> list[ReplayResult]:
    """Replay every session of a greedy run; return per-session expected vs replayed tokens.

    Prompt token ids come from the user node's log (``session_start``), so chat
    templates and tokenizer settings are replayed exactly as the run used them.
    """
    from payload.events import read_events

    run_dir = Path(run_dir)
    tokens = pd.read_csv(run_dir / "tokens.csv", keep_default_na=False)
    nodes = pd.read_csv(run_dir / "nodes.csv", keep_default_na=False)
    deployment = json.loads((run_dir / "deployment.json").read_text())
    wire = WireDtype.from_name(deployment.get("wire_dtype", "bfloat16"))
    user = nodes.loc[nodes["index"] == 0, "name"].iloc[0]
    starts = {e["session"]: e["prompt_ids"] for e in read_events(run_dir / "nodes" / user / "events.jsonl")
              if e["ev"] == "session_start"}
    model = model or Monolith(prepared)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(compute_threads())  # the nodes' float sums, bit for bit: a greedy token can hinge on them
    try:
        for sid, steps in tokens.groupby("session", sort=False):
            steps = steps.sort_values("step")
            replayed = replay_session(model, starts[sid], steps, _node_layers(nodes), wire)
            results.append(ReplayResult(str(sid), steps["token_id"].astype(int).tolist(), replayed))
    finally:
        torch.set_num_threads(threads)
    return results


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
