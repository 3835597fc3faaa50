"""The wire codec on bytes alone: round trips, every split offset, and each kind of bad input."""

import struct
import uuid

import pytest

from payload.frames import (NEED_DATA, Decoder, Frame, FrameType, Hop, HopFlag, LocalFrameError, PeerFrameError,
                            WireDtype, encode)

KEY = b"k" * 32


def data_frame(**changes) -> Frame:
    fields = dict(type=FrameType.DATA, session=uuid.UUID(int=7), step=3, epoch=2, pos_start=10, n_pos=2, hidden=4,
                  dtype=WireDtype.BFLOAT16, hop=1, route=(Hop(1, 0, 3), Hop(2, 3, 6, HopFlag.REPLAY)), src=1, dst=2,
                  payload=bytes(range(16)))
    fields.update(changes)
    return Frame(**fields)


class TestRoundTrip:
    def test_decodes_what_it_encodes(self):
        frame = data_frame()
        dec = Decoder(KEY)
        dec.feed(encode(frame, KEY))
        assert dec.next_frame() == frame
        assert dec.next_frame() is NEED_DATA

    def test_frame_split_at_every_offset_decodes_identically(self):
        frame = data_frame()
        raw = encode(frame, KEY)
        for cut in range(len(raw) + 1):
            dec = Decoder(KEY)
            dec.feed(raw[:cut])
            got = dec.next_frame()
            if cut < len(raw):
                assert got is NEED_DATA
                dec.feed(raw[cut:])
                got = dec.next_frame()
            assert got == frame

    def test_back_to_back_frames(self):
        a, b = data_frame(step=1), data_frame(step=2)
        dec = Decoder(KEY)
        dec.feed(encode(a, KEY) + encode(b, KEY))
        assert dec.next_frame() == a and dec.next_frame() == b


class TestRejects:
    def test_wrong_key_is_an_authentication_failure(self):
        dec = Decoder(b"x" * 32)
        dec.feed(encode(data_frame(), KEY))
        with pytest.raises(PeerFrameError, match="authentication"):
            dec.next_frame()

    def test_flipped_payload_bit_fails_authentication(self):
        raw = bytearray(encode(data_frame(), KEY))
        raw[-40] ^= 1
        dec = Decoder(KEY)
        dec.feed(bytes(raw))
        with pytest.raises(PeerFrameError):
            dec.next_frame()

    def test_oversized_length_prefix_is_refused_before_buffering(self):
        dec = Decoder(KEY, max_frame=1024)
        dec.feed(struct.pack("!I", 10**9))
        with pytest.raises(PeerFrameError, match="exceeds"):
            dec.next_frame()

    def test_garbage_bytes(self):
        dec = Decoder(KEY)
        dec.feed(b"\x00\x00\x01\x00" + b"garbage" * 100)
        with pytest.raises(PeerFrameError):
            dec.next_frame()

    def test_truncated_frame_waits_then_never_yields_a_frame(self):
        raw = encode(data_frame(), KEY)
        dec = Decoder(KEY)
        dec.feed(raw[:-5])
        assert dec.next_frame() is NEED_DATA

    def test_decoder_refuses_use_after_error(self):
        dec = Decoder(KEY, max_frame=10)
        dec.feed(struct.pack("!I", 100))
        with pytest.raises(PeerFrameError):
            dec.next_frame()
        with pytest.raises(PeerFrameError):
            dec.feed(b"more")

    def test_shape_disagreeing_with_payload_is_a_local_error_on_encode(self):
        with pytest.raises(LocalFrameError, match="payload"):
            encode(data_frame(n_pos=3), KEY)

    def test_out_of_range_field_is_a_local_error(self):
        with pytest.raises(LocalFrameError, match="step"):
            encode(data_frame(step=-1), KEY)


class TestFreshness:
    def test_a_replay_is_dropped_at_its_header_and_framing_survives(self):
        from payload.frames import ReplayWindow

        window, asked = ReplayWindow(), []

        def fresh(src, boot, seq, kind):
            asked.append((src, boot, seq, kind))
            return window.fresh(src, boot, seq)

        first, second = encode(data_frame(step=1), KEY, boot=9, seq=1), encode(data_frame(step=2), KEY, boot=9, seq=2)
        dec = Decoder(KEY, fresh=fresh)
        for cut in (0, 7, 130, len(first) - 1):  # the replay split anywhere: its rest is skipped, not parsed
            dec.feed(first[:cut])
            dec.feed(first[cut:])
        dec.feed(second)
        got = []
        while (frame := dec.next_frame()) is not NEED_DATA:
            got.append(frame)
        assert [f.step for f in got] == [1, 2] and [f.seq for f in got] == [1, 2]
        assert [a[2] for a in asked] == [1, 1, 1, 1, 2] and all(a[:2] == (1, 9) for a in asked)

    def test_keys_shorter_than_32_bytes_are_refused(self):
        with pytest.raises(LocalFrameError, match="at least 32 bytes"):
            encode(data_frame(), b"short")
