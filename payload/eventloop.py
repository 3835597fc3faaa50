"""The event loop a node runs on: uvloop where it is installed, asyncio's own otherwise.

A decode hop is a handful of small socket operations (the frame in, its ack out, the output on): a warm
loopback round trip between two processes measured 182 us on asyncio's loop against 118 us on uvloop's
(benchmarks/loop_rtt.py); ``benchmarks/chain_latency.py --event-loops asyncio uvloop`` shows what that is
worth per hop of a chain.  Nothing in the node depends on which loop runs it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

AUTO, ASYNCIO, UVLOOP = "auto", "asyncio", "uvloop"
CHOICES = (AUTO, ASYNCIO, UVLOOP)


def check(choice: str) -> str:
    """``choice`` if it names a loop, else ValueError (what a deployment or a node config may say)."""
    if choice not in CHOICES:
        raise ValueError(f"unknown event_loop {choice!r}; choose one of {', '.join(CHOICES)}")
    return choice


def resolve(choice: str) -> str:
    """The loop ``choice`` means here: ``auto`` is uvloop when it is importable; ValueError for a loop that
    cannot run (unknown, or uvloop asked for and missing)."""
    check(choice)
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    if choice == UVLOOP and not have_uvloop:
        raise ValueError("event_loop uvloop asked for, but uvloop is not installed in this Python")
    if choice == AUTO:
        return UVLOOP if have_uvloop else ASYNCIO
    return choice


def run(main: Coroutine[Any, Any, T], choice: str = AUTO) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` resolves to."""
    try:
        name = resolve(choice)
    except ValueError:
        main.close()  # never started: no "coroutine was never awaited" warning on top of the error
        raise
    if name == UVLOOP:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def running() -> str:
    """The name of the loop running now (what a node reports in its ``ready`` event)."""
    module = type(asyncio.get_running_loop()).__module__
    return UVLOOP if module.startswith("uvloop") else ASYNCIO
