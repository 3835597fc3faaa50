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


# Broken scenarios the loader once accepted without a word (adversarial review); each must now be refused
# before anything starts, naming the field and its line.
BASE = "name: x\nnodes: 3\nmax_new_tokens: 4\nprompts: [hi, there]\n"
BROKEN = {
    "fault-never-fires": (BASE + "faults:\n  - {at_token: 400, action: kill, node: 1}\n",
                          r"faults\.0\.at_token \(line 6\): token 400 is never generated"),
    "duplicate-kill": (BASE + "faults:\n  - {at_token: 1, action: kill, node: 2}\n"
                              "  - {at_token: 2, action: kill, node: 2}\n",
                       r"faults\.1\.action \(line 7\): kill of node 2, whose process is dead"),
    "resume-without-pause": (BASE + "faults:\n  - {at_token: 1, action: resume, node: 2}\n",
                             r"faults\.0\.action \(line 6\): resume of node 2, whose process is running"),
    "pause-forever": (BASE + "faults:\n  - {at_token: 1, action: pause, node: 2}\n",
                      r"faults\.0\.action \(line 6\): node 2 would stay paused after the run"),
    "cut-forever": (BASE + "faults:\n  - {at_token: 1, action: link_down, node: 2}\n",
                    r"faults\.0\.action \(line 6\): node 2 would stay cut"),
    "pause-after-kill": (BASE + "faults:\n  - {at_token: 1, action: kill, node: 2}\n"
                                "  - {at_token: 2, action: pause, node: 2, duration: 1}\n",
                         r"faults\.1\.action \(line 7\): pause of node 2, whose process is dead"),
    "prompt-past-the-prompts": (BASE + "faults:\n  - {at_token: 1, action: kill, node: 1, prompt: 2}\n",
                                r"faults\.0\.prompt \(line 6\): prompt 2 does not exist \(2 prompts\)"),
    "repeat-past-the-repeats": (BASE + "faults:\n  - {at_token: 1, action: kill, node: 1, repeat: 1}\n",
                                r"faults\.0\.repeat \(line 6\): repeat 1 does not exist"),
    "fault-on-the-user-node": (BASE + "faults:\n  - {at_token: 1, action: kill, node: 0}\n",
                               r"faults\.0\.node \(line 6\): fault targets node 0, but layer nodes are 1\.\.3"),
    "zero-heartbeat": (BASE + "timing: {heartbeat_ms: 0}\n", r"timing\.heartbeat_ms \(line 5\): must be a number > 0"),
    "negative-timing": (BASE + "timing:\n  ack_floor_ms: -5\n", r"timing\.ack_floor_ms \(line 6\): must be a number"),
    "fractional-attempts": (BASE + "timing: {max_attempts: 2.5}\n", r"timing\.max_attempts .*whole number"),
    "unknown-timing": (BASE + "timing: {heartbeats: 5}\n", r"timing\.heartbeats \(line 5\): unknown timing knob"),
    "link-for-a-missing-node": (BASE + "links: {all: wifi, 7: cellular}\n", r"links\.7 \(line 5\): nodes are 0"),
    "unknown-profile": (BASE + "links: {2: satellite}\n", r"links\.2 \(line 5\): unknown link profile 'satellite'"),
    "bad-link-key": (BASE + "links: {first: wifi}\n", r"links\.first \(line 5\): a link key is a node index"),
    "missing-prompts-file": ("name: x\nnodes: 3\nprompts_file: nowhere.txt\n",
                             r"prompts_file \(line 3\): .*nowhere\.txt does not exist"),
    "duplicate-key": (BASE + "nodes: 4\n", r"key 'nodes' appears twice \(lines 2 and 5\)"),
    "nodes-true": ("name: x\nnodes: true\nprompts: [hi]\n", r"nodes \(line 2\): Input should be a valid integer"),
    "placement-gap": (BASE + "placement: [[0, 3], [4, 6], [6, 9]]\n",
                      r"placement\.1 \(line 5\): starts at layer 4 but the previous range ends at 3: a gap"),
    "placement-overlap": (BASE + "placement: [[0, 3], [2, 6], [6, 9]]\n", r"placement\.1 \(line 5\): .* an overlap"),
    "placement-count": (BASE + "placement: [[0, 3], [3, 9]]\n", r"placement \(line 5\): lists 2 ranges for 3 nodes"),
    "path-in-the-name": ("name: ../../../victim\nnodes: 3\nprompts: [hi]\n", r"name \(line 1\): String should match"),
    "degrade-to-an-unknown-profile": (BASE + "faults:\n  - {at_token: 1, action: degrade, node: 1, profile: lte}\n",
                                      r"faults\.0\.profile \(line 6\): unknown link profile 'lte'; known: "),
    "degrade-to-a-broken-inline-profile": (BASE + "faults:\n  - {at_token: 1, action: degrade, node: 1, "
                                                  "profile: {delay_ms: -1}}\n",
                                           r"faults\.0\.profile \(line 6\): .*delay_ms must be a number"),
    "degrade-without-profile": (BASE + "faults:\n  - {at_token: 1, action: degrade, node: 1}\n",
                                r"faults\.0 \(line 6\): degrade needs a profile"),
    "duration-on-a-kill": (BASE + "faults:\n  - {at_token: 1, action: kill, node: 1, duration: 2}\n",
                           r"duration is for pause, link_down"),
    "one-way-without-to": (BASE + "faults:\n  - {at_seconds: 0, action: one_way_partition, from: 1, duration: 1}\n",
                           r"faults\.0 \(line 6\): one_way_partition takes from and to"),
    "one-way-to-itself": (BASE + "faults:\n  - {at_seconds: 0, action: one_way_partition, from: [1, 2], to: 2, "
                                 "duration: 1}\n", r"faults\.0\.to \(line 6\): a node cannot be cut off from itself"),
    "one-way-past-the-nodes": (BASE + "faults:\n  - {at_seconds: 0, action: one_way_partition, from: 0, to: 4, "
                                      "duration: 1}\n", r"faults\.0\.from \(line 6\): .*node 4, but nodes are 0\.\.3"),
    "corrupt-without-pct": (BASE + "faults:\n  - {at_token: 1, action: corrupt, node: 1, duration: 1}\n",
                            r"faults\.0 \(line 6\): corrupt needs pct"),
    "pct-on-a-kill": (BASE + "faults:\n  - {at_token: 1, action: kill, node: 1, pct: 5}\n",
                      r"pct is for corrupt, duplicate and reorder"),
    "pct-over-100": (BASE + "faults:\n  - {at_token: 1, action: reorder, node: 1, pct: 120, duration: 1}\n",
                     r"faults\.0\.pct \(line 6\): Input should be less than or equal to 100"),
    "flap-without-period": (BASE + "faults:\n  - {at_token: 1, action: flap, node: 1, duty: 0.5, duration: 2}\n",
                            r"flap needs period_ms, duty and duration"),
    "flap-duty-of-one": (BASE + "faults:\n  - {at_token: 1, action: flap, node: 1, period_ms: 100, duty: 1, "
                                "duration: 2}\n", r"faults\.0\.duty \(line 6\): Input should be less than 1"),
    "heal-of-a-clean-node": (BASE + "faults:\n  - {at_token: 1, action: heal, node: 2}\n",
                             r"faults\.0\.action \(line 6\): heal of node 2, whose impairment is clean"),
    "chaos-unknown-kind": (BASE + "chaos: {rate: 1, duration: 5, kinds: [explode]}\n",
                           r"chaos\.kinds\.0 \(line 5\): Input should be 'kill'"),
    "chaos-node-missing": (BASE + "chaos: {rate: 1, duration: 5, nodes: [9]}\n",
                           r"chaos\.nodes \(line 5\): chaos names node 9, but layer nodes are 1\.\.3"),
    "on-slow-replica-without-replicas": (BASE + "on_slow: replica\n",
                                         r"on_slow \(line 5\): on_slow: replica needs replicas"),
    "slow-without-factor": (BASE + "faults:\n  - {at_token: 1, action: slow, node: 1, duration: 2}\n",
                            r"faults\.0 \(line 6\): slow needs factor"),
    "chaos-without-rate": (BASE + "chaos: {duration: 5}\n", r"chaos\.rate \(line 5\): Field required"),
    "bridges-without-a-bridge-policy": (BASE + "bridges: {ridge: 0.001}\n",
                                        r"bridges \(line 5\): bridges are for on_failure: bridge .* not skip"),
    "bridge-corpus-missing": (BASE + "on_failure: bridge\nbridges: {corpus: nowhere.txt}\n",
                              r"bridges\.corpus \(line 6\): .*nowhere\.txt does not exist"),
    "bridge-file-and-fit-options": (BASE + "on_failure: bridge\nbridges: {file: b.safetensors, ridge: 0.1}\n",
                                    r"bridges\.file \(line 6\): a bridge file is used as it is"),
    "unknown-policy": (BASE + "on_failure: heal\n", r"on_failure \(line 5\): Input should be 'skip'"),
    "resilient-options-without-resilient": (BASE + "resilient: {copies: 2}\n",
                                            r"resilient \(line 5\): resilient options are for placement: resilient"),
    "resilient-with-replicas": (BASE + "placement: resilient\nreplicas: 1\n",
                                r"replicas \(line 6\): placement: resilient places its own replicas"),
    "resilient-criticality-missing": (BASE + "placement: resilient\nresilient: {criticality: nowhere.csv}\n",
                                      r"resilient\.criticality \(line 6\): nowhere\.csv does not exist"),
    "failure-p-of-one": (BASE + "failure_p: {all: 1.0}\n", r"failure_p\.all \(line 5\): Input should be less than 1"),
    "failure-p-bad-key": (BASE + "failure_p: {first: 0.1}\n", r"failure_p\.first \(line 5\): a failure_p key"),
    "wire-dtype-unknown": (BASE + "wire_dtype: int4\n", r"wire_dtype \(line 5\): Input should be 'float32'"),
    "prefill-chunk-negative": (BASE + "prefill_chunk: -8\n", r"prefill_chunk \(line 5\): prefill_chunk is auto or a "
                                                             r"number of positions >= 0 \(0: one frame\), not -8"),
    "prefill-chunk-words": (BASE + "prefill_chunk: big\n", r"prefill_chunk \(line 5\): .* not 'big'"),
    "batch-decode-zero": (BASE + "batch_decode: 0\n", r"batch_decode \(line 5\): Input should be greater than or equal to 1"),
    "batch-decode-float": (BASE + "batch_decode: 2.5\n", r"batch_decode \(line 5\): Input should be a valid integer"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_scenario_is_refused_naming_the_field_and_line(name, tmp_path):
    text, message = BROKEN[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


def test_what_users_naturally_write_is_accepted(tmp_path):
    path = tmp_path / "natural.yaml"
    path.write_text("name: natural-1\nnodes: 4\nprompts: [hi]\nmax_new_tokens: 8\n"
                    "links: {all: wifi, 2: cellular, 4: server, 0-1: ideal}\ntiming: {max_attempts: 3}\n"
                    "faults:\n  - {at_token: 2, action: pause, node: 2}\n  - {at_token: 5, action: resume, node: 2}\n")
    scenario = load_scenario(path)
    assert scenario.profile_of(2) == "cellular" and scenario.profile_of(3) == "wifi" and scenario.profile_of(0) == "ideal"
    from payload.config import Timing

    attempts = Timing(**scenario.timing).max_attempts
    assert attempts == 3 and isinstance(attempts, int), "a whole number must stay one (range() takes it)"
    assert scenario.prefill_chunk == "auto" and scenario.wire_dtype == "bfloat16"
    path.write_text(path.read_text() + "prefill_chunk: 64\nwire_dtype: auto\n")
    assert load_scenario(path).prefill_chunk == 64 and load_scenario(path).wire_dtype == "auto"
    assert scenario.batch_decode == 1, "batched decode is off unless asked for"
    path.write_text(path.read_text() + "batch_decode: 8\n")
    assert load_scenario(path).batch_decode == 8


def test_failure_probabilities_default_to_one_in_ten_and_follow_link_style_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(BASE + "failure_p: {all: 0.05, 2-3: 0.3, 3: 0.5}\n")
    assert load_scenario(path).failure_probabilities() == {1: 0.05, 2: 0.3, 3: 0.5}
    path.write_text(BASE)
    assert load_scenario(path).failure_probabilities() == {1: 0.1, 2: 0.1, 3: 0.1}


def test_placement_that_ends_short_of_the_model_is_refused_with_its_line(tmp_path):
    path = tmp_path / "short.yaml"
    path.write_text("name: x\nnodes: 2\nprompts: [hi]\nplacement: [[0, 3], [3, 5]]\n")
    with pytest.raises(ScenarioError, match=r"placement\.1 \(line 4\): the ranges end at layer 5, but model"):
        load_scenario(path).placement_for(6)


def test_a_run_directory_never_replaces_what_is_not_a_run(tmp_path):
    from experiment.collect import start_partial
    from payload.schema import RunDirError

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    with pytest.raises(RunDirError, match="is not a run directory"):
        start_partial(victim)
    assert (victim / "thesis.tex").read_text() == "years of work"
    (tmp_path / "new.partial").mkdir()
    (tmp_path / "new.partial" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="new.partial: it is not a run directory"):
        start_partial(tmp_path / "new")
