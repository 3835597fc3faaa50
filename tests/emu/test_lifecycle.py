"""up/down: exact and repeatable cleanup, crash recovery, coexisting prefixes, and the rootless message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.interface import TestbedError
from emu import state, system
from emu.plan import Plan
from emu.shaping import probe_netem
from emu.testbed import EmuTestbed

from tests.emu.conftest import unique_prefix

pytestmark = pytest.mark.timeout(60)


def leftovers(manifest: dict) -> list[str]:
    """Anything of a (former) testbed that still exists: namespaces, links, processes, files."""
    plan = Plan.from_dict(manifest["plan"])
    found = [ns for ns in manifest["namespaces"] if system.netns_exists(ns)]
    found += [link for link in manifest["links"] if system.link_exists(link)]
    found += [f"pid {p['pid']}" for p in manifest["processes"] if not system.gone(p["pid"])]
    found += [plan.state_dir] if Path(plan.state_dir).exists() else []
    return found


@pytest.mark.root
def test_down_removes_every_namespace_link_process_and_file_and_is_idempotent(require_root):
    testbed = EmuTestbed(unique_prefix("down"), backend="userspace")
    testbed.up(2)
    manifest = state.load(testbed.prefix)
    assert len(leftovers(manifest)) > 3  # everything exists while up
    ssh_pids = [p["pid"] for p in manifest["processes"]]
    testbed.down()
    assert leftovers(manifest) == []
    assert all(system.gone(pid) for pid in ssh_pids)
    testbed.down()
    EmuTestbed(unique_prefix("never")).down()


@pytest.mark.root
def test_up_over_a_crashed_run_cleans_the_leftovers_first(require_root):
    prefix = unique_prefix("crash")
    crashed = EmuTestbed(prefix, backend="userspace")
    crashed.up(1)
    old = state.load(prefix)
    shaper_pid = next(p["pid"] for p in old["processes"] if p["what"] == "shaper")
    os.kill(shaper_pid, signal.SIGKILL)  # the shaper died with the orchestrator: a crashed run
    again = EmuTestbed(prefix, backend="userspace")
    try:
        hosts = again.up(2)
        assert len(hosts) == 3 and system.gone(shaper_pid)
        assert subprocess.run(again.ssh_argv(hosts[2], "true"), timeout=30).returncode == 0
    finally:
        again.down()
    assert leftovers(state.load(prefix) or old) == []


@pytest.mark.root
def test_two_prefixes_coexist_on_distinct_subnets(require_root):
    first, second = (EmuTestbed(unique_prefix(label), backend="userspace") for label in ("one", "two"))
    try:
        a, b = first.up(1), second.up(1)
        assert first.describe()["subnets"]["data"] != second.describe()["subnets"]["data"]
        assert not {h.namespace for h in a} & {h.namespace for h in b}
        first_manifest, second_manifest = state.load(first.prefix), state.load(second.prefix)
        first.down()
        assert leftovers(first_manifest) == []
        assert all(system.netns_exists(ns) for ns in second_manifest["namespaces"])
        assert all(system.link_exists(link) for link in second_manifest["links"])
        ping = ["ip", "netns", "exec", b[1].namespace, "ping", "-c", "3", "-i", "0.2", "-W", "2", b[0].address]
        assert subprocess.run(ping, capture_output=True).returncode == 0
        assert second.shell(b[1]).run("echo ok").stdout == "ok\n"
    finally:
        first.down()
        second.down()


def test_without_root_the_error_points_to_the_local_testbed():
    script = ("from emu.testbed import EmuTestbed\n"
              "from testbed.interface import TestbedError\n"
              "try:\n    EmuTestbed('jv-rootless').up(1)\n"
              "except TestbedError as exc:\n    print(exc)\n")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    env = {**os.environ, "JARVIS_EMU_STATE": "/nonexistent"}
    out = subprocess.run([*nobody, sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2], env=env)
    assert "needs root" in out.stdout and "--testbed local" in out.stdout, out.stderr


@pytest.mark.root
def test_auto_backend_picks_netem_only_where_the_kernel_has_it_and_says_which(require_root):
    testbed = EmuTestbed(unique_prefix("auto"))
    has_netem = probe_netem(f"{testbed.prefix}-p")
    try:
        testbed.up(1)
        assert testbed.describe()["backend"] == ("netem" if has_netem else "userspace")
    finally:
        testbed.down()
    if not has_netem:
        forced = EmuTestbed(unique_prefix("netem"), backend="netem")
        with pytest.raises(TestbedError, match="this kernel has no netem"):
            forced.up(1)
        assert state.load(forced.prefix) is None


@pytest.mark.root
def test_a_node_s_file_is_followed_over_ssh_as_it_is_written(require_root):
    from tests.follow_check import assert_follows

    testbed = EmuTestbed(unique_prefix("follow"), backend="userspace")
    try:
        hosts = testbed.up(1)
        assert_follows(testbed, hosts[1])
    finally:
        testbed.down()
