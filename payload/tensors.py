"""Tensor <-> frame payload conversion (the only place torch meets wire bytes).

Raw little-endian element bytes only: never pickle or ``torch.load`` network data.
"""

from __future__ import annotations

import torch

from payload.frames import WireDtype

TORCH_OF = {WireDtype.FLOAT32: torch.float32, WireDtype.BFLOAT16: torch.bfloat16, WireDtype.FLOAT16: torch.float16}


def to_wire(hidden: torch.Tensor, dtype: WireDtype) -> torch.Tensor:
    """Round ``hidden`` to the wire dtype (what the receiver will see)."""
    return hidden.to(TORCH_OF[dtype]).contiguous()


def to_bytes(hidden: torch.Tensor) -> bytes:
    """Raw bytes of a wire-dtype tensor [1, T, H]."""
    if not hidden.is_contiguous():
        hidden = hidden.contiguous()
    if hidden.dtype in (torch.bfloat16, torch.float16):
        hidden = hidden.view(torch.int16)  # numpy has no bfloat16; the bytes are the same
    return hidden.numpy().tobytes()


def from_bytes(payload: bytes, dtype: WireDtype, n_pos: int, hidden: int) -> torch.Tensor:
    """Tensor [1, n_pos, hidden] of wire dtype from raw bytes (length already validated)."""
    if n_pos == 0:
        return torch.empty((1, 0, hidden), dtype=TORCH_OF[dtype])
    tensor = torch.frombuffer(bytearray(payload), dtype=TORCH_OF[dtype])
    return tensor.view(1, n_pos, hidden)
