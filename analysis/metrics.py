"""Inference-time, per-hop, per-fault and quality metrics of loaded runs.

Functions take RunData (one run or many) and return frames keyed by ``run_id``, so
the same code serves a report and a comparison.  Durations stay in integer or float
nanoseconds; conversion to ms is left to presentation.

Definitions, chosen to be computable from the run directory alone:

- TTFT: ``latency_ns`` of step 0 (first send of the prefill to the first token, user node).
- Per-token latency percentiles: decode steps only (step >= 1), because the prefill step
  carries the whole prompt and would skew them.  Linear interpolation (numpy's default).
- tokens/s: tokens over the span from the prefill's first send to the last emission.
- Per-hop breakdown: serialisation at src, network = forward one-way delay (the round
  trip minus the return leg, split with the clock-offset estimate), queueing and compute
  at dst.  "other" per token is latency minus the sum over its final attempt's hops:
  head and sampling at the user node, decoding, and time lost to failed attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import RunData, indices
from analysis.timing import clock_offsets, one_way_delays

PERCENTILES = {"median": 0.5, "p95": 0.95, "p99": 0.99}
COMPONENTS = ("serialize_ns", "network_ns", "queue_ns", "compute_ns")
DISRUPTIVE = ("kill", "pause", "link_down", "partition", "degrade", "one_way_partition", "blackhole", "corrupt",
              "duplicate", "reorder", "slow")
STEP_KEY = ["run_id", "session", "step", "epoch"]
SENDER_STAMPS = ("bytes", "t1_wall_ns", "t2_wall_ns", "t3_wall_ns", "t4_wall_ns", "t1_mono_ns", "t4_mono_ns", "rtt_ns",
                 "serialize_ns")
# Events that say something is wrong with a node: a predecessor's report, the user node's verdict, a straggler found.
DETECTIONS = ("peer_failed", "node_out", "node_slow")
DETECTED_AS = {"crashed": "crash", "silent": "silent", "rejected": "rejected", "timeout": "silent"}


@dataclass(frozen=True)
class Metrics:
    """Everything a report shows, computed once."""

    runs: pd.DataFrame
    sessions: pd.DataFrame
    hops: pd.DataFrame
    offsets: pd.DataFrame
    composition: pd.DataFrame
    faults: pd.DataFrame
    quality: pd.DataFrame | None
    hop_rows: pd.DataFrame
    token_rows: pd.DataFrame


def acked_hops(hops: pd.DataFrame) -> pd.DataFrame:
    """The hops whose ack reached the sender: only they carry T1..T4, so only they give round trips, clock
    offsets and one-way delays (a frame taken after its sender gave up has the receiver's side only)."""
    return hops[hops["acked"]].astype({column: "int64" for column in SENDER_STAMPS})


def compute(data: RunData, baseline: RunData | None = None) -> Metrics:
    """All metrics of ``data``; quality only when a baseline run is given."""
    hops = acked_hops(data.hops)
    offsets = clock_offsets(hops)
    hop_rows = one_way_delays(hops, offsets).assign(network_ns=lambda f: f["owd_fwd_ns"])
    token_rows = token_breakdown(data.tokens, hop_rows)
    return Metrics(
        runs=run_metrics(data.tokens),
        sessions=session_metrics(data.tokens),
        hops=hop_metrics(hop_rows),
        offsets=offsets,
        composition=composition(token_rows),
        faults=fault_metrics(data),
        quality=None if baseline is None else quality(data, baseline),
        hop_rows=hop_rows,
        token_rows=token_rows,
    )


def _latency_percentiles(tokens: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Median, p95, p99 of decode-step latency per group (linear interpolation, as numpy's default)."""
    decode = tokens[tokens["step"] >= 1].groupby(keys)["latency_ns"]
    return pd.DataFrame({f"latency_{name}_ns": decode.quantile(q) for name, q in PERCENTILES.items()})


def _spans(tokens: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group: token count, TTFT, generation span and first/last emission (user-node mono clock)."""
    frame = tokens.assign(first_send=tokens["t_emit_mono_ns"] - tokens["latency_ns"])
    grouped = frame.sort_values("step").groupby(keys)
    spans = grouped.agg(
        tokens=("step", "size"),
        first_send=("first_send", "first"),
        first_emit=("t_emit_mono_ns", "min"),
        last_emit=("t_emit_mono_ns", "max"),
        degraded_tokens=("degraded", "sum"),
        retried_steps=("attempts", lambda a: int((a > 1).sum())),
    )
    spans["ttft_ns"] = grouped["latency_ns"].first().where(grouped["step"].first() == 0)
    spans["span_ns"] = spans["last_emit"] - spans["first_send"]
    return spans


def session_metrics(tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, session): TTFT, latency percentiles, tokens/s, degraded and retried counts."""
    keys = ["run_id", "session"]
    spans = _spans(tokens, keys)
    ids = tokens.groupby(keys)[["prompt_index", "repeat"]].first()
    out = ids.join(spans).join(_latency_percentiles(tokens, keys))
    out["tokens_per_s"] = out["tokens"] / (out["span_ns"] / 1e9)
    decode_span = (out["last_emit"] - out["first_emit"]) / 1e9
    out["decode_tokens_per_s"] = (out["tokens"] - 1) / decode_span.where(decode_span > 0)
    columns = ["prompt_index", "repeat", "tokens", "ttft_ns", "latency_median_ns", "latency_p95_ns",
               "latency_p99_ns", "tokens_per_s", "decode_tokens_per_s", "degraded_tokens", "retried_steps"]
    return out[columns].reset_index().sort_values(["run_id", "prompt_index", "repeat"], ignore_index=True)


def run_metrics(tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per run: sessions, tokens, median TTFT over sessions, decode latency percentiles, tokens/s."""
    spans = _spans(tokens, ["run_id", "session"]).reset_index()
    runs = spans.groupby("run_id").agg(
        sessions=("session", "size"), tokens=("tokens", "sum"), ttft_median_ns=("ttft_ns", "median"),
        span_ns=("span_ns", "sum"), degraded_tokens=("degraded_tokens", "sum"), retried_steps=("retried_steps", "sum"),
    )
    runs = runs.join(_latency_percentiles(tokens, ["run_id"]))
    runs["tokens_per_s"] = runs["tokens"] / (runs["span_ns"] / 1e9)
    return runs.drop(columns="span_ns").reset_index()


def hop_metrics(hop_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, src, dst): frames, bytes, round trips, one-way delays, mean breakdown."""
    grouped = hop_rows.groupby(["run_id", "src", "dst"])
    out = grouped.agg(
        frames=("bytes", "size"), bytes_mean=("bytes", "mean"), bytes_total=("bytes", "sum"),
        rtt_median_ns=("rtt_ns", "median"),
        owd_fwd_median_ns=("owd_fwd_ns", "median"), owd_back_median_ns=("owd_back_ns", "median"),
        owd_uncertainty_ns=("owd_uncertainty_ns", "first"),
        **{c: (c, "mean") for c in COMPONENTS},
    )
    out.insert(4, "rtt_p95_ns", grouped["rtt_ns"].quantile(0.95))
    return out.reset_index()


def token_breakdown(tokens: pd.DataFrame, hop_rows: pd.DataFrame) -> pd.DataFrame:
    """Tokens with the summed components of their final attempt's hops, and the remainder as other_ns."""
    sums = hop_rows.groupby(STEP_KEY)[list(COMPONENTS)].sum()
    out = tokens.join(sums, on=STEP_KEY)
    out[list(COMPONENTS)] = out[list(COMPONENTS)].fillna(0.0)
    out["other_ns"] = out["latency_ns"] - out[list(COMPONENTS)].sum(axis=1)
    return out


def composition(token_rows: pd.DataFrame) -> pd.DataFrame:
    """Mean per-token time by component over decode steps, one row per run."""
    decode = token_rows[token_rows["step"] >= 1]
    return decode.groupby("run_id")[[*COMPONENTS, "other_ns", "latency_ns"]].mean().reset_index()


def skipped_layers(tokens: pd.DataFrame, nodes: pd.DataFrame) -> pd.Series:
    """Per token, the space-separated layers of the model that it did not go through."""
    full = {run: set().union(*(indices(s) for s in group)) for run, group in nodes.groupby("run_id")["layers"]}
    skipped = [
        " ".join(map(str, sorted(full[run] - set(indices(layers)))))
        for run, layers in zip(tokens["run_id"], tokens["layers"], strict=True)
    ]
    return pd.Series(skipped, index=tokens.index, name="skipped", dtype="str")


def fault_metrics(data: RunData) -> pd.DataFrame:
    """Per fault: detection and reroute latency, tokens while degraded, layers lost.

    - detection_ns: effective time to the first event naming a target as failed: a layer
      node's ``peer_failed`` report, or the user node's own ``node_out`` (it sees its first
      hop fail, and heartbeats stop), counted from events after the fault was requested (a
      kill can bite before the testbed reports it).  Negative values are possible for that
      reason.  A straggler's ``node_slow`` counts too.
    - detected_as: what that first event took the fault for: crash (connection refused or reset),
      silent (no ack, no heartbeat), slow (answering, persistently slower: payload/stragglers.py);
      detection_ns is then the time it took to classify it.
    - reroute_ns: effective time to the next token of the fault's session (any session
      if none was in progress).
    - degraded_tokens: tokens with a target in nodes_out, until the next fault on a target.
    - layers_lost: target layers missing from at least one of those tokens (none if a
      replica served them); layers_bridged: those of them a bridge stood in for at every
      such token (on_failure: bridge).
    Times compare the control host's clock with the nodes' clocks: exact on one host
    (emulated testbeds), off by the NTP offset on real ones.  Restoring actions
    (resume, link_up) get no figures.
    """
    rows = [_fault_row(fault, data) for fault in data.faults.itertuples(index=False)]
    columns = ["run_id", "fault", "action", "target", "trigger", "session", "step", "effective_wall_ns",
               "detection_ns", "detected_by", "detected_as", "reroute_ns", "degraded_tokens", "layers_lost",
               "n_layers_lost", "layers_bridged"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"detection_ns": "float64", "reroute_ns": "float64", "detected_by": "Int64",
                         "degraded_tokens": "Int64", "n_layers_lost": "Int64", "layers_lost": "str",
                         "layers_bridged": "str"})


def _fault_row(fault: Any, data: RunData) -> dict:
    """Figures of one fault; ``fault`` is a row of ``data.faults.itertuples()``."""
    row = {key: getattr(fault, key) for key in ("run_id", "fault", "action", "target", "trigger", "session", "step",
                                                 "effective_wall_ns")}
    row.update(detection_ns=None, detected_by=None, detected_as="", reroute_ns=None, degraded_tokens=None, layers_lost="",
               n_layers_lost=None, layers_bridged="")
    if fault.action not in DISRUPTIVE:
        return row
    nodes = data.nodes[data.nodes["run_id"] == fault.run_id]
    by_name = dict(zip(nodes["name"], nodes["index"], strict=True))
    names = fault.target.split()
    targets = {by_name[n] for n in names if n in by_name}
    start = fault.effective_wall_ns

    events = data.events
    peer_names = {str(t) for t in targets} | set(names)
    detections = events[(events["run_id"] == fault.run_id) & events["ev"].isin(DETECTIONS)
                        & events["peer"].isin(peer_names) & (events["wall_ns"] >= fault.requested_wall_ns)]
    if len(detections):
        first = detections.loc[detections["wall_ns"].idxmin()]
        row.update(detection_ns=int(first["wall_ns"]) - start, detected_by=int(first["node"]),
                   detected_as="slow" if first["ev"] == "node_slow" else DETECTED_AS.get(str(first.get("kind")), ""))

    tokens = data.tokens[data.tokens["run_id"] == fault.run_id]
    after = tokens[tokens["t_emit_ns"] > start]
    in_session = after[after["session"] == fault.session] if fault.session else after
    if len(in_session):
        row["reroute_ns"] = int(in_session["t_emit_ns"].min()) - start

    end = _window_end(fault, data.faults, names)
    window = after[after["t_emit_ns"] <= end]
    degraded = window[window["nodes_out"].map(lambda out: bool(targets & set(indices(out)))).astype(bool)]
    held = set().union(*(indices(s) for s in nodes.loc[nodes["index"].isin(targets), "layers"]))
    lost = set().union(*(held - set(indices(layers)) for layers in degraded["layers"]))
    bridged = set(lost)
    for spans in degraded["bridges"]:
        bridged &= {layer for span in str(spans).split() for layer in _span_layers(span)}
    row.update(degraded_tokens=len(degraded), layers_lost=" ".join(map(str, sorted(lost))), n_layers_lost=len(lost),
               layers_bridged=" ".join(map(str, sorted(bridged))))
    return row


def _span_layers(span: str) -> range:
    """The layers of a ``first-last`` span of tokens.csv's ``bridges``."""
    first, _, last = span.partition("-")
    return range(int(first), int(last) + 1)


def _window_end(fault: Any, faults: pd.DataFrame, names: list[str]) -> float:
    """Effective time of the next fault in the run touching one of ``names`` (or +inf)."""
    later = faults[(faults["run_id"] == fault.run_id) & (faults["effective_wall_ns"] > fault.effective_wall_ns)]
    touching = later[later["target"].map(lambda t: bool(set(t.split()) & set(names))).astype(bool)]
    return float(touching["effective_wall_ns"].min()) if len(touching) else float("inf")


def first_divergence(tokens: Sequence[int], baseline: Sequence[int]) -> int | None:
    """Index of the first token that differs from the baseline (None if the sequences are equal)."""
    common = min(len(tokens), len(baseline))
    differ = np.flatnonzero(np.asarray(tokens[:common]) != np.asarray(baseline[:common]))
    if differ.size:
        return int(differ[0])
    return None if len(tokens) == len(baseline) else common


def agreement(tokens: Sequence[int], baseline: Sequence[int]) -> float:
    """Share of positions with the same token; a missing token counts as a disagreement."""
    longest = max(len(tokens), len(baseline))
    if longest == 0:
        return float("nan")
    common = min(len(tokens), len(baseline))
    return float(np.sum(np.asarray(tokens[:common]) == np.asarray(baseline[:common])) / longest)


def quality(data: RunData, baseline: RunData) -> pd.DataFrame:
    """Per session of ``data``: agreement with the baseline session of the same prompt.

    The baseline session is the one with the same prompt_index and repeat, or the
    prompt's lowest repeat when the baseline ran fewer repeats.
    """
    reference = {key: group.sort_values("step") for key, group in baseline.tokens.groupby(["prompt_index", "repeat"])}
    rows = []
    for (run_id, session), group in data.tokens.groupby(["run_id", "session"]):
        group = group.sort_values("step")
        prompt, repeat = int(group["prompt_index"].iat[0]), int(group["repeat"].iat[0])
        candidates = sorted(r for p, r in reference if p == prompt)
        row = {"run_id": run_id, "session": session, "prompt_index": prompt, "repeat": repeat,
               "tokens": len(group), "text": "".join(group["text"])}
        if candidates:
            base = reference[(prompt, repeat if repeat in candidates else candidates[0])]
            ours, theirs = group["token_id"].tolist(), base["token_id"].tolist()
            row.update(baseline_session=base["session"].iat[0], baseline_tokens=len(base),
                       first_divergence=first_divergence(ours, theirs), agreement=agreement(ours, theirs),
                       baseline_text="".join(base["text"]))
        rows.append(row)
    columns = ["run_id", "session", "prompt_index", "repeat", "baseline_session", "tokens", "baseline_tokens",
               "first_divergence", "agreement", "text", "baseline_text"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"first_divergence": "Int64", "baseline_tokens": "Int64", "agreement": "float64",
                         "baseline_session": "str", "baseline_text": "str"})
