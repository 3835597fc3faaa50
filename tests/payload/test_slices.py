"""A chain of slices reproduces the monolithic model exactly (tiny random models, several cut points)."""

import pytest
import torch

from experiment.replay import load_hf_model
from payload.slices import Head, LayerSlice, ModelSpec


def chain_greedy(prepared, cuts, prompt_ids, new_tokens):
    spec = ModelSpec(prepared)
    head = Head(spec)
    bounds = [0, *cuts, spec.num_layers]
    slices = [LayerSlice.load(spec, a, b) for a, b in zip(bounds, bounds[1:])]
    caches = [s.new_cache() for s in slices]
    ids, out, pos = list(prompt_ids), [], 0
    for _ in range(new_tokens):
        new = ids[pos:]
        h = head.embed_ids(torch.tensor([new]))
        p = torch.arange(pos, pos + len(new)).unsqueeze(0)
        for s, c in zip(slices, caches):
            c.commit()
            h = s.forward(h, p, c)
        tok = int(head.logits(h)[0, -1].argmax())
        pos = len(ids)
        ids.append(tok)
        out.append(tok)
    return out


@pytest.mark.parametrize("kind,cuts", [("llama", [3]), ("llama", [1, 2, 3, 4, 5]), ("gemma", [1, 9, 17]),
                                        ("gemma3", [2, 4]), ("gemma2", [1, 3]), ("mistral", [2]),
                                        ("qwen2", [1, 2])])
def test_chain_of_slices_matches_generate(tiny_prepared, kind, cuts):
    prepared = tiny_prepared(kind)
    model = load_hf_model(prepared)
    prompt = torch.randint(3, 20, (1, 12), generator=torch.Generator().manual_seed(1))
    expected = model.generate(prompt, max_new_tokens=16, do_sample=False, min_new_tokens=16)[0, 12:].tolist()
    assert chain_greedy(prepared, cuts, prompt[0].tolist(), 16) == expected


def test_rollback_then_recompute_gives_the_same_step(tiny_prepared):
    """A re-sent step (sliding window already full) rolls back and recomputes identically."""
    spec = ModelSpec(tiny_prepared("gemma3"))
    sl = LayerSlice.load(spec, 0, spec.num_layers)
    cache = sl.new_cache()
    h = torch.randn(1, 20, spec.hidden_size)
    sl.forward(h, torch.arange(0, 20).unsqueeze(0), cache)
    step = torch.randn(1, 1, spec.hidden_size)
    cache.commit()
    first = sl.forward(step, torch.tensor([[20]]), cache)
    cache.rollback(1)
    again = sl.forward(step, torch.tensor([[20]]), cache)
    assert torch.equal(first, again) and cache.length == 21


def test_layer_node_loads_only_its_layers(tiny_prepared):
    spec = ModelSpec(tiny_prepared("gemma"))
    sl = LayerSlice.load(spec, 4, 6)
    assert sorted(sl.layers) == [4, 5]
    params = sum(p.numel() for layer in sl.layers.values() for p in layer.parameters())
    full = sum(p.numel() for p in spec._skeleton.model.layers.parameters())
    assert params * 9 == full  # 2 of 18 identical layers
