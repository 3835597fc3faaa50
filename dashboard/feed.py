"""The dashboard's one message stream: what happened in a run, in the order the control side learnt it.

Messages are JSON objects.  Node events are the lines of ``nodes/<name>/events.jsonl`` (the run-directory
schema, :mod:`payload.schema`) with ``host`` added; a fault is a row of ``faults.csv`` with ``ev: fault``;
``topology`` (rows of ``nodes.csv`` and the run's label), ``phase`` and ``end`` frame them.  Every message
gets ``seq`` (its place in the stream) and ``published_ns`` (when the feed took it, control host's clock).

The feed keeps its whole history: a page opened mid-run (or reloaded) gets everything so far, then the rest
as it comes.  Publishing is thread-safe (node followers and fault timers publish from their own threads);
subscribers are asyncio queues of the server's event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable

# The node events the page draws (the rest of a log, recv and compute above all, would only cost bandwidth).
SHOWN_EVENTS = frozenset({"ready", "token", "ack", "peer_failed", "node_out", "rejoin", "retry", "session_start",
                          "session_end", "session_error", "stop"})


class Feed:
    """History plus live subscribers; ``publish`` from any thread, ``subscribe`` on the server's loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._history: list[dict] = []
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self.closed = False

    def publish(self, message: dict) -> dict:
        """Stamp ``message`` (``seq``, ``published_ns``), keep it, and hand it to every page connected."""
        with self._lock:
            stamped = {**message, "seq": len(self._history), "published_ns": time.time_ns()}
            self._history.append(stamped)
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            loop.call_soon_threadsafe(queue.put_nowait, stamped)
        return stamped

    def publish_all(self, messages: Iterable[dict]) -> None:
        for message in messages:
            self.publish(message)

    def subscribe(self) -> tuple[list[dict], asyncio.Queue]:
        """(history so far, queue of what comes next), atomically: nothing is missed or sent twice."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._subscribers.append((asyncio.get_running_loop(), queue))
            return list(self._history), queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers = [(loop, q) for loop, q in self._subscribers if q is not queue]

    def history(self) -> list[dict]:
        with self._lock:
            return list(self._history)


def node_message(host: str, event: dict) -> dict | None:
    """A node log line as a feed message, or None for an event the page does not draw."""
    if event.get("ev") not in SHOWN_EVENTS:
        return None
    return {**event, "host": host}


def fault_message(record: dict) -> dict:
    """A faults.csv row as a feed message."""
    return {"ev": "fault", **record}


def topology_message(nodes: list[dict], *, label: str, model: str, policy: str, replay: bool) -> dict:
    """The chain to draw: ``nodes`` are rows of nodes.csv (index, name, layers, replicas, profile, ...)."""
    return {"ev": "topology", "nodes": nodes, "label": label, "model": model, "policy": policy, "replay": replay}


def phase_message(phase: str, detail: str = "") -> dict:
    """Where the experiment is (up, deploy, run, collect, analyze, done), for the page's status line."""
    return {"ev": "phase", "phase": phase, "detail": detail}
