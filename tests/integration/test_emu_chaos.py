"""Runs under each of the chaos-grade fault kinds, and under a seeded chaos schedule, on the emulated testbed.

Real node processes over real SSH and the userspace switch, with the bundled SmolLM2 on 4 layer nodes; one
deployment serves every case (each fault is healed within its run).  Each run must generate every token, record
the fault and its heal in faults.csv, leave no impairment behind, and pass the consistency oracle: whatever the
links did to frames, every token is the one the model computes on the route the chain took.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiment.orchestrate import faults_from
from experiment.replay import check_run
from experiment.run import Fault, run_job
from experiment.scenario import load_scenario
from emu import state
from tests.emu.conftest import emu_testbed, require_root  # noqa: F401  (fixture)
from tests.integration.conftest import deploy_even

PROMPT = "The three most important inventions of the twentieth century are"
JOB = {"prompts": [PROMPT], "max_new_tokens": 8, "ignore_eos": True}
CASES = {
    "one-way partition": (Fault("one_way_partition", (2,), at_token=2, duration=1.5, to=(3,)),
                          ["one_way_partition", "heal"]),
    "blackhole": (Fault("blackhole", (3,), at_token=2, duration=1.5), ["blackhole", "heal"]),
    "corrupt": (Fault("corrupt", (2,), at_seconds=0.0, duration=3, pct=20), ["corrupt", "heal"]),
    "duplicate": (Fault("duplicate", (2,), at_seconds=0.0, duration=3, pct=30), ["duplicate", "heal"]),
    "reorder": (Fault("reorder", (2,), at_seconds=0.0, duration=3, pct=30), ["reorder", "heal"]),
    "flap": (Fault("flap", (4,), at_token=1, duration=1.2, period_ms=400, duty=0.5), ["link_down", "link_up"] * 3),
    "slow": (Fault("slow", (2,), at_token=2, factor=3), ["slow", "heal"]),  # no duration: healed as the run ends
    "clock skew": (Fault("clock_skew", (3,), at_token=2, offset_ms=250), ["clock_skew", "heal"]),
    "correlated kill": (Fault("kill", (2, 3), at_token=3), ["kill"]),
}


@pytest.fixture(scope="module")
def deployed(require_root, smollm2):
    with emu_testbed("chaos", 4) as bed:
        yield bed, deploy_even(bed, smollm2, 4)


def check(bed, run, smollm2, monolith) -> tuple[pd.DataFrame, pd.DataFrame]:
    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False, dtype={"nodes_out": str, "layers": str})
    faults = pd.read_csv(run / "faults.csv", keep_default_na=False)
    assert json.loads((run / "summary.json").read_text())["complete"]
    assert len(tokens) == JOB["max_new_tokens"]
    assert not faults["detail"].str.startswith("FAILED").any(), faults["detail"].tolist()
    manifest = state.load(bed.prefix)
    assert not manifest.get("impairments") and not manifest.get("one_way") and not manifest.get("skews"), \
        "every impairment healed"
    for result in check_run(run, smollm2, model=monolith):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)
    return tokens, faults


def test_a_seeded_chaos_schedule_runs_as_drawn_and_ends_healed(deployed, smollm2, smollm2_monolith, tmp_path):
    bed, dep = deployed
    path = tmp_path / "chaos.yaml"
    path.write_text("name: chaos\nnodes: 4\nprompts: [hi]\nmax_new_tokens: 8\n"
                    "chaos: {seed: 11, rate: 2, duration: 4, kinds: [pause, blackhole, one_way_partition, corrupt]}\n")
    faults = faults_from(load_scenario(path))
    assert len(faults) >= 3, "the seed is chosen so that the window holds a few faults"
    run = run_job(bed, dep, JOB | {"max_new_tokens": 24}, faults, tmp_path / "run")
    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False)
    recorded = pd.read_csv(run / "faults.csv", keep_default_na=False)
    assert len(tokens) == 24 and json.loads((run / "summary.json").read_text())["complete"]
    started = recorded[~recorded["action"].isin(["heal", "resume"])]
    assert len(started) >= 3, "the window is shorter than the run: most drawn faults fire"
    assert started["trigger"].tolist() == [f"seconds:{f.at_seconds}" for f in faults][: len(started)]
    assert len(recorded) == 2 * len(started), "each drawn fault is undone, within the run or as it ends"
    manifest = state.load(bed.prefix)
    assert not manifest.get("impairments") and not manifest.get("one_way")
    for result in check_run(run, smollm2, model=smollm2_monolith):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_under_each_fault_kind_completes_and_the_oracle_holds(deployed, smollm2, smollm2_monolith, tmp_path,
                                                                    case):
    """Each fault is healed within its run, but for the correlated kill, the last case (the nodes stay dead)."""
    bed, dep = deployed
    fault, actions = CASES[case]
    run = run_job(bed, dep, JOB, [fault], tmp_path / "run")
    tokens, faults = check(bed, run, smollm2, smollm2_monolith)
    assert faults["action"].tolist() == actions
    if case == "correlated kill":
        out = set(" ".join(tokens["nodes_out"].iloc[4:]).split())
        assert {"2", "3"} <= out, "both killed nodes routed around"
        kill = faults.iloc[0]
        assert kill["target"] == "node2 node3"
