"""The skip study's user-facing error: bad options, missing or malformed data files."""

from __future__ import annotations

from payload.errors import JarvisError


class StudyError(JarvisError, ValueError):
    """An option or input file of the skip study is wrong; the message says which and how."""


class StudyFileMissing(StudyError, FileNotFoundError):
    """A file the study was pointed at does not exist."""
