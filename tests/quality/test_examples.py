"""Example generations: the chain of surviving slices decodes like the model, and labels follow the rule."""

import pytest
import torch

from quality import examples as ex
from quality.model import load_tokenizer

PROMPT = [2, 40, 41, 42, 50, 60]


class TestRule:
    def test_repetition_counts_repeated_trigrams(self):
        assert ex.repetition([7, 7, 7, 7, 7]) == pytest.approx(2 / 3)
        assert ex.repetition([1, 2, 3, 4, 5]) == 0.0 and ex.repetition([1, 2]) == 0.0

    @pytest.mark.parametrize("kl,extra,expected", [
        (0.1, 0.0, "functioning"),
        (ex.DEGRADED_KL, 0.0, "degraded"),
        (0.1, ex.DEGRADED_LOOP, "degraded"),
        (ex.CRITICAL_KL, 0.0, "critical"),
        (0.1, ex.CRITICAL_LOOP, "critical"),
    ])
    def test_thresholds(self, kl, extra, expected):
        assert ex.classify(kl, extra) == expected

    def test_picks_the_mildest_the_middling_and_the_worst_of_each_size(self):
        kl = {(): 0.0, (0,): 9.0, (1,): 0.1, (2,): 1.1, (3,): 0.4, (0, 1): 12.0, (1, 2): 0.9, (2, 3): 2.0}
        assert ex.pick_sets(kl, [(3,)]) == [(), (1,), (2,), (0,), (1, 2), (0, 1), (3,)]


def test_surviving_layers_become_contiguous_slices(skip_model):
    model = skip_model("gemma3")
    assert [(s.first, s.end) for s in ex.chain(model, (1, 3))] == [(0, 1), (2, 3), (4, 6)]
    assert ex.chain(model, tuple(range(model.num_layers))) == []


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_nothing_skipped_decodes_like_the_transformers_model(kind, skip_model, hf_model):
    ids = list(PROMPT)
    for _ in range(12):  # greedy without a cache (generate() would hold EOS back until min_new_tokens)
        ids.append(int(hf_model(kind)(torch.tensor([ids])).logits[0, -1].argmax()))
    assert ex.generate(skip_model(kind), PROMPT, (), stop=set(), max_new_tokens=12) == ids[len(PROMPT):]


def test_skipped_decoding_equals_recomputing_without_the_layers(skip_model):
    model = skip_model("gemma3")
    ids = list(PROMPT)
    for _ in range(12):  # past the 8-token sliding window
        ids.append(int(model.logits(model.final_hidden(ids, (2, 4)))[0, -1].argmax()))
    assert ex.generate(model, PROMPT, (2, 4), stop=set(), max_new_tokens=12) == ids[len(PROMPT):]


def test_examples_are_written_with_the_full_model_as_baseline(tiny, skip_model, tmp_path):
    model, tokenizer = skip_model("llama"), load_tokenizer(tiny("llama")[1])

    class Bar:
        def advance(self, work):
            pass

    kl = {(): 0.0, (1,): 0.7}
    made = ex.run_examples(model, tokenizer, kl, [(1,)], Bar())
    assert [(e.skip, e.prompt) for e in made] == [((), p) for p in ex.BASE_PROMPTS[:1]] + [
        ((1,), ex.BASE_PROMPTS[0]), ((), ex.BASE_PROMPTS[1]), ((1,), ex.BASE_PROMPTS[1])]
    assert all(e.extra_repetition == 0 for e in made if not e.skip)
    assert made[1].label in {"degraded", "critical"}
    paths = ex.write_examples(made, tmp_path)
    assert [p.name for p in paths] == ["examples.csv", "examples.md"]
    assert "| 1 | " in (tmp_path / "examples.md").read_text()
