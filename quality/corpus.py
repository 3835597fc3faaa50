"""The text the proxies are measured on, cut into model-sized windows.

The bundled corpus (``quality/data/corpus.txt``) is original prose written for
JARVIS and ships under the project's licence; see ``quality/data/README.md``.
Users can point at their own UTF-8 text file instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quality.errors import StudyError, StudyFileMissing

BUNDLED_CORPUS = Path(__file__).parent / "data" / "corpus.txt"


@dataclass(frozen=True)
class Window:
    """Model input ``token_ids`` whose positions ``[0, len(targets))`` predict ``targets``."""

    token_ids: tuple[int, ...]
    targets: tuple[int, ...]


def read_corpus(path: Path | None) -> str:
    """The corpus text: the user's file, or the bundled one."""
    path = Path(path) if path is not None else BUNDLED_CORPUS
    if not path.is_file():
        raise StudyFileMissing(f"corpus file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise StudyError(f"corpus file {path} is empty")
    return text


def windows(token_ids: list[int], *, tokens: int, window: int, bos: int | None) -> list[Window]:
    """Cut a token stream into model inputs of at most ``window`` tokens that score exactly ``tokens`` predictions.

    With a BOS token every text token is predicted (BOS gives the first one a
    context); without one the first token of each window only serves as
    context.  Each corpus token is a target at most once.
    """
    if window < 1:
        raise StudyError(f"window must be at least 1 token, got {window}")
    if tokens < 1:
        raise StudyError(f"need at least 1 evaluated token, got {tokens}")
    prefix = [bos] if bos is not None else []
    context_only = 1 - len(prefix)  # tokens per window that are context but never targets
    out: list[Window] = []
    scored = start = 0
    while scored < tokens:
        take = min(window, tokens - scored)
        chunk = token_ids[start : start + take + context_only]
        if len(chunk) < take + context_only:
            raise StudyError(
                f"the corpus has {len(token_ids)} tokens, too few for {tokens} evaluated tokens "
                f"in windows of {window}; give a longer corpus or fewer tokens"
            )
        sequence = prefix + chunk
        out.append(Window(token_ids=tuple(sequence[:-1]), targets=tuple(sequence[1:])))
        scored += take
        start += take
    return out
