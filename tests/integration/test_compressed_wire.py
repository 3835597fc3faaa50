"""Compressed activations on real SmolLM2 node processes: int8 and fp8 e4m3 on the wire, a kill mid-run (a
replica rebuilding its cache from an int8 history, a skip under fp8), and the oracle replaying every rounding."""

from __future__ import annotations

import pytest

from experiment.replay import Monolith, check_run
from experiment.wire import AUTO_COMPRESSED
from experiment.run import Fault, run_job
from payload.events import read_events
from payload.frames import WireDtype
from payload.slices import ModelSpec
from testbed.profiles import resolve
from tests.emu.conftest import emu_testbed, require_root  # noqa: F401,F811  (fixture)
from tests.integration.conftest import deploy_even, read_tokens, summary

JOB = {"prompts": ["Write a short story about a lighthouse keeper and a storm."], "max_new_tokens": 12,
       "ignore_eos": True}


@pytest.mark.parametrize("wire,policy,replicas", [("int8", "replica", 1), ("fp8", "skip", 0)])
def test_a_compressed_chain_survives_a_kill_and_the_oracle_replays_it(smollm2, smollm2_monolith, chain, tmp_path,
                                                                      wire, policy, replicas):
    with chain(smollm2, 3, replicas=replicas, policy=policy, wire=wire) as (tb, dep):
        run = run_job(tb, dep, JOB, [Fault("kill", (2,), at_token=4)], tmp_path / "run")
    tokens = read_tokens(run)
    assert summary(run)["complete"] and len(tokens) == 12
    assert tokens["nodes_out"].iloc[-1] == "2"
    if policy == "replica":
        assert tokens["rebuilt"].str.len().sum() > 0, "the replica must rebuild from the int8 history"
    received = [e for name in ("node1", "node3") for e in read_events(run / "nodes" / name / "events.jsonl")
                if e["ev"] == "recv"]
    assert received and {e["bytes"] / e["positions"] for e in received} == {
        WireDtype.from_name(wire).position_bytes(ModelSpec(smollm2).hidden_size)}, "payload bytes per position"
    for result in check_run(run, smollm2, model=smollm2_monolith):
        assert result.ok, (wire, result.first_mismatch, result.expected, result.replayed)


def test_auto_compresses_per_hop_by_uplink_and_the_oracle_replays_the_mix(require_root, tiny_prepared, tmp_path):
    """Emu nodes over SSH and the userspace switch: the user node on WiFi (the default) and node 2 on cellular
    send compressed, nodes 1 and 3 on server links bfloat16; node 2 is killed, so node 1 sends to node 3 directly."""
    tiny = tiny_prepared("llama")
    links = {1: resolve("server"), 2: resolve("cellular"), 3: resolve("server")}
    with emu_testbed("wire", 3, links) as bed:
        dep = deploy_even(bed, tiny, 3, wire_dtype="auto")
        run = run_job(bed, dep, {"prompts": ["the cat sat on the mat and then"], "max_new_tokens": 8,
                                 "ignore_eos": True}, [Fault("kill", (2,), at_token=3)], tmp_path / "run")
    assert dep.wire_dtypes == {"0": AUTO_COMPRESSED, "1": "bfloat16", "2": AUTO_COMPRESSED, "3": "bfloat16"}
    assert summary(run)["complete"] and read_tokens(run)["nodes_out"].iloc[-1] == "2"
    hidden = ModelSpec(tiny).hidden_size
    compressed = WireDtype.from_name(AUTO_COMPRESSED).position_bytes(hidden)
    received = [e for name in ("node1", "node2", "node3") for e in read_events(run / "nodes" / name / "events.jsonl")
                if e["ev"] == "recv"]
    sent_as = {(e["src"], e["bytes"] // e["positions"]) for e in received}
    assert sent_as == {(0, compressed), (1, 2 * hidden), (2, compressed)}, sent_as
    for result in check_run(run, tiny, model=Monolith(tiny)):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)
