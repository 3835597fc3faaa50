"""A node keeps acking the frames of its other sessions while it computes one session's decode step.

Frames of different sessions share the connection between two nodes.  A step computed on the event loop
would leave the frames behind it unread, so their acks would wait out its compute: on a 2-core machine under a
flood that took past the ack deadline, and a healthy node was declared silent (the soak benchmark's false
deaths).  Real node process, real SmolLM2 layers on 127.0.0.1; the test speaks frames with the deployment key.
"""

from __future__ import annotations

import socket
import time
import uuid

import pytest
import torch

from payload.frames import Decoder, Frame, FrameType, Hop, WireDtype
from tests.integration.conftest import deploy_even, local_testbed
from tests.integration.test_hostile_peers import Attacker, address, events

pytestmark = pytest.mark.serial  # compares ack waits with step times in ms (make test runs it alone)

LATER_S = 0.005  # the second session's step is sent this long after the first's (during its compute)


def step(sender: Attacker, session: uuid.UUID, hidden: int, layers: int, *, index: int, pos_start: int,
         positions: int) -> bytes:
    values = torch.randn(positions, hidden, generator=torch.Generator().manual_seed(index)).numpy().tobytes()
    return sender.frame(Frame(FrameType.DATA, session, step=index, epoch=1, pos_start=pos_start, n_pos=positions,
                              hidden=hidden, dtype=WireDtype.FLOAT32, route=(Hop(1, 0, layers),), src=0, dst=1,
                              payload=values))


def acks(sock: socket.socket, key: bytes, wanted: int) -> list[Frame]:
    """The next ``wanted`` acks the node sends back (the socket's timeout bounds each wait)."""
    decoder, got = Decoder(key), []
    while len(got) < wanted:
        chunk = sock.recv(1 << 16)
        assert chunk, f"the node closed the connection after {len(got)} of {wanted} acks"
        decoder.feed(chunk)
        while isinstance(frame := decoder.next_frame(), Frame):
            if frame.type == FrameType.ACK:
                got.append(frame)
    return got


@pytest.mark.parametrize("batch_decode", [1, 4], ids=["unbatched", "batched"])
def test_a_decode_step_of_one_session_does_not_hold_up_the_ack_of_another(smollm2, batch_decode):
    """The second session's step arrives while the first's computes (a batch cannot merge them), and is acked
    at once, whether steps go one at a time or through the batcher."""
    with local_testbed(1) as testbed:
        # One node with all 30 layers: a decode step takes tens of milliseconds.
        deployment = deploy_even(testbed, smollm2, 1, batch_decode=batch_decode)
        sender = Attacker(deployment)
        hidden, layers = 576, 30
        first, second = uuid.uuid4(), uuid.uuid4()
        with socket.create_connection(address(deployment, 1), timeout=30) as sock:
            sock.sendall(step(sender, first, hidden, layers, index=0, pos_start=0, positions=4)
                         + step(sender, second, hidden, layers, index=0, pos_start=0, positions=4))
            acks(sock, sender.key, 2)
            time.sleep(1.0)  # both prefills computed: the node holds two sessions
            sock.sendall(step(sender, first, hidden, layers, index=1, pos_start=4, positions=1))
            time.sleep(LATER_S)
            sock.sendall(step(sender, second, hidden, layers, index=1, pos_start=4, positions=1))
            by_session = {ack.session: ack for ack in acks(sock, sender.key, 2)}
        time.sleep(0.5)
        computed = {e["session"]: e for e in events(testbed, 1) if e["ev"] == "compute" and e["step"] == 1}
    assert set(computed) == {str(first), str(second)}, "both decode steps were computed"
    assert "batch" not in computed[str(first)], "the two steps were batched: the test tells nothing"
    compute_ms = computed[str(first)]["compute_ns"] / 1e6
    waited_ms = (by_session[second].t_b - by_session[first].t_b) / 1e6  # between the node's two acks (T3)
    assert compute_ms > 4 * LATER_S * 1e3, f"the step computed too fast ({compute_ms:.1f} ms) to tell anything"
    assert waited_ms < LATER_S * 1e3 + compute_ms / 2, (
        f"the second session's frame, sent {LATER_S * 1e3:.0f} ms after the first, was acked {waited_ms:.1f} ms "
        f"after it, whose step computed for {compute_ms:.1f} ms: its ack waited for that compute")
