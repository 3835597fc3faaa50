"""Synthetic run directories shared by the analysis tests (written once per session; treat as read-only)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from experiment.synth import Kill, Spec, Truth, write_run

FAULTED = Spec(nodes=4, layers=8, prompts=2, tokens=12, profiles=("wifi", "lte", "server"),
               kills=(Kill(node=2, token=4),), seed=7)


@dataclass(frozen=True)
class Runs:
    faulted: Path
    baseline: Path
    truth: Truth


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A run with node2 killed after token 4 of its first session, and its fault-free twin."""
    root = tmp_path_factory.mktemp("runs")
    truth = write_run(root / "faulted", FAULTED)
    write_run(root / "baseline", dataclasses.replace(FAULTED, kills=()))
    return Runs(root / "faulted", root / "baseline", truth)


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    """A fresh run a test may modify."""
    write_run(tmp_path / "run", Spec(nodes=2, layers=4, tokens=6, kills=(Kill(node=1, token=2),)))
    return tmp_path / "run"
