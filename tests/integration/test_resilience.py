"""Failures mid-generation on real processes with the real SmolLM2: every run finishes and the oracle holds."""

from __future__ import annotations

import pytest

from experiment.replay import Monolith, check_run
from experiment.run import Fault, run_job
from tests.integration.conftest import read_tokens, summary

PROMPTS = ["The three most important inventions of the twentieth century are"]
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def prepared(bundled):
    return bundled(MODEL)


@pytest.fixture(scope="module")
def monolith(prepared):
    return Monolith(prepared)


@pytest.mark.parametrize("action,targets,at_token", [
    ("kill", (2,), 3),          # middle node mid-decode
    ("kill", (1,), 2),          # first node: critical
    ("kill", (4,), 2),          # last node: critical
    ("kill", (2, 3), 2),        # two adjacent nodes
    ("pause", (3,), 2),         # silent node (SIGSTOP), detected by deadline/heartbeat
])
def test_fault_mid_decode_is_skipped_and_oracle_holds(prepared, monolith, chain, tmp_path, action, targets,
                                                       at_token):
    with chain(prepared, 4) as (tb, dep):
        faults = [Fault(action, targets, at_token=at_token)]
        run = run_job(tb, dep, {"prompts": PROMPTS, "max_new_tokens": 10}, faults, tmp_path / "run")
        if action == "pause":
            for t in targets:
                tb.resume([h for h in tb.hosts() if h.index == t][0])
    tokens = read_tokens(run)
    assert summary(run)["complete"], summary(run)
    assert len(tokens) == 10
    skipped_layers = {i for n in targets for i in range(*dep.placement_obj().slices[n])}
    last_layers = set(map(int, tokens["layers"].iloc[-1].split()))
    assert not (skipped_layers & last_layers), "failed nodes' layers must not be applied after the fault"
    assert set(tokens["layers"].iloc[0].split()) == {str(i) for i in range(30)}
    for result in check_run(run, prepared, model=monolith):
        assert result.ok, (result.expected, result.replayed)


def test_kill_during_prefill(prepared, monolith, chain, tmp_path):
    with chain(prepared, 3) as (tb, dep):
        run = run_job(tb, dep, {"prompts": PROMPTS, "max_new_tokens": 6},
                      [Fault("kill", (2,), at_seconds=0.0)], tmp_path / "run")
    assert summary(run)["complete"]
    for result in check_run(run, prepared, model=monolith):
        assert result.ok


def test_replica_takeover_gives_the_no_fault_tokens(prepared, chain, tmp_path):
    job = {"prompts": PROMPTS, "max_new_tokens": 10}
    with chain(prepared, 3, replicas=1, policy="replica") as (tb, dep):
        baseline = run_job(tb, dep, job, [], tmp_path / "base")
        faulted = run_job(tb, dep, job, [Fault("kill", (2,), at_token=4)], tmp_path / "fault")
    base, fault = read_tokens(baseline), read_tokens(faulted)
    assert fault["token_id"].tolist() == base["token_id"].tolist()
    assert fault["nodes_out"].iloc[-1] == "2"
    assert fault["rebuilt"].str.len().sum() > 0, "the replica must have rebuilt its cache by replay"
