"""A node's clock set 250 ms off mid-run (``clock_skew``) is found by the analysis' clock-offset estimation.

Real SmolLM2 node processes on the local testbed, whose nodes share this machine's clock: before the fault
every pair's true offset is 0, after it node2's clock reads 250 ms ahead.  The analysis is told nothing: it
must find the step in the hop stamps alone and recover both offsets within the uncertainty it reports.
"""

from __future__ import annotations

import pandas as pd

from analysis.load import load
from analysis.metrics import compute
from experiment.run import Fault, run_job
from tests.integration.conftest import read_tokens, summary

MS = 1_000_000
SKEW_MS = 250


def test_a_250_ms_clock_skew_is_recovered_within_the_reported_uncertainty(smollm2, chain, tmp_path):
    with chain(smollm2, 3) as (testbed, deployment):
        run = run_job(testbed, deployment, {"prompts": ["The longest river in Europe is"], "max_new_tokens": 14,
                                            "ignore_eos": True},
                      [Fault("clock_skew", (2,), at_token=5, offset_ms=SKEW_MS, duration=600)], tmp_path / "run")
    assert summary(run)["complete"] and len(read_tokens(run)) == 14
    faults = pd.read_csv(run / "faults.csv", keep_default_na=False)
    assert faults["action"].tolist() == ["clock_skew", "heal"], "the skew is undone when the run ends"
    offsets = compute(load(run)).offsets.set_index(["src", "dst", "segment"])
    truth = {(1, 2): SKEW_MS * MS, (2, 3): -SKEW_MS * MS}  # clock(dst) - clock(src) after the fault
    for (src, dst), after in truth.items():
        pair = offsets.loc[(src, dst)]
        assert list(pair.index) == [0, 1], f"one clock step between node{src} and node{dst}"
        for segment, true in ((0, 0), (1, after)):
            row = pair.loc[segment]
            assert abs(row.offset_ns - true) <= row.uncertainty_ns, (src, dst, segment, row.to_dict())
            assert row.uncertainty_ns < 50 * MS, "tight enough to tell the step apart"
    steady = offsets.loc[(0, 1)]
    assert list(steady.index) == [0] and bool(steady.iloc[0].consistent), "pairs without node2 see no step"
