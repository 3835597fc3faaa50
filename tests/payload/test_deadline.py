"""The adaptive ack deadline: fast on loopback, tolerant of one TCP retransmission on WiFi, scaled on cellular."""

from __future__ import annotations

import pytest

from payload.config import Timing
from payload.transport import AdaptiveDeadline


def deadline_after(rtts_s: list[float]) -> float:
    timing = Timing()
    deadline = AdaptiveDeadline(timing.ack_floor_ms / 1000, timing.ack_multiplier,
                                retransmit_s=timing.retransmit_ms / 1000)
    for rtt in rtts_s:
        deadline.observe(rtt)
    return deadline.value()


def test_loopback_round_trips_keep_the_deadline_near_the_floor():
    assert deadline_after([0.0005] * 64) == pytest.approx(0.251, abs=0.001)


def test_a_wifi_hop_waits_out_one_retransmission():
    # Two 40 ms access links: ~85 ms round trips.  A lost segment is resent after about RTT + 200 ms
    # (Linux's minimum RTO), then the ack needs another trip: ~370 ms, seen as 350-390 ms on the emulator.
    value = deadline_after([0.080 + 0.005 * (i % 2) for i in range(64)])
    assert value >= 0.085 + 0.200 + 0.085 + 0.030
    assert value <= 0.5


def test_cellular_round_trips_scale_the_deadline_by_the_multiplier():
    assert deadline_after([0.230] * 64) == pytest.approx(4 * 0.230)


def test_no_samples_yet_uses_the_larger_of_floor_and_retransmission_room():
    assert deadline_after([]) == pytest.approx(0.250)


def test_a_big_frame_gets_time_on_the_wire_before_its_peer_is_called_silent():
    """A real loopback peer that reads but never acks: the deadline is the floor plus the frame's bytes at the
    slowest expected link rate, and the connect round trip is the first sample."""
    import asyncio
    import time
    import uuid

    from payload.events import EventLog
    from payload.frames import Frame, FrameType
    from payload.transport import PeerFailed, PeerLink

    async def scenario(tmp: str) -> float:
        async def swallow(reader, writer):
            while await reader.read(1 << 16):
                pass

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        timing = Timing(ack_floor_ms=100.0, retransmit_ms=0.0, slowest_link_mbps=0.8)
        link = PeerLink(me=1, peer=2, address=("127.0.0.1", port), key=b"k" * 32, timing=timing,
                        log=EventLog(f"{tmp}/events.jsonl", 1))
        frame = Frame(FrameType.DATA, uuid.uuid4(), step=1, epoch=1)
        started = time.monotonic()
        with pytest.raises(PeerFailed) as failed:
            await link.send_data(frame, b"x" * 50_000)  # 0.5 s at 0.8 Mbit/s
        assert failed.value.kind == "silent"
        assert link.deadline.observed, "the connect round trip must seed the deadline"
        await link.close()
        server.close()
        return time.monotonic() - started

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        elapsed = asyncio.run(scenario(tmp))
    assert 0.55 <= elapsed <= 2.0, elapsed
