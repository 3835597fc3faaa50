"""The dashboard's feed, server and replay on plain data: nothing a page subscribes to is missed or doubled,
a replay is the run's events in time order at the speed asked, and the server only listens where told."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest

from dashboard.feed import SHOWN_EVENTS, Feed, node_message
from dashboard.replay import ReplayError, replay, timed_messages, topology_of
from dashboard.server import Dashboard, DashboardError
from experiment.synth import Kill, Spec, write_run
from payload.schema import EVENTS
from tests.web.conftest import free_port


def test_a_subscriber_gets_history_then_every_later_message_once_even_under_concurrent_publishing():
    feed = Feed()
    feed.publish_all({"ev": "token", "n": i} for i in range(50))

    async def subscribe_while_publishing() -> list[int]:
        writers = [threading.Thread(target=lambda k=k: [feed.publish({"ev": "ack", "n": 1000 * k + i})
                                                        for i in range(200)]) for k in range(1, 4)]
        for w in writers:
            w.start()
        history, queue = feed.subscribe()  # while the writers run
        for w in writers:
            w.join()
        seen = [m["seq"] for m in history]
        while len(seen) < 650:
            seen.append((await asyncio.wait_for(queue.get(), 5))["seq"])
        assert queue.empty()
        return seen

    seen = asyncio.run(subscribe_while_publishing())
    assert seen == list(range(650)), "every message exactly once, in feed order"


def test_only_declared_events_the_page_draws_are_forwarded():
    assert SHOWN_EVENTS <= set(EVENTS), "the page draws only events the run-data schema declares"
    assert node_message("node1", {"ev": "compute", "wall_ns": 1}) is None
    assert node_message("node1", {"ev": "ack", "wall_ns": 1})["host"] == "node1"


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "run"
    write_run(path, Spec(nodes=3, layers=6, tokens=10, kills=(Kill(node=2, token=3),)))
    return path


def test_a_replay_is_every_token_and_fault_of_the_run_in_wall_clock_order(synthetic_run):
    import pandas as pd

    timed = timed_messages(synthetic_run)
    assert [t for t, _ in timed] == sorted(t for t, _ in timed)
    tokens = pd.read_csv(synthetic_run / "tokens.csv", keep_default_na=False)
    replayed = [m for _, m in timed if m["ev"] == "token"]
    assert [m["text"] for m in replayed] == list(tokens["text"])
    faults = [m for _, m in timed if m["ev"] == "fault"]
    assert [(f["action"], f["target"]) for f in faults] == [("kill", "node2")]
    assert any(m["ev"] == "node_out" and m["peer"] == 2 for _, m in timed)
    topology = topology_of(synthetic_run)
    assert [n["index"] for n in topology["nodes"]] == [0, 1, 2, 3] and topology["replay"]


def test_a_replay_keeps_the_run_s_pace_at_the_speed_asked(synthetic_run):
    timed = timed_messages(synthetic_run)
    span_s = (timed[-1][0] - timed[0][0]) / 1e9
    speed = span_s / 0.3  # the whole run in about 0.3 s
    feed = Feed()
    replay(synthetic_run, feed, speed=speed, progress=lambda m: None)
    sent = [m for m in feed.history() if m["ev"] not in ("topology", "phase")]
    assert len(sent) == len(timed)
    start = sent[0]["published_ns"]
    for (wall, _), message in zip(timed, sent, strict=True):
        due_ns = (wall - timed[0][0]) / speed
        assert message["published_ns"] - start >= due_ns - 2e6, "a message went out before its time"


def test_replaying_what_is_not_a_run_directory_says_what_is_missing(tmp_path):
    with pytest.raises(ReplayError, match="summary.json is missing"):
        replay(tmp_path, Feed())


def test_the_server_binds_to_loopback_by_default_and_serves_every_asset_itself():
    board = Dashboard(port=0).start()
    try:
        assert board.host == "127.0.0.1"
        page = urllib.request.urlopen(board.url).read().decode()
        for asset in ("/static/dashboard.js", "/static/dashboard.css", "/vendor/plotly.min.js"):
            assert f'"{asset}"' in page
            assert urllib.request.urlopen(board.url.rstrip("/") + asset).status == 200
        assert "http" not in page.replace(board.url, ""), "no asset from the internet"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(board.url + "report")
        assert missing.value.code == 404
        board.feed.publish({"ev": "phase", "phase": "run"})
        with urllib.request.urlopen(board.url + "events", timeout=5) as stream:
            lines = [stream.readline().decode() for _ in range(4)]
        messages = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
        assert messages[0]["phase"] == "run" and messages[1] == {"ev": "live", "backlog": 1}
    finally:
        board.stop()


def test_a_taken_port_is_a_clear_error():
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(DashboardError, match="--port"):
            Dashboard(port=port).start()
