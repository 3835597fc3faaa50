"""The live dashboard and the HTML report in a real headless Chromium.

``fab experiment --live`` on the local testbed (real node processes, a tiny model, a node killed and another
paused then resumed mid-run): the page, opened before the testbed is up, shows every token the run emitted,
the fault markers, the killed node drawn out (and it drew it out while tokens were still coming), the paused
one drawn out and back; ``fab dashboard --run`` replays the
same run into the same page.  The screenshot and the measured update lag are written to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from payload.events import read_events
from tests.conftest import _save_tiny
from tests.web.conftest import artifacts_dir, free_port, open_page, page_errors, wait_for

pytestmark = pytest.mark.serial  # measures the dashboard's update lag (make test runs it alone)

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
TOKENS = 120  # node3 resumed at token 18 must have time to rejoin (heartbeats every 100 ms) before the end
KILL_AT = 6
PAUSE_AT = 14


def _fab(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """A fab task in the background, its output into ``log`` (a pipe nobody reads while it runs would fill)."""
    return subprocess.Popen([FAB, *args], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fab exited {proc.returncode} before the dashboard listened:\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listened on port {port}")


def _stop(proc: subprocess.Popen, log: Path) -> str:
    """Ctrl-C the fab task (it serves until then); its whole output."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "[dashboard] closed" in output
    return output


def _state(browser) -> dict:
    return browser.execute_script(
        "return {tokens: jarvis.tokens, out: [...jarvis.out], lags: jarvis.lags, phase: jarvis.phase,"
        " firstSeen: jarvis.firstSeen, shapes: document.getElementById('latency').layout.shapes.length,"
        " faults: [...document.querySelectorAll('#fault-list li')].map(li => [li.dataset.action,"
        "   li.dataset.target, li.dataset.state]),"
        " outCards: [...document.querySelectorAll('.node.out')].map(c => Number(c.dataset.index)),"
        " reroutes: document.querySelectorAll('#hops tr.reroute').length,"
        " log: [...document.querySelectorAll('#log li')].map(li => li.textContent),"
        " arrows: [...document.querySelectorAll('.hop.stale, .hop.reroute')].map(a => [a.dataset.hop, a.className])}")


@pytest.fixture
def live_scenario(tmp_path):
    model = _save_tiny("llama", tmp_path / "tiny-llama")
    scenario = tmp_path / "live.yaml"
    scenario.write_text(
        f"name: live-test\nmodel: {model}\nnodes: 3\nprompts: ['the cat sat on the']\n"
        f"max_new_tokens: {TOKENS}\ntiming: {{rejoin_after_s: 0.05}}\nfaults:\n"
        f"  - {{at_token: {KILL_AT}, action: kill, node: 2}}\n"
        f"  - {{at_token: {PAUSE_AT}, action: pause, node: 3}}\n  - {{at_token: {PAUSE_AT + 4}, action: resume, node: 3}}\n")
    return scenario


def test_the_live_page_shows_the_run_as_it_happens_and_the_replay_shows_it_again(browser, live_scenario, tmp_path):
    run = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "JARVIS_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "experiment.log"
    proc = _fab(["experiment", "--testbed", "local", "--scenario", str(live_scenario), "--out", str(run),
                 "--prefix", "jv-test-live", "--live", "--port", str(port)], log, env)
    try:
        _wait_listening(port, proc, log)
        open_page(browser, f"http://127.0.0.1:{port}/")  # before the testbed is up: everything after is live
        wait_for(browser, "return jarvis.phase === 'done'", timeout_s=300, what="the end of the run")
        live = _state(browser)
        browser.save_screenshot(str(artifacts_dir() / "dashboard-live.png"))
        errors = page_errors(browser)
        report_page = browser.execute_script("return document.getElementById('report-link').hidden") is False
    finally:
        output = _stop(proc, log) if proc.poll() is None else log.read_text()
    assert f"[experiment] results in {run}" in output, output[-3000:]

    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False)
    assert live["tokens"] == len(tokens) > KILL_AT
    assert live["faults"] == [["kill", "node2", "detected"], ["pause", "node3", "detected"],
                              ["resume", "node3", "effective"]], "each fault is marked, and its detection"
    assert live["shapes"] == 3, "a marker on the latency chart for each fault"
    user_events = read_events(run / "nodes" / "user" / "events.jsonl")
    rejoined = [e["peer"] for e in user_events if e["ev"] == "rejoin"]
    assert rejoined == [3], f"the run itself must have node3 rejoin for this test to check it: {rejoined}"
    assert live["out"] == [2] and live["outCards"] == [2], "node2 is drawn out; node3 is back"
    assert "node3 rejoined" in live["log"], live["log"]
    assert live["reroutes"] >= 1, "the hop routed around node2 is listed as a reroute"
    assert ["1-2", "hop stale"] in live["arrows"], "the arrow into node2, which is out, is greyed"
    last_token_ms = tokens["t_emit_ns"].max() / 1e6
    assert live["firstSeen"]["node_out"] < last_token_ms, "node2 was drawn out while tokens were still coming"
    assert report_page and not errors, errors

    lags = sorted(live["lags"])
    figures = {"events": len(lags), "median_ms": lags[len(lags) // 2], "p95_ms": lags[int(0.95 * (len(lags) - 1))],
               "max_ms": lags[-1]}
    (artifacts_dir() / "dashboard-lag.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"dashboard update lag (event logged -> drawn): {figures}")

    port = free_port()
    log = tmp_path / "replay.log"
    replay = _fab(["dashboard", "--run", str(run), "--speed", "0", "--port", str(port)], log, env)
    try:
        _wait_listening(port, replay, log)
        open_page(browser, f"http://127.0.0.1:{port}/")
        wait_for(browser, "return jarvis.phase === 'done'", what="the end of the replay")
        replayed = _state(browser)
    finally:
        _stop(replay, log)
    assert {k: replayed[k] for k in ("tokens", "faults", "out", "shapes", "outCards")} == \
           {k: live[k] for k in ("tokens", "faults", "out", "shapes", "outCards")}
    assert replayed["lags"] == [], "a replay's lag is not an update lag"
