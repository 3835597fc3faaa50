"""Live node events: every host's ``events.jsonl`` followed while the run writes it.

One :meth:`Testbed.follow` per host (``tail -F`` in its work directory: a local process, or a channel over
the host's SSH connection), read on a thread of its own; each line is parsed as the run-directory schema's
event log is everywhere (a torn line is skipped) and published to the feed with the host's name.  Nodes log
with one ``write(2)`` per event, so an event reaches the page about as soon as it is logged; the node
processes are not touched, and a killed node's log stays readable (its follower just sees no more lines).
"""

from __future__ import annotations

import threading
import time

from dashboard.feed import Feed, node_message
from payload.events import parse_event_line
from testbed.interface import HostInfo, Testbed, TestbedError

LOG = "events.jsonl"


class LiveLogs:
    """Follow ``hosts``' event logs into ``feed``; events logged before ``since_wall_ns`` (an earlier run on the
    same deployment) are left out.  A host whose log cannot be followed is said once and skipped."""

    def __init__(self, testbed: Testbed, hosts: list[HostInfo], feed: Feed, *, since_wall_ns: int) -> None:
        self.feed = feed
        self.since_wall_ns = since_wall_ns
        self._procs = []
        self._threads: list[threading.Thread] = []
        for host in hosts:
            try:
                proc = testbed.follow(host, LOG)
            except TestbedError as exc:
                print(f"[dashboard] {host.name}: its events are not shown live: {exc}", flush=True)
                continue
            self._procs.append(proc)
            thread = threading.Thread(target=self._pump, args=(host.name, proc), daemon=True,
                                      name=f"follow-{host.name}")
            thread.start()
            self._threads.append(thread)

    def _pump(self, name: str, proc) -> None:
        for line in proc.stdout:
            event = parse_event_line(line)
            if event is None or int(event.get("wall_ns", 0)) < self.since_wall_ns:
                continue
            message = node_message(name, event)
            if message is not None:
                self.feed.publish(message)

    def stop(self, *, settle_s: float = 0.5) -> None:
        """Stop following, after ``settle_s`` for the last lines in flight (a remote host's last acks)."""
        time.sleep(settle_s)
        for proc in self._procs:
            try:
                proc.terminate()
                proc.wait(timeout=5)
            except Exception as exc:  # noqa: BLE001  (a host gone unreachable: its follower ends with it)
                print(f"[dashboard] a log follower did not stop cleanly: {exc}", flush=True)
        for thread in self._threads:
            thread.join(timeout=5)
