"""Compressed activations (int8, fp8 e4m3 with a power-of-two scale per position): what a receiver decodes is
exactly what the sender's history holds, a re-encode changes nothing, and bad lengths are refused."""

from __future__ import annotations

import hmac
import struct
import uuid

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from payload.frames import (HEADER_TAG_BYTES, MAC_BYTES, _HEADER, _PREFIX, Decoder, Frame, FrameType, Hop,
                            LocalFrameError, PeerFrameError, WireDtype, _header_tag, encode)
from payload.tensors import from_bytes, to_bytes, to_wire

KEY = b"k" * 32
COMPRESSED = [WireDtype.INT8, WireDtype.FP8_E4M3]
ALL = [WireDtype.FLOAT32, WireDtype.BFLOAT16, WireDtype.FLOAT16, *COMPRESSED]


@st.composite
def hidden_states(draw):
    """[1, T, H] with each position at its own magnitude (hidden states span decades), zeros and outliers."""
    positions, width = draw(st.integers(1, 6)), draw(st.integers(1, 48))
    torch.manual_seed(draw(st.integers(0, 2 ** 31)))
    x = torch.randn(1, positions, width)
    scales = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1e-30, 1e-3, 0.7, 1.0, 3.0, 1e3, 6e4]),
                                        min_size=positions, max_size=positions)))
    x = x * scales.view(1, -1, 1)
    if draw(st.booleans()):
        x[0, 0, 0] = 300.0  # an outlier dimension, as residual streams have
    return x


@settings(max_examples=300, deadline=None)
@given(x=hidden_states(), dtype=st.sampled_from(ALL))
def test_what_is_sent_is_what_is_received_and_a_re_encode_changes_nothing(x, dtype):
    wire = to_wire(x, dtype)
    assert torch.equal(to_wire(wire, dtype), wire), "a replayed history is rounded again on its way"
    payload = to_bytes(wire, dtype)
    assert len(payload) == x.shape[1] * dtype.position_bytes(x.shape[2])
    assert torch.equal(from_bytes(payload, dtype, x.shape[1], x.shape[2]), wire)


@pytest.mark.parametrize("dtype,bound", [(WireDtype.INT8, 0.025), (WireDtype.FP8_E4M3, 0.05),
                                         (WireDtype.BFLOAT16, 0.003)])
def test_the_error_is_what_the_format_allows(dtype, bound):
    """Relative error of a Gaussian position: int8 ~ half a step of absmax/127 (at most twice that with the
    power-of-two scale), e4m3 ~ its 3-bit mantissa."""
    torch.manual_seed(0)
    x = torch.randn(1, 64, 640)
    error = ((to_wire(x, dtype).float() - x).norm(dim=-1) / x.norm(dim=-1)).max().item()
    assert 0 < error < bound


def test_a_compressed_position_is_its_codes_scale_and_outliers():
    assert WireDtype.INT8.outliers(640) == 40 and WireDtype.FP8_E4M3.outliers(640) == 5
    assert WireDtype.INT8.position_bytes(640) == 640 + 4 + 40 * 4
    assert WireDtype.FP8_E4M3.position_bytes(640) == 640 + 4 + 5 * 4
    assert WireDtype.BFLOAT16.position_bytes(640) == 1280 and WireDtype.FLOAT32.position_bytes(640) == 2560


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_outliers_travel_exactly_in_bfloat16_and_do_not_crush_the_rest(dtype):
    """A residual stream's massive values (Gemma 3: 37,000 beside a median of 234) are kept, and the others keep
    their precision: one scale over both would round most of them to zero."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 640)
    x[..., [7, 100, 301]] = torch.tensor([37000.0, -9000.0, 2500.0])
    wire = to_wire(x, dtype)
    assert torch.equal(wire[..., [7, 100, 301]], x[..., [7, 100, 301]].to(torch.bfloat16).float())
    rest = [i for i in range(640) if i not in (7, 100, 301)]
    assert ((wire[..., rest] - x[..., rest]).norm() / x[..., rest].norm()) < 0.05


def test_each_position_has_its_own_scale():
    """A tiny position beside a huge one keeps its precision (one scale per tensor would zero it)."""
    x = torch.stack([torch.linspace(-1e-3, 1e-3, 32), torch.linspace(-1e4, 1e4, 32)]).unsqueeze(0)
    wire = to_wire(x, WireDtype.INT8)
    assert ((wire[0, 0] - x[0, 0]).abs().max() / 1e-3) < 0.01


def test_inf_or_nan_is_refused_at_the_sender():
    with pytest.raises(ValueError, match="inf or NaN"):
        to_wire(torch.tensor([[[1.0, float("inf")]]]), WireDtype.INT8)


@pytest.mark.parametrize("dtype", COMPRESSED)
def test_a_compressed_frame_decodes_and_a_short_one_is_refused(dtype):
    x = to_wire(torch.randn(1, 3, 16), dtype)
    frame = Frame(FrameType.DATA, uuid.uuid4(), n_pos=3, hidden=16, dtype=dtype, route=(Hop(1, 0, 2),),
                  src=0, dst=1, payload=to_bytes(x, dtype))
    decoder = Decoder(KEY)
    decoder.feed(encode(frame, KEY, boot=1, seq=1))
    got = decoder.next_frame()
    assert torch.equal(from_bytes(got.payload, got.dtype, got.n_pos, got.hidden), x)
    with pytest.raises(LocalFrameError, match="is 72 bytes, expected 192"):  # 3 x (16 codes, scale, 1 outlier)
        encode(Frame(FrameType.DATA, uuid.uuid4(), n_pos=3, hidden=16, dtype=WireDtype.FLOAT32,
                     route=(Hop(1, 0, 2),), src=0, dst=1, payload=frame.payload), KEY)


def test_an_outlier_index_outside_the_position_is_refused():
    x = to_wire(torch.randn(1, 1, 16), WireDtype.INT8)
    payload = bytearray(to_bytes(x, WireDtype.INT8))
    payload[20:22] = (16).to_bytes(2, "little")  # the one outlier's index, one past the end
    with pytest.raises(ValueError, match="outlier index lies outside 0..15"):
        from_bytes(bytes(payload), WireDtype.INT8, 1, 16)


def _resign(raw: bytes) -> bytes:
    """An encoded frame's tag and MAC recomputed (what a peer holding the key could send)."""
    head = _PREFIX.size + _HEADER.size
    tagged = raw[:head] + _header_tag(KEY, raw[:head]) + raw[head + HEADER_TAG_BYTES:-MAC_BYTES]
    return tagged + hmac.digest(KEY, tagged, "sha256")


def test_an_authentic_frame_whose_dtype_does_not_fit_its_payload_is_refused():
    """float32 bytes of 1 x 16 under a header that says int8 (which would need 24 bytes): refused by length."""
    raw = bytearray(encode(Frame(FrameType.DATA, uuid.uuid4(), n_pos=1, hidden=16, dtype=WireDtype.FLOAT32,
                                 route=(Hop(1, 0, 2),), src=0, dst=1, payload=bytes(64)), KEY, boot=1, seq=1))
    raw[_PREFIX.size + struct.calcsize("!2sBBH16sIIIIII")] = int(WireDtype.INT8)
    decoder = Decoder(KEY)
    decoder.feed(_resign(bytes(raw)))
    with pytest.raises(PeerFrameError, match="DATA payload is 64 bytes but its header says 1 x 16 x INT8"):
        decoder.next_frame()
