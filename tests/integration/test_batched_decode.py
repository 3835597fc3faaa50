"""Batched decode on real SmolLM2 node processes: six sessions at once, a node killed mid-run, every node's
batches and the user node's head batches logged, and the oracle replaying each batched step row by row."""

from __future__ import annotations

from experiment.replay import check_run, node_batches, read_table
from experiment.run import Fault, run_job
from payload.events import read_events
from tests.integration.conftest import deploy_even, local_testbed, read_tokens, summary

PROMPTS = ["Write a short story about a lighthouse keeper.", "List four uses of a paperclip.",
           "Explain why the sky is blue.", "Name the planets of the solar system.",
           "What is distributed inference?", "Describe a bicycle."]


def test_sessions_at_once_are_batched_at_every_node_and_the_oracle_replays_them_through_a_kill(
        smollm2, smollm2_monolith, tmp_path):
    job = {"prompts": PROMPTS, "max_new_tokens": 10, "concurrency": len(PROMPTS), "ignore_eos": True}
    with local_testbed(3) as testbed:
        deployment = deploy_even(testbed, smollm2, 3, batch_decode=8)
        run = run_job(testbed, deployment, job, [Fault("kill", (2,), at_token=5)], tmp_path / "run")
    tokens = read_tokens(run)
    assert summary(run)["complete"] and len(tokens) == 10 * len(PROMPTS)
    assert (tokens.groupby("session")["nodes_out"].last() == "2").all(), "node 2 was routed around"
    for name in ("node1", "node3"):
        batched = [e for e in read_events(run / "nodes" / name / "events.jsonl") if e["ev"] == "compute"
                   and "batch" in e]
        assert batched, f"{name} computed no decode step in a batch"
        assert all(1 < e["batch"][0] <= 8 and 0 <= e["batch"][1] < e["batch"][0] and e["positions"] == 1
                   for e in batched), batched[:3]
    head = tokens.loc[tokens["head_batch"] != "", "head_batch"]
    assert len(head) and all(1 < int(cell.split()[0]) <= 8 for cell in head), "no head batch logged"
    replayed = node_batches(run, read_table(run, "nodes"), tokens)
    assert sum(len(per) for per in replayed.values()) > 0
    results = check_run(run, smollm2, model=smollm2_monolith)
    assert len(results) == len(PROMPTS)
    for result in results:
        assert result.ok, (result.session, result.first_mismatch, result.expected, result.replayed)
