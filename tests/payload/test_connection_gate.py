"""serve_connection and its ConnectionGate over real loopback TCP: who gets closed when a flood arrives.

The node's own frame handling runs in the same event loop as the gate, so the
cases that matter are timings: a legitimate peer whose first frame takes long
to handle (a prefill), idle intruders arriving meanwhile from the same address,
and a replayed capture.
"""

from __future__ import annotations

import asyncio
import os
import uuid

from payload.config import Timing
from payload.events import EventLog, read_events
from payload.frames import Frame, FrameSigner, FrameType
from payload.transport import ConnectionGate, Wire, serve_connection

KEY = os.urandom(32)


async def serve(tmp_path, timing: Timing, handler):
    wire = Wire(KEY, EventLog(tmp_path / "node.jsonl", node=1), max_frame=1 << 20, timing=timing)
    gate = ConnectionGate(timing)
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, wire=wire, gate=gate, handler=handler), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], wire


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True


def heartbeat(signer: FrameSigner) -> bytes:
    return signer.encode(Frame(FrameType.HEARTBEAT, uuid.UUID(int=0), src=0, dst=1, payload=b"{}"))


def test_a_peer_busy_in_its_first_frame_survives_an_idle_flood_from_its_address(tmp_path):
    timing = Timing(max_unproven_per_address=4, max_unproven_connections=8, first_frame_timeout_s=5.0)
    handled = []

    async def slow_handler(frame, writer, t2) -> None:
        handled.append(frame.type)
        if len(handled) == 1:
            await asyncio.sleep(1.0)  # the first frame's compute: the socket is drained, the peer waits

    async def scenario() -> tuple[bool, list, int]:
        server, port, _ = await serve(tmp_path, timing, slow_handler)
        signer = FrameSigner(KEY)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(heartbeat(signer))
        await writer.drain()
        await asyncio.sleep(0.4)  # past the gate's grace, its bytes read: it looks like an idle intruder
        intruders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        closed = sum([await closed_within(r, 0.05) for r, _ in intruders])
        writer.write(heartbeat(signer))
        await writer.drain()
        legit_closed = await closed_within(reader, 1.2)
        server.close()
        return legit_closed, handled, closed

    legit_closed, frames, intruders_closed = asyncio.run(scenario())
    assert not legit_closed, "the gate closed a peer that had sent an authentic frame"
    assert frames == [FrameType.HEARTBEAT, FrameType.HEARTBEAT]
    assert intruders_closed >= 20 - 4 * ConnectionGate.HARD_FACTOR  # the flood itself was capped


def test_a_replayed_frame_closes_its_connection_and_is_not_handled(tmp_path):
    handled = []

    async def handler(frame, writer, t2) -> None:
        handled.append(frame.seq)

    async def scenario() -> tuple[bool, bool]:
        server, port, wire = await serve(tmp_path, Timing(log_interval_s=0.1), handler)
        signer = FrameSigner(KEY)
        captured = heartbeat(signer)
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        first.write(captured)
        await first.drain()
        kept = not await closed_within(first_reader, 0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(captured + heartbeat(signer))  # the capture, then a fresh frame behind it on the same stream
        await writer.drain()
        replay_closed = await closed_within(reader, 1.0)
        wire.flush()
        server.close()
        return kept, replay_closed

    kept, replay_closed = asyncio.run(scenario())
    assert kept and replay_closed
    assert len(handled) == 1, "neither the replay nor what followed it on its connection may be handled"
    rejects = [e["reason"] for e in read_events(tmp_path / "node.jsonl") if e["ev"] == "reject"]
    assert any("replayed HEARTBEAT" in r for r in rejects), rejects


def test_one_cancellation_stops_a_connection_that_keeps_sending(tmp_path):
    """Shutting down cancels every connection task once.  A peer that keeps sending (heartbeats) must not make
    that cancellation get lost: with ``asyncio.wait_for`` around the read, Python 3.11 drops a cancellation that
    lands as a read completes (CPython gh-86296), and the user node then served heartbeats forever after its
    last session (seen in the soak benchmark; 257 of 300 cancellations here were lost)."""
    tasks: list[asyncio.Task] = []

    async def handler(frame, writer, t2) -> None:
        pass

    async def scenario() -> int:
        timing = Timing()
        wire = Wire(KEY, EventLog(tmp_path / "node.jsonl", node=0), max_frame=1 << 20, timing=timing)
        gate = ConnectionGate(timing)

        async def on_connection(reader, writer) -> None:
            tasks.append(asyncio.current_task())
            await serve_connection(reader, writer, wire=wire, gate=gate, handler=handler)

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        signer, lost = FrameSigner(KEY), 0
        for attempt in range(60):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            sending = True

            async def pump() -> None:
                while sending:
                    writer.write(heartbeat(signer))
                    await writer.drain()
                    await asyncio.sleep(0)

            pumping = asyncio.create_task(pump())
            while not tasks:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.002 * (attempt % 7))
            task = tasks.pop()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.5)
            lost += not done
            sending = False
            writer.close()
            await asyncio.gather(pumping, task, return_exceptions=True)
        server.close()
        return lost

    assert asyncio.run(scenario()) == 0


def test_a_peer_connecting_in_a_burst_that_reaches_the_hard_cap_is_served(tmp_path):
    """Found in the soak: two idle flooders opened 100 connections from the node's own address within the
    gate's grace, the hard cap refused every newcomer, and the user node's fresh connection was among them (it
    declared a healthy node crashed).  Over the hard cap the oldest silent connection goes, grace or not."""
    timing = Timing(max_unproven_per_address=4, max_unproven_connections=8, first_frame_timeout_s=5.0)
    handled = []

    async def handler(frame, writer, t2) -> None:
        handled.append(frame.type)

    async def scenario() -> tuple[bool, int]:
        server, port, _ = await serve(tmp_path, timing, handler)
        intruders = [await asyncio.open_connection("127.0.0.1", port)
                     for _ in range(3 * ConnectionGate.HARD_FACTOR * timing.max_unproven_per_address)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # within the grace of every intruder
        writer.write(heartbeat(FrameSigner(KEY)))
        await writer.drain()
        legit_closed = await closed_within(reader, 0.5)
        open_intruders = sum([not await closed_within(r, 0.05) for r, _ in intruders])
        server.close()
        return legit_closed, open_intruders

    legit_closed, open_intruders = asyncio.run(scenario())
    assert not legit_closed, "a burst of idle connections locked a peer with the key out"
    assert handled == [FrameType.HEARTBEAT]
    assert open_intruders <= ConnectionGate.HARD_FACTOR * timing.max_unproven_per_address  # still capped
