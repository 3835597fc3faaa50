"""``fab campaign`` on the local testbed with a tiny model: seeded draws run under every policy on the same
faults, each run oracle-checked and scored against the no-fault run, then the table and figure."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest
import yaml

from experiment.campaign import draw_schedules
from experiment.orchestrate import campaign
from testbed.interface import TestbedError
from tests.conftest import _save_tiny


def test_the_same_seed_draws_the_same_schedules_and_each_draw_fits_the_chain():
    first = draw_schedules(7, 20, nodes=6, max_new_tokens=24, max_lost=3)
    assert first == draw_schedules(7, 20, nodes=6, max_new_tokens=24, max_lost=3)
    assert first != draw_schedules(8, 20, nodes=6, max_new_tokens=24, max_lost=3)
    for draw in first:
        assert 1 <= len(draw.nodes) <= 3 and set(draw.nodes) <= set(range(1, 7)) and 1 <= draw.at_token <= 22
    assert {len(d.nodes) for d in first} == {1, 2, 3}
    with pytest.raises(TestbedError, match="max_lost"):
        draw_schedules(0, 1, nodes=3, max_new_tokens=24, max_lost=3)


def test_a_campaign_compares_policies_on_the_same_faults(tmp_path, monkeypatch):
    monkeypatch.setenv("JARVIS_CACHE", str(tmp_path / "cache"))
    source = _save_tiny("llama", tmp_path / "tiny")
    scenario = tmp_path / "campaign.yaml"
    scenario.write_text(yaml.safe_dump({"name": "tinycampaign", "model": str(source), "nodes": 3,
                                        "max_new_tokens": 8, "prompts": ["the cat sat on the"],
                                        "on_failure": "bridge", "bridges": {"tokens": 256}}))
    out = campaign("local", str(scenario), runs=2, seed=3, policies=["skip", "bridge", "replica-then-skip"],
                   max_lost=1, out=str(tmp_path / "out"), prefix=f"jv-test-{uuid.uuid4().hex[:8]}")
    rows = pd.read_csv(out / "campaign.csv", keep_default_na=False)
    assert len(rows) == 6 and rows.oracle_ok.all() and rows.complete.all()
    draws = rows.groupby("policy")[["nodes_killed", "at_token"]].apply(lambda g: g.values.tolist())
    assert draws["skip"] == draws["bridge"] == draws["replica-then-skip"], "every policy gets the same faults"
    assert (rows.layers_lost == 2).all()  # one of three 2-layer nodes
    replica = rows[rows.policy == "replica-then-skip"]
    assert (replica.agreement == 1.0).all() and replica.kl_after.astype(float).abs().max() < 1e-9, \
        "a replica's takeover is exact"
    assert (rows[rows.policy == "skip"].kl_after.astype(float) > 1e-6).all(), "skipping changes the distribution"
    settings = json.loads((out / "campaign.json").read_text())
    assert settings["seed"] == 3 and [tuple(d["nodes"]) for d in settings["draws"]] == [
        (int(n),) for n in rows[rows.policy == "skip"].nodes_killed]
    for name in ("campaign.md", "quality_vs_layers_lost.png", "quality_vs_layers_lost.pdf"):
        assert (out / name).stat().st_size > 0
    assert "replica-then-skip" in (out / "campaign.md").read_text()


def test_independent_failures_compare_resilient_with_even_placement_on_the_same_draws(tmp_path, monkeypatch):
    """Nodes fail independently with failure_p; the resilient plan (costs measured now) and even placement with
    the same replica copy run the same draws; a draw that loses nothing is the no-fault run."""
    monkeypatch.setenv("JARVIS_CACHE", str(tmp_path / "cache"))
    source = _save_tiny("llama", tmp_path / "tiny")
    scenario = tmp_path / "resilient.yaml"
    scenario.write_text(yaml.safe_dump({"name": "tinyresilient", "model": str(source), "nodes": 3,
                                        "max_new_tokens": 6, "prompts": ["the cat sat on the"],
                                        "placement": "resilient", "resilient": {"tokens": 64},
                                        "failure_p": {"all": 0.4}}))
    out = campaign("local", str(scenario), runs=4, seed=5, policies=["resilient", "even-budget"], max_lost=1,
                   independent=True, out=str(tmp_path / "out"), prefix=f"jv-test-{uuid.uuid4().hex[:8]}")
    rows = pd.read_csv(out / "campaign.csv", keep_default_na=False)
    draws = draw_schedules(5, 4, nodes=3, max_new_tokens=6, max_lost=1, failure_p={1: 0.4, 2: 0.4, 3: 0.4})
    assert [d.nodes for d in draws] != [(), (), (), ()] and any(not d.nodes for d in draws), \
        "this seed must give both kinds of draw"
    assert len(rows) == 8 and rows.oracle_ok.all() and set(rows.policy) == {"resilient", "even-budget"}
    for policy in ("resilient", "even-budget"):
        mine = rows[rows.policy == policy].reset_index()
        assert mine.nodes_killed.tolist() == [" ".join(map(str, d.nodes)) for d in draws]
        spared = mine[mine.nodes_killed == ""]
        assert (spared.run_dir == "runs/baseline").all() and (spared.kl_after.astype(float) == 0).all()
    assert json.loads((out / "campaign.json").read_text())["failure_p"] == {"1": 0.4, "2": 0.4, "3": 0.4}


def test_a_chaos_campaign_runs_each_seeded_chaos_schedule_under_every_policy(tmp_path, monkeypatch):
    """``--chaos``: draw i is the scenario's chaos schedule with seed + i (pauses and kills here), the same for
    every policy; each run oracle-checked, its first fault's step recorded as at_token."""
    from experiment.campaign import chaos_schedules
    from experiment.scenario import load_scenario

    monkeypatch.setenv("JARVIS_CACHE", str(tmp_path / "cache"))
    source = _save_tiny("llama", tmp_path / "tiny")
    scenario = tmp_path / "chaos.yaml"
    scenario.write_text(yaml.safe_dump({"name": "tinychaos", "model": str(source), "nodes": 3,
                                        "max_new_tokens": 48, "prompts": ["the cat sat on the"],
                                        "chaos": {"seed": 0, "rate": 20, "duration": 0.6, "kinds": ["pause", "kill"]}}))
    out = campaign("local", str(scenario), runs=3, seed=10, policies=["skip", "replica-then-skip"], chaos=True,
                   out=str(tmp_path / "out"), prefix=f"jv-test-{uuid.uuid4().hex[:8]}")
    rows = pd.read_csv(out / "campaign.csv", keep_default_na=False)
    draws = chaos_schedules(load_scenario(scenario), 10, 3)
    assert draws == chaos_schedules(load_scenario(scenario), 10, 3) and any(d.chaos for d in draws)
    assert len(rows) == 6 and rows.oracle_ok.all() and rows.complete.all()
    for policy in ("skip", "replica-then-skip"):
        mine = rows[rows.policy == policy]
        assert mine.nodes_killed.tolist() == [" ".join(map(str, d.nodes)) for d in draws]
    settings = json.loads((out / "campaign.json").read_text())
    assert [len(d["chaos"]) for d in settings["draws"]] == [len(d.chaos) for d in draws]
    assert settings["chaos"]["rate"] == 20
    with pytest.raises(TestbedError, match="has none"):
        campaign("local", _plain(tmp_path), runs=1, seed=0, policies=["skip"], chaos=True, prefix="jv-never")


def _plain(tmp_path) -> str:
    path = tmp_path / "plain.yaml"
    path.write_text("name: plain\nnodes: 2\nprompts: [hi]\n")
    return str(path)
