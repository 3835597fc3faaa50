"""The adaptive ack deadline: fast on loopback, tolerant of one TCP retransmission on WiFi, scaled on cellular."""

from __future__ import annotations

import pytest

from payload.config import Timing
from payload.transport import AdaptiveDeadline

pytestmark = pytest.mark.serial  # times a deadline's expiry (make test runs it alone)


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
    # Two 40 ms access links: ~85 ms round trips.  A decode frame's ack is one lone segment; lost, it is resent
    # by Linux's tail loss probe 2 SRTT + 200 ms (its minimum RTO, room for a delayed ack) after it was sent,
    # and then travels: the ack arrives about 3 RTT + 200 ms after the frame was written, ~455 ms.  The old
    # room, 2 RTT + 250 ms (~420 ms), declared healthy WiFi nodes silent ("no ack within 444 ms") about once
    # per emulated benchmark run.
    value = deadline_after([0.080 + 0.005 * (i % 2) for i in range(64)])
    assert value >= 3 * 0.085 + 0.200 + 0.030
    assert value <= 0.6


def test_cellular_round_trips_scale_the_deadline_by_the_multiplier():
    # The study's cellular hop: 88 + 130 ms one way.  (Below 250 ms round trips the retransmission room is larger.)
    assert deadline_after([0.436] * 64) == pytest.approx(4 * 0.436)
    assert deadline_after([0.230] * 64) == pytest.approx(3 * 0.230 + 0.250)


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
    from payload.transport import PeerFailed, PeerLink, Wire

    async def scenario(tmp: str) -> float:
        async def swallow(reader, writer):
            while await reader.read(1 << 16):
                pass

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        timing = Timing(ack_floor_ms=100.0, retransmit_ms=0.0, slowest_link_mbps=0.8)
        wire = Wire(b"k" * 32, EventLog(f"{tmp}/events.jsonl", 1), max_frame=1 << 20, timing=timing)
        link = PeerLink(me=1, peer=2, address=("127.0.0.1", port), wire=wire, timing=timing)
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


def _acking_peer(key: bytes, *, delay_s: float = 0.0, bytes_per_s: float | None = None):
    """A peer in its own thread and event loop (a separate node): acks each DATA frame after ``delay_s``, once it
    has it whole; with ``bytes_per_s`` it reads no faster than that (a peer behind a slow link)."""
    import asyncio
    import threading

    from payload.frames import Decoder, Frame, FrameSigner, FrameType

    ready, box = threading.Event(), {}

    async def serve() -> None:
        signer = FrameSigner(key)

        async def ack(reader, writer):
            decoder = Decoder(key)
            while data := await reader.read(1 << 16 if bytes_per_s is None else 4096):
                decoder.feed(data)
                if bytes_per_s is not None:
                    await asyncio.sleep(len(data) / bytes_per_s)
                while isinstance(frame := decoder.next_frame(), Frame):
                    await asyncio.sleep(delay_s)
                    writer.write(signer.encode(frame.reply(FrameType.ACK)))

        server = await asyncio.start_server(ack, "127.0.0.1", 0)
        box["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.sleep(30)

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait(5)
    return box["port"]


async def _send_then_stall(tmp_path, port: int, key: bytes, stall_s: float):
    """Send one DATA frame to the peer on ``port``, then block this event loop for ``stall_s`` (a node whose CPU
    is taken): the link and the pending ack, for the caller to wait on."""
    import time
    import uuid

    from payload.events import EventLog
    from payload.frames import Frame, FrameType
    from payload.transport import PeerLink, Wire

    timing = Timing(ack_floor_ms=100.0, retransmit_ms=0.0)
    wire = Wire(key, EventLog(tmp_path / "events.jsonl", 1), max_frame=1 << 20, timing=timing)
    link = PeerLink(me=1, peer=2, address=("127.0.0.1", port), wire=wire, timing=timing)
    frame = Frame(FrameType.DATA, uuid.uuid4(), step=1, epoch=1)
    sent = await link.send(frame, wire.encode(frame))
    time.sleep(stall_s)
    return link, sent


def test_a_node_whose_own_loop_was_starved_looks_again_before_blaming_its_peer(tmp_path):
    """The peer acks in 20 ms, but the detecting node's event loop is blocked past the deadline (CPU starved):
    the ack waiting in its socket is read, and the peer is not declared silent."""
    import asyncio

    key = b"k" * 32
    port = _acking_peer(key, delay_s=0.02)

    async def scenario() -> float:
        link, sent = await _send_then_stall(tmp_path, port, key, 0.4)  # blocked across the whole deadline
        timing_of_hop = await link.wait_ack(sent)
        await link.close()
        return timing_of_hop.rtt_ns / 1e9

    assert asyncio.run(scenario()) >= 0.3  # the hop's measured time includes this node's stall


def test_a_starved_node_still_declares_a_silent_peer(tmp_path):
    """The second look is one more deadline, not forever: a peer that never acks is still failed."""
    import asyncio
    import time

    from payload.transport import PeerFailed

    key = b"k" * 32
    port = _acking_peer(key, delay_s=60.0)

    async def scenario() -> float:
        started = time.monotonic()
        link, sent = await _send_then_stall(tmp_path, port, key, 0.3)
        with pytest.raises(PeerFailed) as failed:
            await link.wait_ack(sent)
        assert failed.value.kind == "silent"
        await link.close()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.5


def test_frames_written_back_to_back_each_get_the_time_of_the_bytes_ahead_of_them(tmp_path):
    """A pipelined prefill writes its chunks into one connection as fast as they are computed, faster than a
    cellular link drains them: the fourth chunk's ack comes after four chunks' worth of wire time.  Its deadline
    must count the unacked bytes ahead of it on the connection, not its own bytes only (a cold, chunked prefill
    over the study's blend once declared six healthy nodes silent, one after another, this way)."""
    import asyncio
    import time
    import uuid

    from payload.events import EventLog
    from payload.frames import Frame, FrameType, Hop, WireDtype
    from payload.transport import PeerLink, Wire

    key = b"k" * 32
    port = _acking_peer(key, bytes_per_s=125_000)  # 1 Mbit/s: 0.4 s per 50 kB chunk

    async def scenario() -> list[float]:
        timing = Timing(ack_floor_ms=100.0, retransmit_ms=0.0, slowest_link_mbps=0.8)  # allows 0.5 s per chunk
        wire = Wire(key, EventLog(tmp_path / "events.jsonl", 1), max_frame=1 << 20, timing=timing)
        link = PeerLink(me=1, peer=2, address=("127.0.0.1", port), wire=wire, timing=timing)
        started = time.monotonic()
        session, sent = uuid.uuid4(), []
        for chunk in range(4):  # 20 positions of 640 float32 values: 51 kB each
            frame = Frame(FrameType.DATA, session, step=0, epoch=1, pos_start=20 * chunk, n_pos=20, hidden=640,
                          dtype=WireDtype.FLOAT32, route=(Hop(2, 0, 1),), src=1, dst=2, payload=bytes(51_200))
            sent.append(await link.send(frame, wire.encode(frame)))
        timings = []
        for pending in sent:
            await link.wait_ack(pending)
            timings.append(time.monotonic() - started)
        await link.close()
        return timings

    acked = asyncio.run(scenario())
    assert acked[-1] >= 1.2, f"the peer read at 1 Mbit/s: {acked}"
