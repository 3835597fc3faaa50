"""analysis.metrics on hand-made tables and synthetic runs with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.load import RunData, load
from analysis.metrics import agreement, compute, fault_metrics, first_divergence, session_metrics

MS = 1_000_000
EFFECTIVE = 1_760_000_010_000_000_000


def tokens_frame(rows: list[dict]) -> pd.DataFrame:
    defaults = {"run_id": "r", "session": "s", "prompt_index": 0, "repeat": 0, "token_id": 1, "text": "x",
                "layers": "0 1 2 3", "route": "0 1 2 0", "epoch": 0, "attempts": 1, "nodes_out": "", "bridges": ""}
    frame = pd.DataFrame([{**defaults, **row} for row in rows])
    frame["degraded"] = frame["nodes_out"] != ""
    frame["n_layers"] = frame["layers"].str.split().str.len()
    return frame


class TestSessionMetrics:
    def test_percentiles_of_known_latencies(self):
        rows = [{"step": k, "t_emit_ns": k * 100 * MS, "t_emit_mono_ns": k * 100 * MS, "latency_ns": max(k, 1) * MS}
                for k in range(101)]  # decode steps 1..100 take 1..100 ms
        session = session_metrics(tokens_frame(rows)).iloc[0]
        assert session["latency_median_ns"] == pytest.approx(50.5 * MS)
        assert session["latency_p95_ns"] == pytest.approx(95.05 * MS)
        assert session["latency_p99_ns"] == pytest.approx(99.01 * MS)

    def test_ttft_percentiles_and_rates_of_a_known_session(self):
        # prefill: first send at 0, token at 200 ms; then one token every 100 ms, each taking 100 ms
        rows = [{"step": 0, "t_emit_ns": 200 * MS, "t_emit_mono_ns": 200 * MS, "latency_ns": 200 * MS}]
        rows += [{"step": k, "t_emit_ns": (200 + 100 * k) * MS, "t_emit_mono_ns": (200 + 100 * k) * MS,
                  "latency_ns": 100 * MS} for k in range(1, 5)]
        rows[2]["attempts"] = 2
        rows[4]["nodes_out"] = "2"
        session = session_metrics(tokens_frame(rows)).iloc[0]
        assert session["tokens"] == 5
        assert session["ttft_ns"] == 200 * MS
        assert session["latency_median_ns"] == 100 * MS and session["latency_p99_ns"] == 100 * MS
        assert session["tokens_per_s"] == pytest.approx(5 / 0.6)
        assert session["decode_tokens_per_s"] == pytest.approx(4 / 0.4)
        assert session["retried_steps"] == 1 and session["degraded_tokens"] == 1


def fault_data(action: str = "kill") -> RunData:
    """user -> node1 (layers 0 1) -> node2 (2 3) -> node3 (4 5) -> user; node2 killed at EFFECTIVE."""
    nodes = pd.DataFrame({"run_id": "r", "index": [0, 1, 2, 3], "name": ["user", "node1", "node2", "node3"],
                          "layers": ["", "0 1", "2 3", "4 5"], "profile": "wifi"})
    faults = pd.DataFrame([{"run_id": "r", "fault": 0, "action": action, "target": "node2", "trigger": "token:1",
                            "session": "s", "step": 1, "requested_wall_ns": EFFECTIVE - 2 * MS,
                            "effective_wall_ns": EFFECTIVE, "effective_mono_ns": 0, "detail": ""}])
    event = {"run_id": "r", "host": "", "mono_ns": 0, "reason": "", "detect_ns": None, "session": "", "step": None,
             "epoch": None, "detail": ""}
    events = pd.DataFrame([
        {**event, "ev": "peer_failed", "node": 3, "peer": "2", "wall_ns": EFFECTIVE - 60_000 * MS},  # before: stale
        {**event, "ev": "peer_failed", "node": 1, "peer": "3", "wall_ns": EFFECTIVE + 10 * MS},  # another peer
        {**event, "ev": "peer_failed", "node": 0, "peer": "node2", "wall_ns": EFFECTIVE + 300 * MS},
        {**event, "ev": "peer_failed", "node": 1, "peer": "2", "wall_ns": EFFECTIVE + 150 * MS},  # the first
        {**event, "ev": "reroute", "node": 0, "peer": "", "wall_ns": EFFECTIVE + 151 * MS},
    ])
    full, degraded = {"layers": "0 1 2 3 4 5"}, {"layers": "0 1 4 5", "nodes_out": "2"}
    tokens = tokens_frame([
        {"step": 0, "t_emit_ns": EFFECTIVE - 100 * MS, **full},
        {"step": 1, "t_emit_ns": EFFECTIVE - 1 * MS, **full},
        {"step": 2, "t_emit_ns": EFFECTIVE + 400 * MS, "attempts": 2, **degraded},
        {"step": 3, "t_emit_ns": EFFECTIVE + 500 * MS, **degraded},
        {"session": "t", "step": 0, "t_emit_ns": EFFECTIVE + 50 * MS, **degraded},
    ]).assign(t_emit_mono_ns=0, latency_ns=0)
    empty = pd.DataFrame()
    return RunData(runs={}, tokens=tokens, hops=empty, faults=faults, nodes=nodes, links=empty, events=events)


class TestFaultMetrics:
    def test_detection_reroute_degraded_tokens_and_layers_lost_from_known_events(self):
        fault = fault_metrics(fault_data()).iloc[0]
        assert fault["detection_ns"] == 150 * MS
        assert fault["detected_by"] == 1
        assert fault["reroute_ns"] == 400 * MS  # next token of the fault's session, not session t's
        assert fault["degraded_tokens"] == 3
        assert fault["layers_lost"] == "2 3" and fault["n_layers_lost"] == 2
        assert fault["layers_bridged"] == ""

    def test_lost_layers_a_bridge_stood_in_for_at_every_degraded_token_are_bridged(self):
        data = fault_data()
        degraded = data.tokens["nodes_out"] == "2"
        data.tokens.loc[degraded, "bridges"] = "2-3"
        assert fault_metrics(data).iloc[0]["layers_bridged"] == "2 3"
        data.tokens.loc[data.tokens.index[degraded][0], "bridges"] = ""  # one token skipped them instead
        assert fault_metrics(data).iloc[0]["layers_bridged"] == ""

    def test_a_fault_after_the_last_token_gets_zero_degraded_tokens_not_an_error(self):
        """A kill that bites as the last tokens are emitted (the testbed reports it after them) leaves no token
        after its effective time: found on a fast emulated Colosseum run, where analysis raised KeyError."""
        data = fault_data()
        data.faults["effective_wall_ns"] = data.tokens["t_emit_ns"].max() + MS
        fault = fault_metrics(data).iloc[0]
        assert fault["degraded_tokens"] == 0 and fault["n_layers_lost"] == 0 and fault["layers_lost"] == ""
        assert pd.isna(fault["reroute_ns"])

    def test_restoring_actions_get_no_figures(self):
        fault = fault_metrics(fault_data("resume")).iloc[0]
        assert pd.isna(fault["detection_ns"]) and pd.isna(fault["reroute_ns"]) and pd.isna(fault["degraded_tokens"])


class TestQuality:
    def test_first_divergence(self):
        assert first_divergence([1, 2, 3], [1, 2, 3]) is None
        assert first_divergence([1, 2, 4], [1, 2, 3]) == 2
        assert first_divergence([1, 2], [1, 2, 3]) == 2  # stopped early: diverges where it stopped

    def test_agreement_counts_missing_tokens_as_disagreement(self):
        assert agreement([1, 2, 3, 4], [1, 9, 3, 4]) == 0.75
        assert agreement([1, 2], [1, 2, 3, 4]) == 0.5
        assert math.isnan(agreement([], []))


class TestSyntheticRun:
    def test_fault_figures_match_the_truth(self, runs):
        faults = fault_metrics(load(runs.faulted))
        truth = runs.truth
        assert faults["detection_ns"].tolist() == list(truth.detection_ns)
        assert faults["reroute_ns"].tolist() == list(truth.reroute_ns)
        assert faults["degraded_tokens"].tolist() == list(truth.degraded_tokens)
        assert faults["layers_lost"].tolist() == [" ".join(map(str, lost)) for lost in truth.layers_lost]

    def test_quality_against_the_fault_free_twin(self, runs):
        quality = compute(load(runs.faulted), load(runs.baseline)).quality.set_index("session")
        for session, divergence in runs.truth.first_divergence.items():
            got = quality.at[session, "first_divergence"]
            assert (pd.isna(got) and divergence is None) or got == divergence
        assert (quality["agreement"] < 1).all()
        assert quality["text"].str.len().gt(0).all() and quality["baseline_text"].str.len().gt(0).all()
