"""Continuous batching of decode steps (``batch_decode``): steps of different sessions that wait at once run as
one batch, so a compute-bound node reads its weights once for all of them.

A step joins the batch being gathered; the batch runs once every step that arrived in the same turn of the
event loop has joined, at most ``limit`` rows at a time, and steps that arrive while it computes form the next
one.  Nothing waits for a batch to fill: a lone step runs alone, at once.  A batch stays one batch down the
chain: the sender marks each frame that has more rows of its batch following to the same receiver
(``FrameFlag.BATCH``), and the receiver holds its batch open for those rows, up to ``GATHER_S`` after each,
rather than compute the first alone and the rest behind it.  What a batch computes is exact per
row (payload/slices.py: a row's result depends on its own values, the batch's size and its place in it), and
each row learns its size and place, which the node logs so the oracle can replay it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

Row = TypeVar("Row")
Out = TypeVar("Out")

# How long a batch is held open for rows its sender said follow: they were written right after the one that
# said so, so they arrive within a fraction of a millisecond unless the sender lost its core meanwhile.
GATHER_S = 0.005


def check_batch_decode(value: object) -> None:
    """Refuse a ``batch_decode`` that is not a number of rows (a ValueError saying what it takes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"batch_decode must be a whole number >= 1 (1: no batching), got {value!r}")


@dataclass(frozen=True)
class Batched(Generic[Out]):
    """One row's result, with the batch it was computed in."""

    out: Out
    rows: int  # how many rows the batch had
    row: int  # this row's place in it
    start_ns: int  # the batch's compute start and end (monotonic)
    end_ns: int
    later: tuple = ()  # tags of the rows after this one in the batch (where they go next, for the node)


class RowBatcher(Generic[Row, Out]):
    """Gathers rows for ``compute`` (rows in, one output per row out), run in ``executor`` so that acks and
    heartbeats keep flowing meanwhile, or on the event loop itself when there is no executor or
    ``inline(rows)`` says a batch of that many rows may (nothing else waits behind it: two thread hand-offs
    would cost more)."""

    def __init__(self, compute: Callable[[list[Row]], list[Out]], limit: int, *, executor: Executor | None = None,
                 inline: Callable[[int], bool] | None = None, expected: Callable[[], int] | None = None,
                 expect_s: float = 0.0):
        """``expected`` counts rows that will come soon (the user node: sessions whose step is in the chain);
        a batch waits for them up to ``expect_s``, so that sessions that drifted apart along the chain come
        back together into one batch instead of circling it as several smaller ones."""
        if limit < 1:
            raise ValueError(f"a batch holds at least one row, not {limit}")
        self.compute, self.limit, self.executor, self.inline = compute, limit, executor, inline
        self.expected, self.expect_s = expected, expect_s
        self._waiting: list[tuple[Row, asyncio.Future, Hashable, bool]] = []
        self._runner: asyncio.Task | None = None
        self._arrived = asyncio.Event()

    async def submit(self, row: Row, *, tag: Hashable = None, more: bool = False) -> Batched[Out]:
        """Compute ``row`` in the next batch; returns its output once that batch is done.  ``more``: rows sent
        together with this one follow (hold the batch open for them); ``tag`` is what the rows before it in
        its batch learn of it (``Batched.later``)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((row, future, tag, more))
        self._arrived.set()
        if self._runner is None:
            # The task's first step runs on the loop's next turn, after every step that arrived with this one.
            self._runner = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._gather()
                batch, self._waiting = self._waiting[:self.limit], self._waiting[self.limit:]
                rows = [row for row, *_ in batch]
                start = time.monotonic_ns()
                try:
                    if self.executor is None or (self.inline is not None and self.inline(len(rows))):
                        outs = self.compute(rows)
                    else:
                        outs = await asyncio.get_running_loop().run_in_executor(self.executor, self.compute, rows)
                except Exception as exc:  # every row of the batch fails as its step would have alone
                    for _, future, *_ in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                end = time.monotonic_ns()
                tags = tuple(tag for _, _, tag, _ in batch)
                for place, ((_, future, _, _), out) in enumerate(zip(batch, outs)):
                    if not future.done():
                        future.set_result(Batched(out, len(batch), place, start, end, tags[place + 1:]))
        finally:
            self._runner = None

    async def _gather(self) -> None:
        """Wait while the last row in says more follow (up to ``GATHER_S`` after it came: a burst stays one
        batch however long it takes to arrive) or while rows are ``expected`` (up to ``expect_s`` in all), as
        long as the batch is not full."""
        loop = asyncio.get_running_loop()
        start = last = loop.time()
        while len(self._waiting) < self.limit:
            promised = self._waiting[-1][3]
            coming = self.expected is not None and self.expected() > 0
            left = max(last + GATHER_S if promised else 0.0, start + self.expect_s if coming else 0.0) - loop.time()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                return
            last = loop.time()
