"""Bridges as nodes use them: load a bridge file, cover a gap of lost slices, apply it to wire tensors.

A bridge is an affine map fitted offline (:mod:`quality.bridges` fits them) that stands in for decoder layers
``[first, end)``: ``out = hidden @ weight + bias``.  When nodes are out under ``on_failure: bridge``, the node
before the gap (the user node, for a gap at the start) applies the bridges of the lost slices, in turn, to
what it sends on.  A gap of several lost slices is covered by composing their single-slice maps (applied one
after another in float32): measured on Gemma 3 270M, composing is as good as a map fitted for the span
(benchmarks/bridges.py), and it needs no file per combination.

Exactness: the input is the wire-rounded tensor the node would have sent, computed on in float32 and rounded
to the wire dtype again, so the consistency oracle reproduces a bridged step bit for bit with the same helper.
The file is safetensors (``weight.<first>-<last>``, ``bias.<first>-<last>``, layers inclusive as in placement
files): never pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from payload.errors import JarvisError
from payload.frames import WireDtype
from payload.tensors import to_wire

FORMAT = "jarvis-bridges-1"
FILE = "bridges.safetensors"  # its name in a node's model directory


class BridgeError(JarvisError, ValueError):
    """A bridge file is unreadable or does not fit the model, or a gap has no bridges to cover it."""


@dataclass(frozen=True)
class Bridge:
    """The affine stand-in for decoder layers ``[first, end)``: ``out = hidden @ weight + bias``."""

    first: int
    end: int
    weight: torch.Tensor  # [hidden, hidden]
    bias: torch.Tensor  # [hidden]

    @property
    def key(self) -> str:
        return f"{self.first}-{self.end - 1}"

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """The bridged state for ``hidden`` [..., hidden], computed in float32 and returned in its dtype."""
        return self.apply_f32(hidden.to(torch.float32)).to(hidden.dtype)

    def apply_f32(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.weight.to(torch.float32) + self.bias.to(torch.float32)


def load_bridges(path: Path | str, *, hidden: int | None = None) -> dict[str, Bridge]:
    """The bridges in ``path`` by key (``first-last``); with ``hidden``, each must map that width."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise BridgeError(f"cannot read bridges from {path}: {exc}") from None
    bridges = {}
    for name, weight in tensors.items():
        kind, _, key = name.partition(".")
        if kind != "weight":
            continue
        first, _, last = key.partition("-")
        bias = tensors.get(f"bias.{key}")
        if not (first.isdigit() and last.isdigit()) or int(last) < int(first) or bias is None:
            raise BridgeError(f"{path}: {name!r} is not a bridge (want weight.<first>-<last> with its bias)")
        width = hidden if hidden is not None else weight.shape[0]
        if tuple(weight.shape) != (width, width) or tuple(bias.shape) != (width,):
            raise BridgeError(f"{path}: bridge {key} maps {tuple(weight.shape)} + {tuple(bias.shape)}, "
                              f"the model's hidden size is {width}")
        bridges[key] = Bridge(int(first), int(last) + 1, weight, bias)
    return bridges


class BridgeSet:
    """The bridges a node holds, and which of them cover a gap of lost layers."""

    def __init__(self, bridges: dict[str, Bridge] | None = None):
        self.by_first = {b.first: b for b in (bridges or {}).values()}

    @classmethod
    def load(cls, path: str, hidden: int) -> "BridgeSet":
        """From a node config's ``bridges_file`` ('' for none)."""
        return cls(load_bridges(path, hidden=hidden) if path else None)

    def cover(self, first: int, end: int) -> list[Bridge] | None:
        """Consecutive bridges tiling layers ``[first, end)`` exactly, or None when they do not."""
        maps, at = [], first
        while at < end:
            bridge = self.by_first.get(at)
            if bridge is None or bridge.end > end:
                return None
            maps.append(bridge)
            at = bridge.end
        return maps if maps else None

    def missing(self, spans: list[tuple[int, int]]) -> list[str]:
        """The ``first-last`` labels of ``spans`` (a placement's slices) these bridges do not cover."""
        return [span_label(a, b) for a, b in spans if self.cover(a, b) is None]


def bridge_wire(maps: list[Bridge], hidden: torch.Tensor, wire: WireDtype) -> torch.Tensor:
    """``hidden`` (a wire-dtype tensor [1, T, H]) through ``maps`` in turn, in float32, rounded to the wire."""
    out = hidden.to(torch.float32)
    for bridge in maps:
        out = bridge.apply_f32(out)
    return to_wire(out, wire)


def span_label(first: int, end: int) -> str:
    """``first-last`` (inclusive), as tokens.csv's ``bridges`` column and placement files write spans."""
    return f"{first}-{end - 1}"


def parse_spans(cell: object) -> dict[int, int]:
    """A ``bridges`` cell (space-separated ``first-last`` spans; empty or NaN: none) as ``{first: end}``."""
    spans = {}
    for span in cell.split() if isinstance(cell, str) else []:
        first, _, last = span.partition("-")
        spans[int(first)] = int(last) + 1
    return spans
