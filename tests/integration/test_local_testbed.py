"""The local testbed's lifecycle: down stops exactly what deploy started, and is safe to repeat."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from local.testbed import LocalTestbed
from testbed.interface import TestbedError
from tests.integration.conftest import local_testbed


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


def parent_and_session(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3])  # ppid, session id


def test_down_stops_every_service_started_in_parallel(tiny_prepared, chain):
    with chain(tiny_prepared("llama"), 6) as (tb, dep):
        root = tb.state_dir
        state = tb.store.load()
        nodes, spawner = set(state["pids"].values()), state["spawner"]["pid"]
        assert len(nodes) == 6
        assert set(processes_under(root)) == nodes | {spawner}
        # Nodes are forked from the warm spawner, each its own session (so faults hit one node's group only).
        assert {pid: parent_and_session(pid) for pid in nodes} == {pid: (spawner, pid) for pid in nodes}
        assert len(os.listdir(f"/proc/{spawner}/task")) == 1, "a fork must not copy locks held by other threads"
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


def test_payload_service_commands_are_forked_and_others_are_not():
    from testbed.shipping import service_argv
    from local.spawner import ModuleCall
    from testbed.interface import HostInfo

    host = HostInfo(name="node1", index=1, address="127.0.0.1", workdir="/tmp")
    call = ModuleCall.parse(service_argv(host, "payload.node", "--config", "node.json"))
    assert call is not None and call.module == "payload.node" and call.args == ["--config", "node.json"]
    assert call.env["HF_HUB_OFFLINE"] == "1"
    assert ModuleCall.parse(["sleep", "1000"]) is None
    assert ModuleCall.parse(["env", "A=1", "/usr/bin/python3-other", "-m", "payload.node"]) is None
    assert ModuleCall.parse(["env", "A=1", sys.executable, "script.py"]) is None


def test_an_edited_payload_gets_a_fresh_spawner(tmp_path):
    """The spawner keeps the code it imported: after an edit the testbed must not fork nodes from it."""
    import shutil

    repo = Path(__file__).resolve().parents[2]
    tree = tmp_path / "tree"
    for package in ("payload", "local"):
        shutil.copytree(repo / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    with local_testbed(1) as tb:
        assert tb._spawner(str(tree)) is not None
        first = tb.store.load()["spawner"]["pid"]
        tb._spawner(str(tree))
        assert tb.store.load()["spawner"]["pid"] == first, "unchanged code: same spawner"
        config = tree / "payload" / "config.py"
        config.write_text(config.read_text() + "\n# edited\n")
        tb._spawner(str(tree))
        second = tb.store.load()["spawner"]["pid"]
        assert second != first and not Path(f"/proc/{first}").exists()
        assert tb._spawner(str(repo)) is None, "another source tree is started afresh, not from this spawner"
    assert not Path(f"/proc/{second}").exists()


def test_a_bad_service_command_is_refused_and_the_spawner_serves_on():
    """argparse exits on a bad flag while the spawner prewarms; that must be an error reply, not its death."""
    from testbed.shipping import service_argv

    with local_testbed(1) as tb:
        host = tb.hosts()[1]
        for _ in range(2):
            with pytest.raises(RuntimeError, match="could not start payload.node: SystemExit"):
                tb.start_service(host, service_argv(host, "payload.node", "--no-such-flag"))
        spawner = tb.store.load()["spawner"]["pid"]
        assert Path(f"/proc/{spawner}").exists()
        assert tb.store.load()["pids"] == {}, "nothing was started"


def test_fab_experiment_runs_the_demo_scenario_end_to_end(tmp_path):
    """The quick start's main job (`fab experiment`, here on the local testbed): run dir, table, plots, down."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    prefix = "jv-test-demo"
    out = subprocess.run([str(Path(sys.executable).parent / "fab"), "experiment", "--testbed", "local",
                          "--scenario", str(repo / "scenarios" / "demo.yaml"), "--out", str(tmp_path / "run"),
                          "--prefix", prefix], cwd=repo, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    assert f"[experiment] results in {run}" in out.stdout
    assert "p50 ms" in out.stdout and "fault: kill node3 at token:8" in out.stdout, out.stdout[-3000:]
    assert json.loads((run / "summary.json").read_text())["complete"]
    assert f"report: {run / 'report.md'}" in out.stdout and (run / "report.md").exists()
    figures = sorted(p.relative_to(run) for p in (run / "figures").glob("*.png"))
    assert figures and f"figures ({len(figures)}): " in out.stdout
    assert all(str(figure) in out.stdout for figure in figures), "the terminal names every plot"
    assert not (LocalTestbed(prefix).state_dir).exists(), "experiment must bring the testbed down"


def test_a_host_s_file_is_followed_as_it_is_written():
    from tests.follow_check import assert_follows
    from tests.integration.conftest import local_testbed

    with local_testbed(1) as testbed:
        assert_follows(testbed, testbed.hosts()[1])
