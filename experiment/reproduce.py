"""Reproduce the original study's two topologies, with and without a mid-generation node kill.

Runs ``scenarios/study-colosseum-18.yaml`` (18 one-layer nodes over a blend of
WiFi, cellular and server links) and ``scenarios/study-rpi-7.yaml`` (7 WiFi
nodes, 2-3 layers each), each once as shipped (a node is killed mid-generation)
and once with its faults removed, then writes the comparison figures.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml

from experiment.orchestrate import experiment

STUDY = ("scenarios/study-colosseum-18.yaml", "scenarios/study-rpi-7.yaml")


def without_faults(scenario: Path, into: Path) -> Path:
    """A copy of ``scenario`` with no faults: the baseline of the same topology."""
    data = yaml.safe_load(scenario.read_text())
    data["name"] = f"{data['name']}-nofault"
    data["faults"] = []
    target = into / f"{data['name']}.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def reproduce(testbed: str = "emu", *, out: Path | None = None, scenarios: tuple[str, ...] = STUDY) -> Path:
    """Run every study scenario with and without its fault; return the comparison report."""
    from analysis.compare import compare

    root = Path(__file__).resolve().parent.parent
    out = Path(out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-reproduce")
    out.mkdir(parents=True, exist_ok=True)
    runs: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in scenarios:
            shipped = root / rel
            for variant in (without_faults(shipped, Path(tmp)), shipped):
                name = yaml.safe_load(variant.read_text())["name"]
                runs.append(experiment(testbed, str(variant), out=str(out / name)))
    return compare(runs, out / "comparison")
