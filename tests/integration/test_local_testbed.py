"""The local testbed's lifecycle: down stops exactly what deploy started, and is safe to repeat."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiment.local import LocalTestbed
from experiment.testbed import TestbedError


def processes_under(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(str(root)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_down_stops_every_service_started_in_parallel(tiny_prepared, chain):
    with chain(tiny_prepared("llama"), 6) as (tb, dep):
        root = tb.root
        assert len(processes_under(root)) == 6
    assert processes_under(root) == []
    assert not root.exists()
    LocalTestbed(tb.prefix).down()  # already gone: still fine


def test_tasks_on_a_testbed_that_is_not_up_say_so():
    with pytest.raises(TestbedError, match="fab up --testbed local"):
        LocalTestbed("jv-never-up").hosts()


def test_collect_again_is_idempotent(tiny_prepared, chain, tmp_path):
    from experiment.collect import recollect
    from experiment.run import run_job

    with chain(tiny_prepared("llama"), 2) as (tb, dep):
        run = run_job(tb, dep, {"prompts": ["the cat"], "max_new_tokens": 3}, [], tmp_path / "run")
        first = {p.name: p.read_bytes() for p in run.glob("*.csv")}
        recollect(tb, dep, run)
        recollect(tb, dep, run)
    assert {p.name: p.read_bytes() for p in run.glob("*.csv")} == first
