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


def _from_scratch(model, ids, skip, stand_in):
    """A skip set with a stand-in for each skipped layer, computed the plain way: layer by layer."""
    seq = model.sequence(ids)
    hidden, done = seq.embeddings, ()
    for index in range(model.num_layers):
        if index in skip:
            done += (index,)
            hidden = stand_in(done, hidden, seq)
        else:
            hidden = model.run(hidden, seq, index, index + 1)
    return hidden


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_with_a_stand_in_the_walk_still_equals_every_set_from_scratch(kind, skip_model):
    from quality.standins import repeat_previous

    model = skip_model(kind)
    sets = all_kinds_of_sets(model.num_layers)
    generator = torch.Generator().manual_seed(0)
    hidden_size = model.config.hidden_size
    maps = {k: torch.randn(hidden_size, hidden_size, generator=generator) / hidden_size**0.5
            for k in range(model.num_layers)}
    for stand_in in (lambda done, h, seq: h @ maps[done[-1]], repeat_previous(model)):
        seq = model.sequence(IDS)
        got = {}
        walk(model, seq, trunk(model, seq), sets, lambda skip, hidden: got.setdefault(skip, hidden), None, stand_in)
        for skip in sets:
            torch.testing.assert_close(got[skip], _from_scratch(model, IDS, skip, stand_in), atol=1e-5, rtol=1e-5)


def test_repeating_the_previous_layer_repeats_it_once_per_run_of_skipped_layers(skip_model):
    from quality.standins import repeat_previous

    model = skip_model("llama")
    seq = model.sequence(IDS)
    states = trunk(model, seq)
    stand_in = repeat_previous(model)
    torch.testing.assert_close(stand_in((3,), states[3], seq), model.run(states[3], seq, 2, 3))
    assert stand_in((2, 3), states[3], seq) is states[3], "the run's first layer already repeated layer 1"
    assert stand_in((0,), states[0], seq) is states[0], "nothing comes before layer 0"
