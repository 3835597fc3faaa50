"""Link cuts on the emulated testbed, over real SSH and shaped WiFi links, with the bundled SmolLM2.

One deployment serves every case: a cut link comes back up (``duration``) and the
next run's user node starts with nobody marked out, so each case is one run.
Every combination the resilience issue asks for where a testbed can cut links:
the first, a middle, the last and two adjacent layer nodes, as the prompt is sent
(prefill) and mid-decode.  Each run must finish, show the cut nodes out, and
pass the consistency oracle.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiment.replay import check_run
from experiment.run import Fault, run_job
from tests.emu.conftest import emu_testbed, require_root  # noqa: F401  (fixture)
from tests.integration.conftest import deploy_even, nodes_out_per_token

PROMPT = "The three most important inventions of the twentieth century are"
TARGETS = {"first": (1,), "middle": (2,), "last": (4,), "two adjacent": (2, 3)}


@pytest.fixture(scope="module")
def deployed(require_root, smollm2):
    with emu_testbed("cuts", 4) as bed:
        yield bed, deploy_even(bed, smollm2, 4)


@pytest.mark.parametrize("when", ["prefill", "decode"])
@pytest.mark.parametrize("where", list(TARGETS))
def test_link_cut_is_skipped_and_oracle_holds(deployed, smollm2, smollm2_monolith, tmp_path, where, when):
    bed, dep = deployed
    targets = TARGETS[where]
    trigger = {"at_seconds": 0.0} if when == "prefill" else {"at_token": 3}
    run = run_job(bed, dep, {"prompts": [PROMPT], "max_new_tokens": 8, "ignore_eos": True},
                  [Fault("link_down", targets, duration=1.5, **trigger)], tmp_path / "run")
    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False, dtype={"nodes_out": str, "layers": str})
    faults = pd.read_csv(run / "faults.csv", keep_default_na=False)
    assert json.loads((run / "summary.json").read_text())["complete"]
    assert len(tokens) == 8
    assert faults["action"].tolist() == ["link_down", "link_up"], "the cut link must come back up"
    seen_out = set().union(*nodes_out_per_token(tokens, dep.placement_obj()))
    assert set(targets) <= seen_out, f"cut nodes {targets} never marked out ({seen_out})"
    for result in check_run(run, smollm2, model=smollm2_monolith):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)
