"""Chunked, pipelined prefill on real node processes: a long prompt goes in chunks, each node forwards chunk k
as soon as it has computed it, and the result is the same computation (tokens, and the oracle replaying it
chunk by chunk), past Gemma 3's sliding window and through a kill in the middle of the prefill."""

from __future__ import annotations

import pandas as pd
import pytest

from experiment.replay import Monolith, check_run
from experiment.run import Fault, run_job
from payload.events import read_events
from tests.integration.conftest import deploy_even, local_testbed, read_tokens, summary
from tests.integration.test_local_chain import monolithic


def chunk_cells(run) -> list[int]:
    return [int(x) for x in read_tokens(run)["chunks"].iloc[0].split()]


@pytest.mark.timeout(300)
def test_a_chunked_prefill_past_the_sliding_window_equals_generate_and_is_pipelined(bundled, tmp_path):
    """600 positions in chunks of 128 over 3 Gemma 3 nodes (its 512-token sliding window is crossed inside the
    prefill): with float32 on the wire the tokens are generate's, and node 2 computes the first chunk while
    node 1 is still on later ones."""
    prepared = bundled("gemma3-270m")
    prompt = " ".join(f"word{i % 50}" for i in range(300))
    expected = monolithic(prepared, prompt, 6)
    with local_testbed(3) as testbed:
        dep = deploy_even(testbed, prepared, 3, wire_dtype="float32", prefill=128)
        assert dep.prefill_chunk == 128
        run = run_job(testbed, dep, {"prompts": [prompt], "max_new_tokens": 6}, [], tmp_path / "run")
    tokens = read_tokens(run)
    assert tokens["token_id"].tolist() == expected
    chunks = chunk_cells(run)
    assert chunks[:-1] == [128] * (len(chunks) - 1) and 0 < chunks[-1] <= 128 and sum(chunks) > 512
    assert (tokens["chunks"].iloc[1:] == "").all(), "decode steps go in one frame"
    computed = {n: [e for e in read_events(run / "nodes" / f"node{n}" / "events.jsonl")
                    if e["ev"] == "compute" and e["step"] == 0] for n in (1, 2)}
    assert [e["pos_start"] for e in computed[1]] == [128 * k for k in range(len(chunks))]
    assert computed[2][0]["start_mono_ns"] < computed[1][-1]["end_mono_ns"], "node 2 waited for the whole prompt"
    hops = pd.read_csv(run / "hops.csv")
    first = hops[(hops["step"] == 0) & (hops["src"] == 0)]
    assert len(first) == len(chunks) and first["acked"].all(), "each chunk is its own acked frame"
    for result in check_run(run, prepared, model=Monolith(prepared)):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)


@pytest.mark.timeout(300)
def test_a_kill_during_a_chunked_prefill_restarts_it_and_the_oracle_holds(smollm2, smollm2_monolith, tmp_path):
    """Node 2 is killed 0.2 s into a ~600-position prefill sent in chunks of 16 (int8 on the wire): the prefill
    is sent again, chunked, around node 2, and the oracle replays every chunk of the attempt that counted."""
    prompt = " ".join(f"item{i % 40} costs {i} coins;" for i in range(120))
    with local_testbed(4) as testbed:
        dep = deploy_even(testbed, smollm2, 4, wire_dtype="int8", prefill=16)
        run = run_job(testbed, dep, {"prompts": [prompt], "max_new_tokens": 6, "ignore_eos": True},
                      [Fault("kill", (2,), at_seconds=0.2)], tmp_path / "run")
    tokens = read_tokens(run)
    faults = pd.read_csv(run / "faults.csv")
    assert summary(run)["complete"] and len(tokens) == 6
    assert faults["effective_wall_ns"].iloc[0] < tokens["t_emit_ns"].iloc[0], "the kill must land in the prefill"
    assert tokens["attempts"].iloc[0] > 1 and str(tokens["nodes_out"].iloc[0]) == "2"
    assert sum(chunk_cells(run)) > 500 and set(chunk_cells(run)[:-1]) == {16}
    for result in check_run(run, smollm2, model=smollm2_monolith):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)
