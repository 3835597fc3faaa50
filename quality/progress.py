"""Progress bars whose time-left estimate follows the real work, not the number of skip sets.

Skip sets cost very different amounts (a set whose first skipped layer is 0
recomputes every layer, one starting at layer 17 recomputes one; the output
head can cost more than all decoder layers together), so bars count
multiply-accumulates: layer calls times tokens times layer size, plus scored
positions times head size.  When stderr is not a terminal (a ``nohup`` run) the
live bar cannot redraw, so a plain line with the time left is printed once a
minute instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


LOG_INTERVAL_S = 60.0


class Bar:
    """One phase of the study; ``advance`` takes multiply-accumulates."""

    def __init__(self, progress: Progress, description: str, total: float, *, log_lines: bool):
        self._progress = progress
        self._task = progress.add_task(description, total=total)
        self._log_lines = log_lines
        self._last_log = time.monotonic()

    def advance(self, work: float) -> None:
        self._progress.advance(self._task, work)
        if self._log_lines and time.monotonic() - self._last_log >= LOG_INTERVAL_S:
            self._last_log = time.monotonic()
            task = self._progress.tasks[self._task]
            left = task.time_remaining
            left_text = f"{left / 60:.1f} min left" if left is not None else "estimating time left"
            self._progress.console.print(f"{task.description}: {task.percentage:.0f}%, {left_text}")


class Bars:
    """Factory for phase bars sharing one live display on stderr."""

    def __init__(self, progress: Progress, *, log_lines: bool):
        self._progress = progress
        self._log_lines = log_lines

    def bar(self, description: str, total: float) -> Bar:
        return Bar(self._progress, description, total, log_lines=self._log_lines)

    def log(self, message: str) -> None:
        """A line above the bars (nothing when progress is off)."""
        if not self._progress.disable:
            self._progress.console.print(message)


@contextmanager
def bars(enabled: bool = True) -> Iterator[Bars]:
    """A live display (or a silent one when ``enabled`` is false) for the phases of one study."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
    with progress:
        yield Bars(progress, log_lines=enabled and not console.is_terminal)
