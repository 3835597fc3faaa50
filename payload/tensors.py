"""Tensor <-> frame payload conversion (the only place torch meets wire bytes).

Raw little-endian element bytes only: never pickle or ``torch.load`` network data.

A *wire tensor* is what the receiver will see, as a tensor: for the float dtypes the values in that dtype;
for the compressed dtypes (int8, fp8 e4m3) the decoded values in float32.  Every hop, the history a node keeps
for replays, and the oracle compute on wire tensors, so they must survive the round trip exactly:
``from_bytes(to_bytes(to_wire(x)))`` is ``to_wire(x)`` and ``to_wire`` of a wire tensor changes nothing.

Compressed positions carry a per-position scale that is a power of two (``2**ceil(log2(absmax / top))``,
``top`` = 127 for int8, 448 for e4m3).  That costs at most one bit of range against an exact absmax scale and
buys exactness: codes times a power of two are exact in float32, and re-encoding decoded values finds a scale
that decodes them to the same values (int8: the same scale; e4m3: the same, or half of it with every code
doubled, which e4m3 represents exactly), so a replayed history is bit for bit what was first sent.
"""

from __future__ import annotations

import torch

from payload.frames import WireDtype

TORCH_OF = {WireDtype.FLOAT32: torch.float32, WireDtype.BFLOAT16: torch.bfloat16, WireDtype.FLOAT16: torch.float16,
            WireDtype.INT8: torch.float32, WireDtype.FP8_E4M3: torch.float32}
_TOP = {WireDtype.INT8: 127.0, WireDtype.FP8_E4M3: 448.0}  # largest code magnitude
_CODE = {WireDtype.INT8: torch.int8, WireDtype.FP8_E4M3: torch.float8_e4m3fn}
_MIN_EXPONENT = -100  # an all-zero (or tiny) position's scale: far below any hidden state, still a normal float


def _encode(hidden: torch.Tensor, dtype: WireDtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [1, T, H] of the code dtype, power-of-two scales [1, T, 1] float32) of ``hidden``."""
    values = hidden.to(torch.float32)
    absmax = values.abs().amax(dim=-1, keepdim=True)
    if not bool(torch.isfinite(absmax).all()):
        raise ValueError("hidden states hold inf or NaN: nothing on the wire could decode them")
    exponent = torch.ceil(torch.log2(absmax / _TOP[dtype])).clamp(min=_MIN_EXPONENT)
    scale = torch.pow(2.0, exponent)
    scaled = values / scale  # exact: a power of two
    if dtype == WireDtype.INT8:
        codes = torch.round(scaled).clamp(-127, 127).to(torch.int8)
    else:
        codes = scaled.clamp(-448, 448).to(torch.float8_e4m3fn)
    return codes, scale


def _decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (codes.to(torch.float32) * scale).contiguous()


def to_wire(hidden: torch.Tensor, dtype: WireDtype) -> torch.Tensor:
    """Round ``hidden`` to the wire dtype (what the receiver will see)."""
    if dtype.scaled:
        return _decode(*_encode(hidden, dtype))
    return hidden.to(TORCH_OF[dtype]).contiguous()


def to_bytes(hidden: torch.Tensor, dtype: WireDtype) -> bytes:
    """Raw bytes of a wire tensor [1, T, H] in ``dtype``: elements, or per position its codes then its scale."""
    if dtype.scaled:
        codes, scale = _encode(hidden, dtype)  # the scale's bytes as the host orders them (as for the float dtypes)
        return torch.cat([codes.view(torch.uint8), scale.view(torch.uint8)], dim=-1).numpy().tobytes()
    if hidden.dtype != TORCH_OF[dtype]:
        hidden = hidden.to(TORCH_OF[dtype])
    if not hidden.is_contiguous():
        hidden = hidden.contiguous()
    if hidden.dtype in (torch.bfloat16, torch.float16):
        hidden = hidden.view(torch.int16)  # numpy has no bfloat16; the bytes are the same
    return hidden.numpy().tobytes()


def from_bytes(payload: bytes, dtype: WireDtype, n_pos: int, hidden: int) -> torch.Tensor:
    """Wire tensor [1, n_pos, hidden] from raw bytes (length already validated against the header)."""
    if n_pos == 0:
        return torch.empty((1, 0, hidden), dtype=TORCH_OF[dtype])
    if dtype.scaled:
        rows = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(n_pos, dtype.position_bytes(hidden))
        fresh = torch.contiguous_format  # a fresh, aligned buffer: viewing bytes as floats needs one
        codes = rows[:, :hidden].clone(memory_format=fresh).view(_CODE[dtype]).view(1, n_pos, hidden)
        scale = rows[:, hidden:].clone(memory_format=fresh).view(torch.float32).view(1, n_pos, 1)
        return _decode(codes, scale)  # values are the (authenticated) sender's, as for the float dtypes
    tensor = torch.frombuffer(bytearray(payload), dtype=TORCH_OF[dtype])
    return tensor.view(1, n_pos, hidden)

