"""The chain on either event loop (payload/eventloop.py): real node processes, the same tokens, and every
process saying in its ``ready`` event which loop it runs on, and that it froze what it had loaded
(payload/collector.py: else a full garbage collection pauses a node for hundreds of ms)."""

from __future__ import annotations

import pytest

from experiment.run import run_job
from payload.events import read_events
from testbed.interface import TestbedError
from tests.integration.conftest import deploy_even, local_testbed, read_tokens
from tests.integration.test_local_chain import monolithic

PROMPT = "The capital of France is"


def ready_events(run) -> dict[str, dict]:
    return {log.parent.name: next(e for e in read_events(log) if e["ev"] == "ready")
            for log in sorted(run.glob("nodes/*/events.jsonl"))}


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_chain_gives_generates_tokens_on_either_loop(smollm2, tmp_path, loop):
    expected = monolithic(smollm2, PROMPT, 8)
    with local_testbed(3) as testbed:
        dep = deploy_even(testbed, smollm2, 3, wire_dtype="float32", event_loop=loop)
        assert dep.event_loop == loop
        run = run_job(testbed, dep, {"prompts": [PROMPT], "max_new_tokens": 8}, [], tmp_path / "run")
    assert read_tokens(run)["token_id"].tolist() == expected[: len(read_tokens(run))]
    ready = ready_events(run)
    assert {name: e["event_loop"] for name, e in ready.items()} == {"node1": loop, "node2": loop, "node3": loop,
                                                                   "user": loop}
    assert all(e["gc_frozen"] > 100_000 for e in ready.values()), {name: e["gc_frozen"] for name, e in ready.items()}


def test_an_unknown_loop_is_refused_at_deploy(smollm2):
    with local_testbed(1) as testbed, pytest.raises(TestbedError, match="unknown event_loop 'gevent'"):
        deploy_even(testbed, smollm2, 1, event_loop="gevent")
