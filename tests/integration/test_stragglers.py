"""A straggler is not a crash: node2 slowed 5x (testbed/straggler.py) on real SmolLM2 node processes.

On the local testbed, one prompt of 40 tokens, side by side in one deployment per policy: fault-free, then
node2 slowed 5x from token 8 to the end.  ``on_slow: wait`` keeps node2 (tokens stay exact, and slow);
``on_slow: skip`` routes around it once it is found slow (its layers skipped; the oracle replays that), so the
median per-token latency stays within 1.5x of the fault-free run's, which ``wait``'s does not.  Either way the
fault is classified ``slow`` by the analysis, never ``crash`` or ``silent``.
"""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

from analysis.load import load
from analysis.metrics import compute
from experiment.replay import check_run
from experiment.run import Fault, run_job
from payload.stragglers import OnSlow
from tests.integration.conftest import deploy_even, local_testbed, read_tokens, summary

pytestmark = pytest.mark.serial  # tells slowed from failed by step times (make test runs it alone)

JOB = {"prompts": ["Write a short story about a lighthouse keeper and a storm."], "max_new_tokens": 40,
       "ignore_eos": True}
SLOW = Fault("slow", (2,), at_token=8, factor=5, duration=600)


def median_ms(run, since: int = 0) -> float:
    tokens = read_tokens(run)
    return statistics.median(tokens.loc[tokens["step"] >= max(1, since), "latency_ns"]) / 1e6


@pytest.mark.timeout(300)
def test_a_slowed_node_is_slow_not_failed_and_skip_keeps_latency_where_wait_does_not(smollm2, smollm2_monolith,
                                                                                   tmp_path):
    medians = {}
    with local_testbed(4) as testbed:
        for on_slow in (OnSlow.WAIT, OnSlow.SKIP):
            deployment = deploy_even(testbed, smollm2, 4, on_slow=on_slow)
            if on_slow == OnSlow.WAIT:
                medians["fault-free"] = median_ms(run_job(testbed, deployment, JOB, [], tmp_path / "free"))
            run = run_job(testbed, deployment, JOB, [SLOW], tmp_path / on_slow.value)
            assert summary(run)["complete"] and len(read_tokens(run)) == 40
            medians[on_slow.value] = median_ms(run, since=9)
            faults = compute(load(run)).faults.set_index("action")
            assert faults.loc["slow", "detected_as"] == "slow", faults.to_dict()
            assert faults.loc["slow", "detection_ns"] < 5e9
            assert list(pd.read_csv(run / "faults.csv")["action"]) == ["slow", "heal"]
            tokens = read_tokens(run)
            skipped = tokens["nodes_out"].astype(str).str.contains("2")
            assert skipped.any() == (on_slow == OnSlow.SKIP), "only skip routes around the straggler"
            for result in check_run(run, smollm2, model=smollm2_monolith):
                assert result.ok, (on_slow, result.first_mismatch)
    print(f"median per-token latency (ms): {medians}")
    assert medians["skip"] <= 1.5 * medians["fault-free"], medians
    assert medians["wait"] > 1.5 * medians["fault-free"], medians
