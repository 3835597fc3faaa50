"""The consistency oracle replays on the nodes' thread count, whatever the caller's.

Float sums depend on torch's thread count; on 2 threads the oracle once
flagged a correct run that nodes had computed on 1 (a greedy token hinged on
the last bit).  Tests pin 1 thread globally, which hid it.
"""

from __future__ import annotations

import torch

from experiment.replay import Monolith, check_run
from experiment.run import run_job


class ThreadRecordingHead:
    """Delegates to the real head and notes torch's thread count at every call."""

    def __init__(self, head):
        self._head = head
        self.threads: set[int] = set()

    def __getattr__(self, name):
        attribute = getattr(self._head, name)
        if not callable(attribute):
            return attribute

        def recorded(*args, **kwargs):
            self.threads.add(torch.get_num_threads())
            return attribute(*args, **kwargs)

        return recorded


def test_check_run_replays_on_the_nodes_thread_count(tiny_prepared, chain, tmp_path, monkeypatch):
    prepared = tiny_prepared("llama")
    with chain(prepared, 2) as (tb, dep):
        run = run_job(tb, dep, {"prompts": ["the cat sat"], "max_new_tokens": 4}, [], tmp_path / "run")
    monolith = Monolith(prepared)
    head = monolith.head = ThreadRecordingHead(monolith.head)
    monkeypatch.setenv("JARVIS_TORCH_THREADS", "1")
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = check_run(run, prepared, model=monolith)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(caller)
    assert results and all(r.ok for r in results)
    assert head.threads == {1}, "the replay must compute on the nodes' thread count"
    assert after == 2, "the caller's thread count comes back afterwards"
