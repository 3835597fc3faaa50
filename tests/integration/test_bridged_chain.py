"""``on_failure: bridge`` on real node processes with the real SmolLM2: the node before a gap (the user node,
for a gap at the start) bridges the lost slices, tokens.csv says which, and the oracle replays it exactly."""

from __future__ import annotations

import json

import pytest

from experiment.replay import check_run
from experiment.run import Fault, run_job
from payload.config import Timing
from payload.prepare import load_manifest
from payload.routing import Policy, even_placement
from quality.bridges import bridge_file
from tests.integration.conftest import deploy_even, local_testbed, read_tokens, summary

PROMPTS = ["The three most important inventions of the twentieth century are"]
NODES = 4


@pytest.fixture(scope="module")
def bridges(smollm2):
    """The 4-node placement's bridges, fitted on 1,024 calibration tokens (cached beside the prepared model)."""
    placement = even_placement(load_manifest(smollm2)["num_layers"], NODES)
    return bridge_file(smollm2, [placement.slices[n] for n in placement.nodes], tokens=1024, progress=lambda m: None)


@pytest.fixture(scope="module")
def testbed():
    with local_testbed(NODES) as testbed:
        yield testbed


def spans_of(placement, nodes: tuple[int, ...]) -> str:
    """The ``bridges`` cell of a step routed around ``nodes`` (each run of adjacent ones is one span)."""
    layers = sorted(i for n in nodes for i in range(*placement.slices[n]))
    runs: list[list[int]] = []
    for layer in layers:
        if runs and runs[-1][-1] == layer - 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return " ".join(f"{r[0]}-{r[-1]}" for r in runs)


# The first node's loss is bridged by the user node, a middle one's by its predecessor, the last one's by the
# node before it on the last position only; two adjacent losses by their two bridges in turn.
@pytest.mark.parametrize("targets", [(1,), (2,), (4,), (2, 3)], ids=["first", "middle", "last", "two-adjacent"])
def test_a_killed_node_is_bridged_and_the_oracle_replays_it(testbed, smollm2, smollm2_monolith, bridges, tmp_path, targets):
    dep = deploy_even(testbed, smollm2, NODES, policy=Policy.BRIDGE, bridges=bridges)
    run = run_job(testbed, dep, {"prompts": PROMPTS, "max_new_tokens": 8}, [Fault("kill", targets, at_token=3)],
                  tmp_path / "run")
    tokens = read_tokens(run)
    assert summary(run)["complete"], summary(run)
    placement = dep.placement_obj()
    assert tokens["bridges"].iloc[:3].tolist() == ["", "", ""]
    assert tokens["bridges"].iloc[-1] == spans_of(placement, targets), tokens[["nodes_out", "bridges"]]
    lost = {str(i) for n in targets for i in range(*placement.slices[n])}
    assert not lost & set(tokens["layers"].iloc[-1].split()), "bridged layers are not applied"
    deployment = json.loads((run / "deployment.json").read_text())
    assert deployment["policy"] == "bridge" and deployment["bridges"] == str(bridges)
    for result in check_run(run, smollm2, model=smollm2_monolith):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)


def test_a_bridged_node_rejoins_from_its_predecessors_own_output(smollm2, smollm2_monolith, bridges, tmp_path):
    """Nodes 2 and 3 stop; node 1 bridges both.  Node 3 comes back first: node 1 sends it its history through
    node 2's bridge (one frame, one bridge over every position); then node 2 rejoins and rebuilds from node 1's
    own output.  Every step replays exactly."""
    with local_testbed(NODES) as tb:
        dep = deploy_even(tb, smollm2, NODES, policy=Policy.BRIDGE, bridges=bridges,
                          timing=Timing(rejoin_after_s=0.2))
        hosts = {h.index: h for h in tb.hosts()}
        faults = [Fault("pause", (2, 3), at_token=2), Fault("resume", (3,), at_token=6),
                  Fault("resume", (2,), at_token=30)]
        run = run_job(tb, dep, {"prompts": PROMPTS, "max_new_tokens": 44}, faults, tmp_path / "run")
        for index in (2, 3):
            tb.resume(hosts[index])
    tokens = read_tokens(run)
    assert summary(run)["complete"], summary(run)
    placement = dep.placement_obj()
    node3 = " ".join(map(str, range(*placement.slices[3])))
    only_2 = tokens[tokens["nodes_out"] == "2"]
    assert (only_2["bridges"] == spans_of(placement, (2,))).all()
    assert only_2["rebuilt"].str.contains(node3).any(), "node 3 must rebuild behind a bridge"
    assert (tokens["bridges"] == spans_of(placement, (2, 3))).any(), "both must have been bridged at once"
    assert tokens["nodes_out"].iloc[-1] == "" and tokens["bridges"].iloc[-1] == ""
    for result in check_run(run, smollm2, model=smollm2_monolith):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)


def test_a_bridge_policy_without_bridges_is_refused_before_anything_starts(testbed, smollm2):
    from testbed.interface import TestbedError

    with pytest.raises(TestbedError, match="needs the placement's bridges"):
        deploy_even(testbed, smollm2, NODES, policy=Policy.BRIDGE)
