"""Tensor <-> frame payload conversion (the only place torch meets wire bytes).

Raw little-endian element bytes only: never pickle or ``torch.load`` network data.

A *wire tensor* is what the receiver will see, as a tensor: for the float dtypes the values in that dtype;
for the compressed dtypes (int8, fp8 e4m3) the decoded values in float32.  Every hop, the history a node keeps
for replays, and the oracle compute on wire tensors, so they must survive the round trip exactly:
``from_bytes(to_bytes(to_wire(x)))`` is ``to_wire(x)``, and ``to_wire`` of a wire tensor changes nothing.

A compressed position (after LLM.int8()'s decomposition) keeps its ``dtype.outliers(H)`` largest-magnitude
values in bfloat16 with their indices, and codes the rest with one scale: a power of two,
``2**ceil(log2(absmax / top))`` (``top`` = 127 for int8, 448 for e4m3).  A power of two costs at most one bit
of range and makes codes times scale exact in float32, so decoding and encoding again gives the same values.
Where a decoded code outgrows a decoded outlier (they were within rounding of each other), encoding the decoded
values again would pick other outliers: ``to_wire`` iterates to the fixed point, in practice one more round.
"""

from __future__ import annotations

import torch

from payload.frames import WireDtype

TORCH_OF = {WireDtype.FLOAT32: torch.float32, WireDtype.BFLOAT16: torch.bfloat16, WireDtype.FLOAT16: torch.float16,
            WireDtype.INT8: torch.float32, WireDtype.FP8_E4M3: torch.float32}
_TOP = {WireDtype.INT8: 127.0, WireDtype.FP8_E4M3: 448.0}  # largest code magnitude
_CODE = {WireDtype.INT8: torch.int8, WireDtype.FP8_E4M3: torch.float8_e4m3fn}
_MIN_EXPONENT = -100  # an all-zero (or tiny) position's scale: far below any hidden state, still a normal float
_FIXED_POINT_ROUNDS = 8


class Encoded:
    """A compressed tensor [1, T, H]: codes, power-of-two scales [1, T, 1], outlier indices and bf16 values."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, index: torch.Tensor, kept: torch.Tensor):
        self.codes, self.scale, self.index, self.kept = codes, scale, index, kept

    def settled(self, decoded: torch.Tensor) -> bool:
        """Whether encoding ``decoded`` (this encoding's values) gives them back: every position's outliers
        still strictly outgrow its decoded codes, so they are chosen again, and the rest codes as before."""
        smallest_kept = self.kept.to(torch.float32).abs().amin(dim=-1)
        largest_rest = (self.codes.to(torch.float32) * self.scale).abs().amax(dim=-1)
        return bool((smallest_kept > largest_rest).all())

    def decode(self) -> torch.Tensor:
        rest = self.codes.to(torch.float32) * self.scale
        return rest.scatter(-1, self.index.to(torch.int64), self.kept.to(torch.float32)).contiguous()


def _encode(hidden: torch.Tensor, dtype: WireDtype) -> Encoded:
    values = hidden.to(torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("hidden states hold inf or NaN: nothing on the wire could decode them")
    index = values.abs().topk(dtype.outliers(values.shape[-1]), dim=-1).indices.sort(dim=-1).values
    kept = torch.gather(values, -1, index).to(torch.bfloat16)
    rest = values.scatter(-1, index, 0.0)
    absmax = rest.abs().amax(dim=-1, keepdim=True)
    scale = torch.pow(2.0, torch.ceil(torch.log2(absmax / _TOP[dtype])).clamp(min=_MIN_EXPONENT))
    scaled = rest / scale  # exact: a power of two
    if dtype == WireDtype.INT8:
        codes = torch.round(scaled).clamp(-127, 127).to(torch.int8)
    else:
        codes = scaled.clamp(-448, 448).to(torch.float8_e4m3fn)
    return Encoded(codes, scale, index.to(torch.int16), kept)


def to_wire(hidden: torch.Tensor, dtype: WireDtype) -> torch.Tensor:
    """Round ``hidden`` to the wire dtype (what the receiver will see)."""
    if not dtype.scaled:
        return hidden.to(TORCH_OF[dtype]).contiguous()
    encoded = _encode(hidden, dtype)
    decoded = encoded.decode()
    for _ in range(_FIXED_POINT_ROUNDS):
        if encoded.settled(decoded):
            return decoded
        encoded = _encode(decoded, dtype)
        again = encoded.decode()
        if torch.equal(again, decoded):
            return decoded
        decoded = again
    raise ValueError(f"{dtype.name} rounding did not settle in {_FIXED_POINT_ROUNDS} rounds")


def to_bytes(hidden: torch.Tensor, dtype: WireDtype) -> bytes:
    """Raw bytes of a wire tensor [1, T, H] in ``dtype``: its elements, or per position its codes, scale,
    outlier indices and outlier values (each as the host orders bytes, as for the float dtypes)."""
    if dtype.scaled:
        enc = _encode(hidden, dtype)
        parts = (enc.codes.view(torch.uint8), enc.scale.view(torch.uint8), enc.index.view(torch.uint8),
                 enc.kept.view(torch.uint8))
        return torch.cat(parts, dim=-1).numpy().tobytes()
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
        k = dtype.outliers(hidden)
        bounds = [0, hidden, hidden + 4, hidden + 4 + 2 * k, hidden + 4 + 4 * k]
        # Each field copied into a fresh, aligned buffer: viewing bytes as wider elements needs one.
        codes, scale, index, kept = (rows[:, a:b].clone(memory_format=torch.contiguous_format).view(kind)
                                     .view(1, n_pos, -1) for (a, b), kind in
                                     zip(zip(bounds, bounds[1:]), (_CODE[dtype], torch.float32, torch.int16,
                                                                   torch.bfloat16)))
        if bool(((index < 0) | (index >= hidden)).any()):
            raise ValueError(f"an outlier index lies outside 0..{hidden - 1}")
        return Encoded(codes, scale, index, kept).decode()  # values are the (authenticated) sender's
    tensor = torch.frombuffer(bytearray(payload), dtype=TORCH_OF[dtype])
    return tensor.view(1, n_pos, hidden)

