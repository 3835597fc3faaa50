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


def _sessions(sl: LayerSlice, lengths: list[int]) -> list:
    """One cache per session, each holding a prefill of its own length (the same inputs on every call)."""
    caches = []
    for n in lengths:
        cache = sl.new_cache()
        hidden = torch.randn(1, n, sl.spec.hidden_size, generator=torch.Generator().manual_seed(n))
        sl.forward(hidden, torch.arange(n).unsqueeze(0), cache)
        cache.commit()
        caches.append(cache)
    return caches


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gemma2", "mistral", "qwen2"])
def test_a_batched_decode_step_is_each_sessions_step_and_replays_row_by_row(tiny_prepared, kind):
    """Sessions of different lengths (some past the sliding window) batched: each row is its session's step
    (to float tolerance: a batch sums in another order), exactly what a batch of zeros around it gives (what
    the oracle replays), and each cache gains the position, so the next unbatched step still matches."""
    spec = ModelSpec(tiny_prepared(kind))
    sl = LayerSlice.load(spec, 0, spec.num_layers)
    lengths = [3, 40, 7, 19, 1]
    steps = [torch.randn(1, 1, spec.hidden_size, generator=torch.Generator().manual_seed(100 + j))
             for j in range(len(lengths))]
    batched_caches = _sessions(sl, lengths)
    outs = sl.forward_rows([(h, n, c) for h, n, c in zip(steps, lengths, batched_caches)])
    alone_caches = _sessions(sl, lengths)
    alone = [sl.forward(h, torch.tensor([[n]]), c) for h, n, c in zip(steps, lengths, alone_caches)]
    for j, n in enumerate(lengths):
        torch.testing.assert_close(outs[j], alone[j], rtol=1e-4, atol=1e-5)
        assert batched_caches[j].length == n + 1
        replay = [None] * len(lengths)
        replay[j] = (steps[j], n, _sessions(sl, [n])[0])
        assert torch.equal(sl.forward_rows(replay)[j], outs[j]), f"row {j} replayed with padding differs"
    nxt = torch.randn(1, 1, spec.hidden_size, generator=torch.Generator().manual_seed(7))
    for j, n in enumerate(lengths):
        batched_caches[j].commit(), alone_caches[j].commit()
        torch.testing.assert_close(sl.forward(nxt, torch.tensor([[n + 1]]), batched_caches[j]),
                                   sl.forward(nxt, torch.tensor([[n + 1]]), alone_caches[j]), rtol=1e-4, atol=1e-5)


def test_a_batch_of_one_is_the_unbatched_step_and_a_batch_needs_a_real_row(tiny_prepared):
    spec = ModelSpec(tiny_prepared("llama"))
    sl = LayerSlice.load(spec, 0, spec.num_layers)
    step = torch.randn(1, 1, spec.hidden_size)
    [one] = sl.forward_rows([(step, 5, _sessions(sl, [5])[0])])
    assert torch.equal(one, sl.forward(step, torch.tensor([[5]]), _sessions(sl, [5])[0]))
    with pytest.raises(ValueError, match="at least one real row"):
        sl.forward_rows([None, None])


def test_batched_logits_are_each_rows_and_replay_with_padding(tiny_prepared):
    spec = ModelSpec(tiny_prepared("gemma2"))  # final logit soft-capping on
    head = Head(spec)
    rows = [torch.randn(1, 1, spec.hidden_size, generator=torch.Generator().manual_seed(j)) for j in range(4)]
    batched = head.logits_rows(rows)
    for j, row in enumerate(rows):
        torch.testing.assert_close(batched[j], head.logits(row), rtol=1e-4, atol=1e-5)
        padded = [None] * 4
        padded[j] = row
        assert torch.equal(head.logits_rows(padded)[j], batched[j])
    assert torch.equal(head.logits_rows([rows[0]])[0], head.logits(rows[0]))


def test_soft_capped_logits_of_a_chain_equal_the_monolith_bit_for_bit(tiny_prepared):
    """The head's soft-capping (done in place) yields the very logits the model's own forward does."""
    prepared = tiny_prepared("gemma2")
    model = load_hf_model(prepared)
    assert model.config.final_logit_softcapping
    spec = ModelSpec(prepared)
    head, sl = Head(spec), LayerSlice.load(spec, 0, spec.num_layers)
    ids = torch.randint(3, 20, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(ids).logits
    got = head.logits(sl.forward(head.embed_ids(ids), torch.arange(9).unsqueeze(0), sl.new_cache()))
    assert torch.equal(got, expected)
