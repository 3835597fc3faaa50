"""Proxy accounting: nothing skipped means KL 0 and agreement 1; every number matches a direct computation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from quality.corpus import BUNDLED_CORPUS, read_corpus, windows
from quality.proxies import BLOCK_TOKENS, evaluate_proxies, proxy_work


class CountingBar:
    def __init__(self):
        self.done = 0.0

    def advance(self, work):
        self.done += work


def corpus_windows(model, tokenizer, tokens=150, window=64):
    stream = tokenizer.encode(read_corpus(None), add_special_tokens=False)
    bos = tokenizer.bos_token_id if model.adds_bos else None
    return windows(stream, tokens=tokens, window=window, bos=bos)


@pytest.fixture(params=["llama", "gemma3"])
def setup(request, tiny, skip_model):
    from quality.model import load_tokenizer

    model = skip_model(request.param)
    cut = corpus_windows(model, load_tokenizer(tiny(request.param)[1]))
    sets = [(), (1,), (0, 3), (model.num_layers - 1,)]
    bar = CountingBar()
    return request.param, model, cut, sets, evaluate_proxies(model, cut, sets, bar), bar


def test_skipping_nothing_gives_kl_zero_and_full_agreement(setup):
    _, _, _, _, scores, _ = setup
    full = scores.row(())
    np.testing.assert_allclose(scores.kl[full], 0.0, atol=1e-6)
    assert scores.top1[full].all()
    assert (scores.kl[scores.row((1,))] > 0).any() and not scores.top1[scores.row((0, 3))].all()


def test_every_value_matches_a_direct_computation(setup, hf_model):
    kind, model, cut, sets, scores, _ = setup
    reference = hf_model(kind)
    offset = 0
    for window in cut:
        ids = torch.tensor([window.token_ids])
        targets = torch.tensor(window.targets)
        span = slice(offset, offset + len(targets))
        logp_full = torch.log_softmax(reference(ids).logits[0], -1)
        for skip in sets:
            logq = torch.log_softmax(model.logits(model.final_hidden(window.token_ids, skip))[0], -1)
            row = scores.row(skip)
            nll = F.nll_loss(logq, targets, reduction="none")
            kl = F.kl_div(logq, logp_full, log_target=True, reduction="none").sum(-1)
            np.testing.assert_allclose(scores.nll[row, span], nll.numpy(), atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(scores.kl[row, span], kl.numpy(), atol=1e-5, rtol=1e-4)
            np.testing.assert_array_equal(scores.top1[row, span], (logq.argmax(-1) == logp_full.argmax(-1)).numpy())
        offset += len(targets)
    assert offset == scores.nll.shape[1] == 150


def test_full_model_perplexity_is_transformers_loss(setup, hf_model):
    kind, _, cut, _, scores, _ = setup
    window = cut[0]
    ids = torch.tensor([window.token_ids])
    with torch.no_grad():
        loss = F.cross_entropy(hf_model(kind)(ids).logits[0], torch.tensor(window.targets))
    assert scores.nll[scores.row(()), : len(window.targets)].mean() == pytest.approx(float(loss), rel=1e-5)


def test_blocks_stay_inside_windows_and_progress_adds_up(setup):
    _, model, cut, sets, scores, bar = setup
    assert [len(w.targets) for w in cut] == [64, 64, 22]
    assert scores.blocks.max() + 1 == 3 and np.bincount(scores.blocks).max() <= BLOCK_TOKENS
    assert bar.done == pytest.approx(proxy_work(model, cut, sets))


class TestWindows:
    def test_with_bos_every_token_is_a_target_once(self):
        cut = windows(list(range(10, 20)), tokens=7, window=3, bos=1)
        assert [w.token_ids for w in cut] == [(1, 10, 11), (1, 13, 14), (1,)]
        assert sum((w.targets for w in cut), ()) == tuple(range(10, 17))

    def test_without_bos_the_first_token_is_only_context(self):
        cut = windows(list(range(10, 20)), tokens=7, window=3, bos=None)
        assert [w.token_ids for w in cut] == [(10, 11, 12), (13, 14, 15), (16,)]
        assert sum((w.targets for w in cut), ()) == tuple(range(11, 18))

    def test_a_short_corpus_is_refused_with_its_size(self):
        with pytest.raises(ValueError, match="has 5 tokens"):
            windows(list(range(5)), tokens=10, window=4, bos=None)

    def test_missing_or_empty_corpus_files_are_refused(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            read_corpus(tmp_path / "nope.txt")
        (tmp_path / "empty.txt").write_text("  \n")
        with pytest.raises(ValueError, match="empty"):
            read_corpus(tmp_path / "empty.txt")

    def test_the_bundled_corpus_is_large_enough_for_the_default_study(self):
        assert len(BUNDLED_CORPUS.read_text().split()) > 4000
