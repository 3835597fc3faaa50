"""The node side of bridges on plain data: a gap is covered only by bridges that tile it exactly, a broken
or wrong-sized file is refused with its reason, and the wire helper rounds as the chain does."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from payload.bridges import Bridge, BridgeError, BridgeSet, bridge_wire, load_bridges, span_label
from payload.frames import WireDtype
from payload.tensors import to_wire


def _bridge(first: int, end: int, h: int = 8, seed: int = 0) -> Bridge:
    g = torch.Generator().manual_seed(seed)
    return Bridge(first, end, torch.randn(h, h, generator=g), torch.randn(h, generator=g))


def test_a_gap_is_covered_by_bridges_that_tile_it_exactly():
    held = BridgeSet({b.key: b for b in (_bridge(0, 2), _bridge(2, 5), _bridge(5, 6))})
    assert [m.key for m in held.cover(2, 6)] == ["2-4", "5-5"]
    assert held.cover(0, 2)[0].key == "0-1"
    assert held.cover(3, 5) is None, "no bridge starts inside a slice"
    assert held.cover(2, 4) is None, "a bridge may not run past the gap"
    assert held.cover(6, 8) is None and held.cover(2, 2) is None
    assert BridgeSet().cover(0, 2) is None
    assert held.missing([(0, 2), (2, 6), (3, 5)]) == ["3-4"]


def test_bridging_in_turn_is_computed_in_float32_and_rounded_once_to_the_wire():
    a, b = _bridge(0, 2, seed=1), _bridge(2, 4, seed=2)
    hidden = to_wire(torch.randn(1, 3, 8), WireDtype.BFLOAT16)
    out = bridge_wire([a, b], hidden, WireDtype.BFLOAT16)
    expected = ((hidden.float() @ a.weight + a.bias) @ b.weight + b.bias).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert span_label(2, 5) == "2-4"


def test_a_file_that_is_not_bridges_is_refused_with_its_reason(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(BridgeError, match="cannot read bridges"):
        load_bridges(garbage)
    with pytest.raises(BridgeError, match="cannot read bridges"):
        load_bridges(tmp_path / "absent.safetensors")
    no_bias = tmp_path / "no-bias.safetensors"
    save_file({"weight.0-1": torch.zeros(8, 8)}, str(no_bias))
    with pytest.raises(BridgeError, match="not a bridge"):
        load_bridges(no_bias)
    backwards = tmp_path / "backwards.safetensors"
    save_file({"weight.3-1": torch.zeros(8, 8), "bias.3-1": torch.zeros(8)}, str(backwards))
    with pytest.raises(BridgeError, match="not a bridge"):
        load_bridges(backwards)


def test_a_bridge_of_another_width_is_refused(tmp_path):
    path = tmp_path / "b.safetensors"
    save_file({"weight.0-1": torch.zeros(8, 8), "bias.0-1": torch.zeros(8)}, str(path))
    assert list(load_bridges(path, hidden=8)) == ["0-1"]
    with pytest.raises(BridgeError, match="hidden size is 16"):
        load_bridges(path, hidden=16)
    with pytest.raises(BridgeError, match="hidden size"):
        BridgeSet.load(str(path), 16)
    assert BridgeSet.load("", 16).by_first == {}
