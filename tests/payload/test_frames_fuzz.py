"""Property-based fuzzing of the wire codec (hypothesis), bounded in time; a longer run by hand:

    JARVIS_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/payload/test_frames_fuzz.py -q

Whatever bytes arrive, in whatever chunks, the decoder yields frames, waits for more, or raises
PeerFrameError: never another exception, never a frame that was not sent under the key.
"""

from __future__ import annotations

import os
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payload.frames import (NEED_DATA, Decoder, Frame, FrameType, Hop, HopFlag, PeerFrameError, ReplayWindow,
                            Sealing, WireDtype, encode)

KEY = b"f" * 32
EXAMPLES = int(os.environ.get("JARVIS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u = lambda bits: st.integers(min_value=0, max_value=(1 << bits) - 1)  # noqa: E731


@st.composite
def frames(draw) -> Frame:
    kind = draw(st.sampled_from(list(FrameType)))
    dtype = draw(st.sampled_from([WireDtype.FLOAT32, WireDtype.BFLOAT16, WireDtype.FLOAT16]))
    n_pos, hidden = draw(st.integers(0, 6)), draw(st.integers(0, 8))
    hops = draw(st.lists(st.tuples(u(16), st.integers(0, (1 << 16) - 65), st.integers(0, 64), st.booleans()), max_size=5))
    route = tuple(Hop(node, first, first + width, HopFlag.REPLAY if replay else HopFlag.NONE)
                  for node, first, width, replay in hops)
    if kind == FrameType.DATA:
        payload = draw(st.binary(min_size=n_pos * hidden * dtype.itemsize, max_size=n_pos * hidden * dtype.itemsize))
        replay = draw(st.integers(0, n_pos))
    else:
        payload, replay = draw(st.binary(max_size=64)), 0
    return Frame(kind, uuid.UUID(int=draw(u(128))), step=draw(u(32)), epoch=draw(u(32)), pos_start=draw(u(32)),
                 n_pos=n_pos, replay_len=replay, hidden=hidden, dtype=dtype if kind == FrameType.DATA else WireDtype.NONE,
                 hop=draw(st.integers(0, max(0, len(route) - 1))), route=route, src=draw(u(16)), dst=draw(u(16)),
                 t_a=draw(u(64)), t_b=draw(u(64)), payload=payload, boot=draw(u(64)), seq=draw(u(64)))


def feed_in_chunks(decoder: Decoder, data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed ``data`` split at ``cuts``; return the frames decoded (PeerFrameError propagates)."""
    out, start = [], 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        decoder.feed(data[start:cut])
        start = cut
        while (frame := decoder.next_frame()) is not NEED_DATA:
            out.append(frame)
    return out


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=4), st.lists(st.integers(0, 1 << 20), max_size=8), st.booleans())
def test_frames_round_trip_whatever_the_chunking(sent, cuts, sealed):
    sealing = Sealing(KEY) if sealed else None
    data = b"".join(encode(frame, KEY, sealing=sealing) for frame in sent)
    got = feed_in_chunks(Decoder(KEY, sealing=sealing), data, cuts)
    assert got == sent


@FUZZ
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=6))
def test_arbitrary_bytes_never_raise_anything_but_a_peer_error(data, cuts):
    try:
        frames_out = feed_in_chunks(Decoder(KEY, max_frame=1 << 20), data, cuts)
    except PeerFrameError:
        return
    assert frames_out == [], "random bytes must never authenticate"


@FUZZ
@given(frames(), st.data())
def test_any_corrupted_byte_is_refused_not_misread(frame, data):
    raw = bytearray(encode(frame, KEY))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    decoder = Decoder(KEY, max_frame=1 << 24)
    try:
        got = feed_in_chunks(decoder, bytes(raw), [])
    except PeerFrameError:
        return
    assert got == [], "a corrupted frame must never decode (at most it waits for bytes that never come)"


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 60)), max_size=200))
def test_the_replay_window_accepts_each_frame_once_and_no_older_boot(deliveries):
    window = ReplayWindow(window=16)
    seen: set = set()
    latest_boot: dict[int, int] = {}
    highest: dict[tuple[int, int], int] = {}
    for src, boot, seq in deliveries:
        fresh = window.fresh(src, boot, seq)
        if fresh:
            assert (src, boot, seq) not in seen, "a replay was accepted"
            assert boot >= latest_boot.get(src, boot), "a frame of an older boot was accepted"
            assert seq > highest.get((src, boot), -1) - 16, "a frame older than the window was accepted"
            seen.add((src, boot, seq))
            latest_boot[src] = max(latest_boot.get(src, boot), boot)
            highest[(src, boot)] = max(highest.get((src, boot), seq), seq)
