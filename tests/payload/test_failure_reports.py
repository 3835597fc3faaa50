"""The user node weighs failure reports against the attempt they are about.

A node whose own link was cut reports its successor "silent" only once the link
is back; by then the user node has re-planned around the reporter, so that
report must not mark the (live) successor out.  Found by the emu link-cut
matrix (cut of the first node at prefill marked node 2 out).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from payload.config import NodeConfig
from payload.events import read_events
from payload.frames import Frame, FrameType
from payload.routing import Placement
from payload.transport import PeerFailed
from payload.config import UserConfig
from payload.user_node import Attempt, UserNode


@pytest.fixture
def user(tiny_prepared, tmp_path):
    node = NodeConfig(node=0, listen=("127.0.0.1", 0), peers={1: ("127.0.0.1", 1), 2: ("127.0.0.1", 2)},
                      model_dir=str(tiny_prepared("llama")), ranges=[], key_hex="00" * 32,
                      log_path=str(tmp_path / "user.jsonl"))
    return UserNode(UserConfig(node, Placement(6, {1: (0, 3), 2: (3, 6)})))


def report(session: uuid.UUID, epoch: int, failed: int, reporter: int) -> Frame:
    body = {"failed": failed, "kind": "silent", "reason": "connect timed out", "reporter": reporter}
    return Frame(FrameType.FAIL, session, step=0, epoch=epoch, src=reporter, payload=json.dumps(body).encode())


async def deliver(user: UserNode, frame: Frame, attempt_epoch: int | None, session: uuid.UUID) -> Attempt | None:
    attempt = None
    if attempt_epoch is not None:
        attempt = Attempt(attempt_epoch, frozenset({1, 2}), asyncio.get_running_loop().create_future())
        user.attempts[session] = attempt
    await user.on_frame(frame, writer=None, t2=0)
    return attempt


def test_a_report_about_a_superseded_attempt_marks_nobody_out(user):
    sid = uuid.uuid4()
    attempt = asyncio.run(deliver(user, report(sid, epoch=1, failed=2, reporter=1), attempt_epoch=2, session=sid))
    assert 2 not in user.liveness.dead
    assert not attempt.result.done()
    assert [e["kind"] for e in read_events(user.node.log_path) if e["ev"] == "stale"] == ["fail_report"]


def test_a_report_about_a_finished_session_marks_nobody_out(user):
    asyncio.run(deliver(user, report(uuid.uuid4(), epoch=3, failed=2, reporter=1), attempt_epoch=None,
                        session=uuid.uuid4()))
    assert not user.liveness.dead


def test_a_report_about_the_current_attempt_fails_it(user):
    sid = uuid.uuid4()
    attempt = asyncio.run(deliver(user, report(sid, epoch=2, failed=2, reporter=1), attempt_epoch=2, session=sid))
    assert 2 in user.liveness.dead
    with pytest.raises(PeerFailed):
        attempt.result.result()


def test_a_report_tied_to_no_session_counts(user):
    asyncio.run(deliver(user, report(uuid.UUID(int=0), epoch=0, failed=1, reporter=2), attempt_epoch=None,
                        session=uuid.uuid4()))
    assert 1 in user.liveness.dead


def test_heartbeat_silence_allows_for_the_largest_frame_in_flight(user):
    """A 600-token prompt's hidden states (768 KB in bf16 for hidden 640) take ~6 s at 1 Mbit/s; heartbeats
    queued behind them must not get the sender declared failed."""
    floor = user.node.timing.heartbeat_floor_ms / 1000
    assert user.silence_limit_s(1) == floor

    async def with_prefill_in_flight() -> tuple[float, float]:
        attempt = Attempt(1, frozenset({1, 2}), asyncio.get_running_loop().create_future(), 600 * 640 * 2)
        user.attempts[uuid.uuid4()] = attempt
        during = user.silence_limit_s(1)
        attempt.result.cancel()
        return during, user.silence_limit_s(1)

    during, after = asyncio.run(with_prefill_in_flight())
    assert during == pytest.approx(floor + 600 * 640 * 2 * 8 / (user.node.timing.slowest_link_mbps * 1e6))
    assert after == floor, "once the attempt is over the usual limit applies"
