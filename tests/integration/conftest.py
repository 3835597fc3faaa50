"""Local chains of real node processes on loopback, torn down after each test."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import pytest

from experiment.deploy import deploy
from experiment.local import LocalTestbed
from payload.config import Timing
from payload.prepare import load_manifest
from payload.routing import Policy, even_placement


@contextlib.contextmanager
def local_chain(prepared: Path, nodes: int, *, policy: str = "skip", replicas: int = 0, wire: str = "bfloat16",
                timing: Timing = Timing()):
    testbed = LocalTestbed(f"jv-test-{uuid.uuid4().hex[:8]}")
    testbed.up(nodes)
    try:
        num_layers = load_manifest(prepared)["num_layers"]
        deployment = deploy(testbed, prepared, even_placement(num_layers, nodes, replicas), model=str(prepared),
                            policy=Policy(policy), wire_dtype=wire, timing=timing, progress=lambda m: None)
        yield testbed, deployment
    finally:
        testbed.down()


@pytest.fixture
def chain():
    return local_chain


def read_tokens(run: Path):
    import pandas as pd

    return pd.read_csv(run / "tokens.csv", keep_default_na=False)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())
