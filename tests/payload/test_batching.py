"""RowBatcher: steps that wait at once run as one batch, each learning its place; a lone step runs alone."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from payload.batching import RowBatcher


def _recording(calls: list[list[int]]):
    def compute(rows: list[int]) -> list[int]:
        calls.append(list(rows))
        return [row * 10 for row in rows]
    return compute


def _all_at_once(limit: int, count: int):
    """Submit ``count`` rows in one turn of the loop to a batcher of ``limit``: the batches computed, each
    row's result."""
    calls: list[list[int]] = []

    async def main():
        batcher = RowBatcher(_recording(calls), limit=limit)
        return await asyncio.gather(*(batcher.submit(i) for i in range(count)))

    return calls, asyncio.run(main())


def test_steps_that_arrive_together_form_one_batch_in_order():
    calls, done = _all_at_once(8, 5)
    assert calls == [[0, 1, 2, 3, 4]]
    assert [(d.out, d.rows, d.row) for d in done] == [(i * 10, 5, i) for i in range(5)]
    assert len({(d.start_ns, d.end_ns) for d in done}) == 1 and done[0].end_ns >= done[0].start_ns


def test_a_lone_step_runs_alone_and_at_once():
    calls: list[list[int]] = []

    async def main():
        batcher = RowBatcher(_recording(calls), limit=8)
        first = await batcher.submit(1)
        second = await batcher.submit(2)
        return first, second

    first, second = asyncio.run(main())
    assert calls == [[1], [2]] and (first.rows, second.rows) == (1, 1)


def test_the_limit_splits_a_crowd_into_batches():
    calls, done = _all_at_once(3, 7)
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert [(d.rows, d.row) for d in done] == [(3, 0), (3, 1), (3, 2), (3, 0), (3, 1), (3, 2), (1, 0)]


def test_steps_arriving_while_a_batch_computes_off_the_loop_form_the_next():
    calls: list[list[int]] = []

    async def main():
        gate = ThreadPoolExecutor(1)
        batcher = RowBatcher(_recording(calls), limit=8, executor=gate)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0)  # the first batch (one row) is handed to the thread
        await asyncio.sleep(0)
        late = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        return await first, await asyncio.gather(*late)

    first, late = asyncio.run(main())
    assert calls[0] == [0] and calls[1:] == [[1, 2]], calls
    assert first.rows == 1 and [(d.rows, d.row) for d in late] == [(2, 0), (2, 1)]


@pytest.mark.parametrize("inline", [True, False])
def test_a_batch_runs_on_the_loop_only_while_inline_says_so(inline):
    """The node's policy: on the loop when the batch holds every session's step, on the compute thread
    otherwise; ``inline`` learns the batch's size."""
    sizes: list[int] = []
    threads: list[str] = []

    def compute(rows: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        return rows

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="compute") as pool:
            batcher = RowBatcher(compute, limit=4, executor=pool, inline=lambda rows: sizes.append(rows) or inline)
            await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert len(threads) == 1 and sizes == [3], "the three rows formed one batch"
    assert (threads[0] == loop_thread) == inline and threads[0].startswith("compute") != inline, threads


def test_a_failing_batch_fails_each_of_its_steps_and_the_next_batch_still_runs():
    def compute(rows: list[int]) -> list[int]:
        if 0 in rows:
            raise RuntimeError("no good")
        return rows

    async def main():
        batcher = RowBatcher(compute, limit=2)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        return results, await batcher.submit(5)

    results, after = asyncio.run(main())
    assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError] and results[2].out == 2
    assert after.out == 5 and after.rows == 1


def test_a_batch_holds_at_least_one_row():
    with pytest.raises(ValueError, match="at least one row"):
        RowBatcher(lambda rows: rows, limit=0)


def test_a_row_saying_more_follow_holds_the_batch_open_for_them_and_tells_each_where_the_later_go():
    calls: list[list[int]] = []

    async def main():
        batcher = RowBatcher(_recording(calls), limit=8)
        first = asyncio.ensure_future(batcher.submit(0, tag="a", more=True))
        await asyncio.sleep(0.001)  # the next row comes a millisecond later, as a second frame would
        second = asyncio.ensure_future(batcher.submit(1, tag="b", more=True))
        await asyncio.sleep(0.001)
        third = asyncio.ensure_future(batcher.submit(2, tag="a"))
        return await asyncio.gather(first, second, third)

    done = asyncio.run(main())
    assert calls == [[0, 1, 2]]
    assert [d.later for d in done] == [("b", "a"), ("a",), ()]


def test_rows_promised_but_never_sent_hold_a_batch_for_the_gather_window_only():
    from payload.batching import GATHER_S

    calls: list[list[int]] = []

    async def main():
        batcher = RowBatcher(_recording(calls), limit=8)
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = await batcher.submit(0, more=True)
        return done, loop.time() - start

    done, waited = asyncio.run(main())
    assert calls == [[0]] and done.rows == 1
    assert GATHER_S * 0.9 <= waited < GATHER_S + 0.5, waited


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "8"])
def test_a_node_config_refuses_a_batch_size_that_is_not_a_whole_number_of_rows(bad):
    from payload.config import NodeConfig

    config = {"node": 1, "listen": ["127.0.0.1", 1], "peers": {}, "model_dir": "/m", "log_path": "/l",
              "key_hex": "ab" * 32}
    assert NodeConfig.from_dict(config).batch_decode == 1 and NodeConfig.from_dict(
        {**config, "batch_decode": 8}).batch_decode == 8
    with pytest.raises(ValueError, match="batch_decode must be a whole number >= 1"):
        NodeConfig.from_dict({**config, "batch_decode": bad})
