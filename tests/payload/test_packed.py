"""The packed product batched heads use: close to the plain product, each row its own, reproducible."""

import platform

import pytest
import torch

from payload.packed import packed_product


@pytest.fixture(scope="module")
def weight():
    return torch.randn(4096, 96, generator=torch.Generator().manual_seed(3)) * 0.05


def test_it_packs_on_this_machine_and_stays_within_float_noise_of_the_plain_product(weight):
    product, packed = packed_product(weight)
    if platform.machine() in ("x86_64", "AMD64"):
        assert packed, "x86 builds of torch have oneDNN: a batched head that silently stays unpacked is 2x slower"
    rows = torch.randn(8, 1, 96, generator=torch.Generator().manual_seed(4))
    out = product(rows)
    assert out.shape == (8, 1, 4096)
    torch.testing.assert_close(out, torch.nn.functional.linear(rows, weight), rtol=1e-5, atol=1e-5)


def test_a_row_depends_on_its_own_values_and_the_batch_size_only_and_repeats_exactly(weight):
    product, _ = packed_product(weight)
    rows = torch.randn(5, 1, 96, generator=torch.Generator().manual_seed(5))
    first = product(rows)
    other = rows.clone()
    other[0] = torch.randn(1, 96, generator=torch.Generator().manual_seed(6))
    assert torch.equal(product(other)[1:], first[1:]), "another row's values changed this one"
    again, _ = packed_product(weight.clone())  # packed afresh, as the oracle does
    assert torch.equal(again(rows), first)
