"""Local chains of real node processes on loopback, torn down after each test."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import pytest

from experiment.deploy import deploy
from local.testbed import LocalTestbed
from payload.config import Timing
from payload.prepare import load_manifest
from payload.routing import Policy, even_placement


def deploy_even(testbed, prepared: Path, nodes: int, *, replicas: int = 0, **options):
    """Deploy ``prepared`` over ``nodes`` layer nodes with the even placement, quietly."""
    placement = even_placement(load_manifest(prepared)["num_layers"], nodes, replicas)
    options.setdefault("ready_timeout_s", 120.0)  # a node that never starts fails with its output, not a test timeout
    return deploy(testbed, prepared, placement, model=str(prepared), progress=lambda m: None, **options)


@pytest.fixture(scope="module")
def smollm2(bundled):
    return bundled("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smollm2_monolith(smollm2):
    """The consistency oracle's model of SmolLM2, loaded once per module."""
    from experiment.replay import Monolith

    return Monolith(smollm2)


@contextlib.contextmanager
def local_testbed(nodes: int):
    """A local testbed of ``nodes`` layer nodes under a fresh prefix, brought down afterwards."""
    testbed = LocalTestbed(f"jv-test-{uuid.uuid4().hex[:8]}")
    testbed.up(nodes)
    try:
        yield testbed
    finally:
        testbed.down()


@contextlib.contextmanager
def local_chain(prepared: Path, nodes: int, *, policy: str = "skip", replicas: int = 0, wire: str = "bfloat16",
                timing: Timing = Timing()):
    with local_testbed(nodes) as testbed:
        yield testbed, deploy_even(testbed, prepared, nodes, replicas=replicas, policy=Policy(policy),
                                   wire_dtype=wire, timing=timing)


@pytest.fixture
def chain():
    return local_chain


def read_tokens(run: Path):
    import pandas as pd

    return pd.read_csv(run / "tokens.csv", keep_default_na=False)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def nodes_out_per_token(tokens, placement) -> list[set[int]]:
    """Each token's ``nodes_out``, after checking that no out node's layers were applied at that token."""
    out_sets = [set(map(int, str(row).split())) for row in tokens["nodes_out"]]
    for out, layers in zip(out_sets, tokens["layers"]):
        for node in out:
            applied = {str(i) for i in range(*placement.slices[node])} & set(str(layers).split())
            assert not applied, f"node {node} is out but its layers {sorted(applied)} were applied"
    return out_sets
