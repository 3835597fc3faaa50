"""MMLU scored the way lm-evaluation-harness's ``mmlu`` task scores it, for many skip sets at once.

The harness (``mmlu/default``) builds the context as the subject description,
the few-shot exemplars, then the question::

    The following are multiple choice questions (with answers) about {subject}.\\n\\n
    {exemplar.question.strip()}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer: {letter}\\n\\n   (k times)
    {question.strip()}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:

and scores each continuation " A" .. " D" by its summed log-likelihood after
the context; the prediction is the argmax and accuracy is the plain mean over
all scored questions (micro average).  Tokenisation follows the harness's
``_encode_pair``: the continuation's tokens are those of ``context +
continuation`` beyond the context's own tokens.  Gemma gets a BOS token, as the
harness forces for it.

Exemplars are the first k questions of each subject: from the dev split when
the data has one (the harness's ``first_n`` sampler on ``dev``), otherwise
from the test split itself, in which case they are excluded from scoring.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from quality.errors import StudyError
from quality.mmlu_data import LETTERS, MMLUData, MMLUDataError, Question
from quality.model import SkipModel
from quality.progress import Bar
from quality.skipsets import SkipSet
from quality.walk import StandIn, layer_calls, trunk, walk


def description(subject: str) -> str:
    """The harness's per-subject task description (it ends with a blank line)."""
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def question_text(question: Question) -> str:
    """The harness's ``doc_to_text``: question, lettered choices, ``Answer:``."""
    lines = [question.question.strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices)]
    return "\n".join(lines) + "\nAnswer:"


def context(question: Question, exemplars: list[Question]) -> str:
    """Description, then each exemplar answered (``" {letter}"``) and followed by a blank line, then the question."""
    shots = "".join(f"{question_text(e)} {LETTERS[e.answer]}\n\n" for e in exemplars)
    return description(question.subject) + shots + question_text(question)


def split(data: MMLUData, shots: int) -> tuple[list[Question], dict[str, list[Question]]]:
    """Scored questions and each subject's exemplars for ``shots``-shot prompts."""
    if shots < 0:
        raise StudyError(f"shots must be 0 or more, got {shots}")
    by_subject: dict[str, list[Question]] = defaultdict(list)
    for q in data.dev if data.dev is not None else data.test:
        by_subject[q.subject].append(q)
    exemplars = {subject: qs[:shots] for subject, qs in by_subject.items()}
    if data.dev is not None:
        scored = list(data.test)
    else:
        taken = {id(q) for qs in exemplars.values() for q in qs}
        scored = [q for q in data.test if id(q) not in taken]
    for subject in dict.fromkeys(q.subject for q in scored):
        if len(exemplars.get(subject, [])) < shots:
            raise MMLUDataError(
                f"{shots}-shot prompts need {shots} exemplars for subject {subject!r}, "
                f"but {data.source} has {len(exemplars.get(subject, []))}"
            )
    return scored, exemplars


def spread(questions: list[Question], limit: int | None) -> list[Question]:
    """At most ``limit`` questions taken round-robin over subjects, so a small limit still covers them all.

    MMLU files are ordered by subject; the first N questions would all be
    moral scenarios.  Within a subject, file order is kept.
    """
    if limit is None or limit >= len(questions):
        return list(questions)
    if limit < 1:
        raise StudyError(f"limit must be at least 1, got {limit}")
    queues: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        queues[q.subject].append(q)
    chosen: list[Question] = []
    depth = 0
    while len(chosen) < limit:
        for queue in queues.values():
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return chosen


@dataclass(frozen=True)
class Encoded:
    """A question as token ids: the context (with BOS when used) and the four continuations."""

    question: Question
    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    def inputs(self) -> dict[tuple[int, ...], list[int]]:
        """Model inputs and the choices each one scores: one input when every continuation is one token."""
        grouped: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for choice, continuation in enumerate(self.continuations):
            grouped[(self.context + continuation)[:-1]].append(choice)
        return dict(grouped)


def encode(tokenizer, question: Question, exemplars: list[Question], *, bos: int | None) -> Encoded:
    """Tokenise one question like the harness's ``_encode_pair``."""
    text = context(question, exemplars)
    prefix = [bos] if bos is not None else []
    context_ids = prefix + tokenizer.encode(text, add_special_tokens=False)
    continuations = []
    for letter in LETTERS:
        whole = prefix + tokenizer.encode(text + " " + letter, add_special_tokens=False)
        continuation = tuple(whole[len(context_ids) :])
        if not continuation:
            raise MMLUDataError(f"the tokenizer merges ' {letter}' into the context; cannot score it")
        continuations.append(continuation)
    return Encoded(question, tuple(context_ids), tuple(continuations))


@dataclass(frozen=True)
class MMLUScores:
    """Log-likelihood of each choice under each skip set: ``loglik[set, question, choice]``."""

    sets: list[SkipSet]
    questions: list[Question]
    loglik: np.ndarray

    @property
    def answers(self) -> np.ndarray:
        return np.array([q.answer for q in self.questions])

    @property
    def correct(self) -> np.ndarray:
        """[set, question] booleans; ties go to the first choice, as with the harness's ``np.argmax``."""
        return self.loglik.argmax(axis=-1) == self.answers[None, :]

    @property
    def subjects(self) -> list[str]:
        return [q.subject for q in self.questions]

    def row(self, skip: SkipSet) -> int:
        return self.sets.index(skip)


def mmlu_work(model: SkipModel, encoded: list[Encoded], sets: list[SkipSet]) -> float:
    """Multiply-accumulates :func:`score` will do (the progress bar's total)."""
    calls = layer_calls(sets, model.num_layers)
    total = 0.0
    for item in encoded:
        for tokens, choices in item.inputs().items():
            positions = max(len(item.continuations[c]) for c in choices)
            total += len(tokens) * calls * model.layer_macs_per_token
            total += len(set(sets)) * positions * model.head_macs_per_position
    return total


@torch.inference_mode()
def score(model: SkipModel, encoded: list[Encoded], sets: list[SkipSet], bar: Bar,
          stand_in: StandIn | None = None) -> MMLUScores:
    """Log-likelihoods of " A".." D" for every question under every skip set, sharing prefixes across sets
    (skipped layers replaced by ``stand_in``, if given)."""
    sets = list(dict.fromkeys(sets))
    rows = {skip: i for i, skip in enumerate(sets)}
    loglik = np.zeros((len(sets), len(encoded), 4), dtype=np.float64)
    for q_index, item in enumerate(encoded):
        for tokens, choices in item.inputs().items():
            first = len(item.context) - 1
            lengths = {c: len(item.continuations[c]) for c in choices}
            needed = max(lengths.values())
            layer_work = len(tokens) * model.layer_macs_per_token

            def visit(skip: SkipSet, hidden: torch.Tensor) -> None:
                logp = torch.log_softmax(model.logits(hidden[:, first : first + needed])[0], dim=-1)
                for choice, length in lengths.items():
                    target = torch.tensor(item.continuations[choice])
                    loglik[rows[skip], q_index, choice] = float(logp[torch.arange(length), target].sum())
                bar.advance(needed * model.head_macs_per_position)

            seq = model.sequence(tokens)
            states = trunk(model, seq, lambda n: bar.advance(n * layer_work))
            walk(model, seq, states, sets, visit, lambda n: bar.advance(n * layer_work), stand_in)
    return MMLUScores(sets, [item.question for item in encoded], loglik)
