"""Do one thing on many hosts at once and report every failure, not just the first (like Fabric's GroupResult).

Every testbed (deploy on any of them, Colosseum SRN set-up, Raspberry Pi
provisioning) fans out through this one helper.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from testbed.interface import TestbedError

T = TypeVar("T")


def on_each(work: dict[str, Callable[[], T]], *, what: str,
            per_host: tuple[type[BaseException], ...] = (TestbedError,)) -> dict[str, T]:
    """Run every ``work[host]()`` in parallel; raise one TestbedError naming each host that failed and why.

    Exceptions of the ``per_host`` types count as that host's failure; any other
    is a bug and propagates.  Deploy widens it to ``Exception``: a node's failure
    there may come from any layer (ssh, a checksum, a service that dies).
    """
    if not work:
        return {}
    results: dict[str, T | BaseException] = {}
    with ThreadPoolExecutor(max_workers=min(16, len(work))) as pool:
        futures = {host: pool.submit(fn) for host, fn in work.items()}
        for host, future in futures.items():
            try:
                results[host] = future.result()
            except per_host as exc:
                results[host] = exc
    failed = {h: r for h, r in results.items() if isinstance(r, BaseException)}
    if failed:
        lines = "\n".join(f"  {host}: {str(exc).removeprefix(host + ': ')}" for host, exc in failed.items())
        raise TestbedError(f"{what} failed on {len(failed)} of {len(work)} hosts:\n{lines}")
    return results  # type: ignore[return-value]
