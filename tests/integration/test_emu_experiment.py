"""Orchestration over real SSH into namespaced nodes: deploy, run with faults, collect, check the run directory."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from emu import system
from experiment.deploy import files_for, ship_model
from experiment.replay import Monolith, check_run
from experiment.run import Fault, run_job
from payload.prepare import MANIFEST, load_manifest
from testbed.interface import TestbedError
import payload.node
from tests.emu.conftest import emu_testbed, require_root  # noqa: F401  (fixture)
from tests.integration.conftest import deploy_even

PROMPT = "the cat sat on the mat and then"


@pytest.fixture(scope="module")
def tiny(tiny_prepared):
    return tiny_prepared("llama")


def test_kill_at_a_token_over_ssh_gives_a_complete_consistent_run(require_root, tiny, tmp_path):
    """A model deployed over ssh to four namespaced nodes; node 3 is killed at token 3.  (A tiny Llama: the
    bundled models' exactness over many nodes is checked on the local testbed, where shipping them is free.)"""
    with emu_testbed("e2e", 4) as bed:
        dep = deploy_even(bed, tiny, 4)
        assert set(dep.bytes_shipped) == {"user", "node1", "node2", "node3", "node4"}
        for host in bed.hosts():  # each node runs the payload shipped into its own directory over ssh
            code = Path(host.workdir) / "code"
            assert (code / "payload" / "node.py").read_bytes() == Path(payload.node.__file__).read_bytes()
            if host.index:
                pid = (Path(host.workdir) / "service.pid").read_text().strip()
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                assert f"PYTHONPATH={code}".encode() in environ
        run = run_job(bed, dep, {"prompts": [PROMPT], "max_new_tokens": 8, "ignore_eos": True}, [Fault("kill", (3,), at_token=3)],
                      tmp_path / "run")
        # A re-deploy ships only what changed: with nothing changed, only the manifest (it names the rest).
        manifest = load_manifest(tiny)
        again = {h.name: ship_model(bed, h, tiny, files_for(manifest, dep.placement_obj(), h.index))
                 for h in bed.hosts()}
    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False)
    faults = pd.read_csv(run / "faults.csv", keep_default_na=False)
    hops = pd.read_csv(run / "hops.csv")
    assert len(tokens) == 8 and json.loads((run / "summary.json").read_text())["complete"]
    assert faults["action"].tolist() == ["kill"] and faults["target"].tolist() == ["node3"]
    assert faults["effective_wall_ns"].iloc[0] >= faults["requested_wall_ns"].iloc[0]
    lost = {str(i) for i in range(*dep.placement_obj().slices[3])}
    assert not lost & set(tokens["layers"].iloc[-1].split()) and tokens["nodes_out"].iloc[-1] == "3"
    # A frame node3 took but whose ack died with it has the receiver's side only (acked false, no round trip).
    acked = hops[hops["acked"]]
    assert (acked["rtt_ns"] > 0).all() and set(acked["src"]) >= {0, 1, 2, 4} and len(hops) - len(acked) <= 1
    for name in ("user", "node1", "node2", "node3", "node4"):
        events = (run / "nodes" / name / "events.jsonl").read_text().splitlines()
        assert any('"ev":"ready"' in line for line in events), name
    assert json.loads((run / "testbed.json").read_text())["backend"] == "userspace"
    assert {sent for sent, _ in again.values()} == {(tiny / MANIFEST).stat().st_size}
    assert all(skipped > 0 for _, skipped in again.values())
    for result in check_run(run, tiny, model=Monolith(tiny)):
        assert result.ok


def test_link_cut_is_skipped_then_the_node_rejoins_with_replay(require_root, tiny, tmp_path):
    with emu_testbed("cut", 3, links=None) as bed:
        dep = deploy_even(bed, tiny, 3)
        # wifi links (the default) make a token take ~100 ms: 80 tokens outlast the 2 s cut plus the rejoin.
        run = run_job(bed, dep, {"prompts": [PROMPT], "max_new_tokens": 80},
                      [Fault("link_down", (2,), at_token=2, duration=2.0)], tmp_path / "run")
    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False)
    assert json.loads((run / "summary.json").read_text())["complete"]
    assert (tokens["nodes_out"] == "2").any(), "the cut node must be detected and skipped"
    assert tokens["rebuilt"].str.len().sum() > 0, "after link_up the node rejoins with a cache rebuilt by replay"
    assert tokens["nodes_out"].iloc[-1] == ""
    for result in check_run(run, tiny, model=Monolith(tiny)):
        assert result.ok


def test_unreachable_host_fails_deploy_clearly_and_leaves_nothing_running(require_root, tiny):
    with emu_testbed("unreach", 3) as bed:
        victim = [h for h in bed.hosts() if h.index == 2][0]
        for pid in system.pids_in_netns(victim.namespace):
            if os.path.basename(system.exe_of(pid)).startswith("sshd"):
                os.kill(pid, signal.SIGKILL)
        with pytest.raises(TestbedError, match="node2"):
            deploy_even(bed, tiny, 3)
        deadline = time.monotonic() + 5  # SIGKILL is asynchronous: give exiting processes a moment to go
        while any(bed.service_pids(h) for h in bed.hosts()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for host in bed.hosts():
            assert bed.service_pids(host) == [], f"{host.name} still runs a service after a failed deploy"
