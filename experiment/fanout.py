"""Do one thing on many hosts at once and report every failure, not just the first (like Fabric's GroupResult)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from experiment.testbed import TestbedError

T = TypeVar("T")


def on_each(work: dict[str, Callable[[], T]], *, what: str) -> dict[str, T]:
    """Run every ``work[host]()`` in parallel; raise one TestbedError naming each host that failed and why."""
    if not work:
        return {}
    results: dict[str, T | Exception] = {}
    with ThreadPoolExecutor(max_workers=min(16, len(work))) as pool:
        futures = {host: pool.submit(fn) for host, fn in work.items()}
        for host, future in futures.items():
            try:
                results[host] = future.result()
            except TestbedError as exc:  # expected per-host failures; anything else is a bug and propagates
                results[host] = exc
    failed = {h: r for h, r in results.items() if isinstance(r, Exception)}
    if failed:
        lines = "\n".join(f"  {host}: {str(exc).removeprefix(host + ': ')}" for host, exc in failed.items())
        raise TestbedError(f"{what} failed on {len(failed)} of {len(work)} hosts:\n{lines}")
    return results  # type: ignore[return-value]
