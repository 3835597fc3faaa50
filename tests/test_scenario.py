"""Scenario files: shipped ones validate; broken ones fail naming the field and its line."""

from pathlib import Path

import pytest

from experiment.scenario import ScenarioError, load_scenario

SHIPPED = sorted(Path(__file__).resolve().parent.parent.glob("scenarios/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenarios_validate(path):
    scenario = load_scenario(path)
    assert scenario.prompts and scenario.nodes >= 1


def test_error_names_field_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: 3\nprompts: [hi]\nfaults:\n  - {at_token: 2, action: explode, node: 1}\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert "faults.0.action" in str(err.value) and "line 5" in str(err.value)


def test_fault_on_missing_node_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: 3\nprompts: [hi]\nfaults:\n  - {at_token: 2, action: kill, node: 7}\n")
    with pytest.raises(ScenarioError, match="layer nodes are 1..3"):
        load_scenario(bad)


def test_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


def test_unknown_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: 3\nprompts: [hi]\nnodez: 4\n")
    with pytest.raises(ScenarioError, match="nodez"):
        load_scenario(bad)


def test_memory_placement_weights_by_reported_memory(tmp_path):
    path = tmp_path / "mem.yaml"
    path.write_text("name: x\nnodes: 2\nplacement: memory\nprompts: [hi]\n")
    scenario = load_scenario(path)
    assert scenario.placement_for(12, {1: 1 << 30, 2: 3 << 30}).slices == {1: (0, 3), 2: (3, 12)}
    with pytest.raises(ScenarioError, match="reported memory"):
        scenario.placement_for(12)
