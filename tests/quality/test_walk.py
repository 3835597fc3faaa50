"""Sharing prefixes across skip sets gives exactly what running each set from scratch gives."""

import pytest
import torch

from quality.skipsets import choose_sets
from quality.walk import layer_calls, trunk, walk

IDS = list(range(3, 23))


def all_kinds_of_sets(num_layers):
    return [*choose_sets(num_layers, single=True, double=True, extra=[]), (0, 2, 4), (1, 3), tuple(range(num_layers))]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_walk_equals_recomputing_every_set_from_scratch(kind, skip_model):
    model = skip_model(kind)
    sets = all_kinds_of_sets(model.num_layers)
    seq = model.sequence(IDS)
    got = {}
    walk(model, seq, trunk(model, seq), sets, lambda skip, hidden: got.setdefault(skip, hidden))
    assert sorted(got) == sorted(set(sets))
    for skip in sets:
        torch.testing.assert_close(got[skip], model.final_hidden(IDS, skip), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_layer_calls_counts_the_work_walk_does(kind, skip_model):
    model = skip_model(kind)
    sets = all_kinds_of_sets(model.num_layers)
    seq = model.sequence(IDS)
    calls = []
    states = trunk(model, seq, calls.append)
    walk(model, seq, states, sets, lambda skip, hidden: None, calls.append)
    assert sum(calls) == layer_calls(sets, model.num_layers)


def test_reuse_saves_most_of_the_work_for_18_layers():
    sets = choose_sets(18, single=True, double=True, extra=[])
    assert len(sets) == 1 + 18 + 153
    assert layer_calls(sets, 18) == 18 + 153 + 816
    assert sum(18 - len(s) for s in sets) == 2772


def test_the_full_model_is_visited_first(skip_model):
    model = skip_model("llama")
    seq = model.sequence(IDS)
    order = []
    walk(model, seq, trunk(model, seq), [(1,), (), (0, 1)], lambda skip, hidden: order.append(skip))
    assert order[0] == () and sorted(order) == sorted([(), (1,), (0, 1)])


def test_triples_share_their_two_layer_prefix():
    # trunk 6; after skipping 0, 1, 2: layers 3-5 (3); layer 2 once more on the way to skip 3 (1); then 4-5 (2)
    assert layer_calls([(0, 1, 2), (0, 1, 3)], 6) == 6 + 3 + 1 + 2
