"""MMLU is scored exactly as lm-evaluation-harness scores it, for every skip set."""

import numpy as np
import pytest
import torch

from quality.mmlu import Encoded, context, encode, mmlu_work, score, split, spread
from quality.mmlu_data import MMLUData, MMLUDataError, Question, load_mmlu
from quality.model import load_tokenizer

from .test_proxies import CountingBar

ALGEBRA = "abstract algebra"


def q(text, answer=1, subject=ALGEBRA):
    return Question(subject, text, ("3", "4", "5", "6"), answer)


class TestPrompt:
    def test_zero_shot_prompt_is_the_harness_template(self):
        assert context(q("  What is 2+2? \n"), []) == (
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
            "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
        )

    def test_exemplars_are_answered_and_separated_by_blank_lines(self):
        shots = [q("What is 1+3?", 1), q("What is 2+3?", 2)]
        assert context(q("What is 2+2?"), shots) == (
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
            "What is 1+3?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
            "What is 2+3?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: C\n\n"
            "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
        )


class TestSplit:
    def test_without_dev_the_first_k_of_each_subject_are_exemplars_and_not_scored(self, mmlu_jsonl):
        data = load_mmlu(mmlu_jsonl)
        scored, exemplars = split(data, 1)
        assert len(data.test) == 9 and len(scored) == 6
        for subject, shots in exemplars.items():
            first = next(x for x in data.test if x.subject == subject)
            assert shots == [first] and all(x is not first for x in scored)

    def test_with_dev_every_test_question_is_scored(self):
        data = MMLUData(test=[q("a"), q("b")], dev=[q("c"), q("d")], source="x")
        scored, exemplars = split(data, 2)
        assert scored == data.test and exemplars[ALGEBRA] == data.dev

    def test_too_few_exemplars_is_an_error(self):
        data = MMLUData(test=[q("a")], dev=[q("c")], source="csv dir")
        with pytest.raises(MMLUDataError, match="need 2 exemplars"):
            split(data, 2)

    def test_limit_spreads_over_subjects_in_file_order(self, mmlu_jsonl):
        questions = load_mmlu(mmlu_jsonl).test
        chosen = spread(questions, 4)
        assert [x.subject for x in chosen] == ["astronomy", "world religions", "high school chemistry", "astronomy"]
        assert chosen[3] is questions[1] and spread(questions, None) == questions


def direct_logliks(hf, tokenizer, question, exemplars, bos):
    """lm-eval's HFLM: encode context and context+continuation, sum the continuation's log-probs."""
    text = context(question, exemplars)
    prefix = [bos] if bos is not None else []
    ctx = prefix + tokenizer.encode(text, add_special_tokens=False)
    out = []
    for letter in "ABCD":
        whole = prefix + tokenizer.encode(text + " " + letter, add_special_tokens=False)
        cont = whole[len(ctx):]
        logits = hf(torch.tensor([(ctx + cont)[:-1]])).logits[0]
        logp = torch.log_softmax(logits[len(ctx) - 1 :], -1)
        out.append(float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
    return out


@pytest.mark.parametrize("kind,shots", [("llama", 0), ("gemma3", 1)])
def test_scores_match_a_direct_computation_for_every_skip_set(kind, shots, tiny, skip_model, hf_model, mmlu_jsonl):
    model, tokenizer, hf = skip_model(kind), load_tokenizer(tiny(kind)[1]), hf_model(kind)
    bos = tokenizer.bos_token_id if model.adds_bos else None
    scored, exemplars = split(load_mmlu(mmlu_jsonl), shots)
    encoded = [encode(tokenizer, x, exemplars[x.subject], bos=bos) for x in scored]
    sets = [(), (0,), (1, 2)]
    bar = CountingBar()
    scores = score(model, encoded, sets, bar)
    assert bar.done == pytest.approx(mmlu_work(model, encoded, sets))
    expected_full = np.array([direct_logliks(hf, tokenizer, x, exemplars[x.subject], bos) for x in scored])
    np.testing.assert_allclose(scores.loglik[scores.row(())], expected_full, rtol=1e-4, atol=1e-4)
    answers = np.array([x.answer for x in scored])
    np.testing.assert_array_equal(scores.correct[0], expected_full.argmax(-1) == answers)
    for skip in sets[1:]:
        for i, item in enumerate(encoded):
            for choice, cont in enumerate(item.continuations):
                ids = item.context + cont
                logp = torch.log_softmax(model.logits(model.final_hidden(ids[:-1], skip))[0], -1)
                expected = logp[torch.arange(len(item.context) - 1, len(ids) - 1), torch.tensor(cont)].sum()
                assert scores.loglik[scores.row(skip), i, choice] == pytest.approx(float(expected), abs=1e-4)


def test_gemma_gets_bos_and_multi_token_letters_are_scored_whole(tiny, mmlu_jsonl):
    tokenizer = load_tokenizer(tiny("gemma3")[1])
    item = encode(tokenizer, load_mmlu(mmlu_jsonl).test[0], [], bos=tokenizer.bos_token_id)
    assert item.context[0] == tokenizer.bos_token_id
    lengths = [len(c) for c in item.continuations]
    assert lengths == [1, 2, 2, 2]  # this tokenizer has a " A" token but spells " B" as " " + "B"
    # " A" is scored after the context; " B".." D" share one run over the context plus " ".
    assert list(item.inputs().values()) == [[0], [1, 2, 3]]


def test_ties_go_to_the_first_choice_like_numpy_argmax():
    from quality.mmlu import MMLUScores

    scores = MMLUScores(sets=[()], questions=[q("x", answer=0)], loglik=np.zeros((1, 1, 4)))
    assert scores.correct[0, 0]


def test_an_encoded_question_with_single_token_letters_runs_once():
    item = Encoded(q("x"), (5, 6, 7), ((10,), (11,), (12,), (13,)))
    assert item.inputs() == {(5, 6, 7): [0, 1, 2, 3]}
