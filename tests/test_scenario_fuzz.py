"""Property-based fuzzing of the scenario loader (hypothesis), bounded in time; a longer run by hand:

    JARVIS_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_scenario_fuzz.py -q

Whatever a scenario file holds, loading it gives a Scenario or a ScenarioError that names a field or the
file: never another exception (a traceback is a bug in the loader, not the user's to read).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiment.scenario import ScenarioError, load_scenario

EXAMPLES = int(os.environ.get("JARVIS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["name", "nodes", "model", "placement", "replicas", "on_failure", "links", "prompts", "prompts_file",
        "max_new_tokens", "sampling", "seed", "repeats", "concurrency", "chat", "ignore_eos", "wire_dtype",
        "compute_dtype", "encrypt", "faults", "timing", "description", "bridges", "resilient", "failure_p", "chaos", "on_slow"]
FAULT_KEYS = ["action", "node", "nodes", "at_token", "at_seconds", "prompt", "repeat", "duration", "profile", "from",
              "to", "pct", "period_ms", "duty", "offset_ms", "factor"]
ACTIONS = ["kill", "pause", "resume", "link_down", "link_up", "degrade", "partition", "flap", "one_way_partition",
           "blackhole", "corrupt", "duplicate", "reorder", "clock_skew", "slow", "heal", "explode"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(ACTIONS + ["wifi", "cellular", "even", "all", "1-3", "x"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(st.text(max_size=6),
                                                                                 st.integers(0, 9)),
                                                                       inner, max_size=4)), max_leaves=12)
faults = st.lists(st.dictionaries(st.sampled_from(FAULT_KEYS), st.one_of(values, st.sampled_from(ACTIONS),
                                                                         st.integers(0, 6)), max_size=6), max_size=4)
scenarios = st.dictionaries(st.sampled_from(KEYS), values, max_size=12).flatmap(
    lambda doc: st.just(doc) | faults.map(lambda fs: {**doc, "faults": fs}))


def loads_or_refuses_clearly(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_text(text)
        try:
            load_scenario(path)
        except ScenarioError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(scenarios)
def test_any_document_loads_or_is_refused_with_a_scenario_error(document):
    base = {"name": "fuzz", "nodes": 3, "prompts": ["hi"]}
    loads_or_refuses_clearly(yaml.safe_dump({**base, **document}))


@FUZZ
@given(st.text(max_size=300))
def test_any_text_loads_or_is_refused_with_a_scenario_error(text):
    loads_or_refuses_clearly(text)
