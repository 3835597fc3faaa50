"""A finished run directory as the dashboard's message stream, in time order, at any speed.

Reads what the run-directory contract says is there (docs/run-directory.md): ``nodes.csv`` and
``summary.json`` for the topology, ``nodes/<name>/events.jsonl`` for node events, ``faults.csv`` for the
faults.  Messages are ordered by their wall clock (a fault by when it took effect), which on a testbed of
several hosts is as good as their clock offsets (``analysis`` estimates those; milliseconds on NTP hosts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from dashboard.feed import Feed, fault_message, node_message, phase_message, topology_message
from payload.errors import JarvisError
from payload.events import read_events
from payload.schema import TABLES


class ReplayError(JarvisError):
    """The directory is not a run directory the dashboard can replay."""


def _table(run: Path, name: str) -> list[dict]:
    path = run / f"{name}.csv"
    if not path.exists():
        raise ReplayError(f"{run} is not a run directory: {path.name} is missing")
    frame = pd.read_csv(path, keep_default_na=False, dtype={c.name: str for c in TABLES[name].columns
                                                              if c.dtype == "str"})
    return json.loads(frame.to_json(orient="records"))


def topology_of(run: Path) -> dict:
    """The run's topology message (nodes.csv rows, label, model, policy)."""
    summary_path = run / "summary.json"
    if not summary_path.exists():
        raise ReplayError(f"{run} is not a run directory: summary.json is missing")
    summary = json.loads(summary_path.read_text())
    nodes = [{k: v for k, v in row.items() if k != "peak_rss_bytes"} for row in _table(run, "nodes")]
    return topology_message(nodes, label=summary.get("scenario") or summary.get("run_id") or run.name,
                            model=summary.get("model", ""), policy=summary.get("policy", ""), replay=True)


def timed_messages(run: Path) -> list[tuple[int, dict]]:
    """(wall ns, message) for every node event the page draws and every fault, in time order."""
    timed = []
    for log in sorted(run.glob("nodes/*/events.jsonl")):
        for event in read_events(log):
            message = node_message(log.parent.name, event)
            if message is not None:
                timed.append((int(event["wall_ns"]), message))
    timed += [(int(row["effective_wall_ns"]), fault_message(row)) for row in _table(run, "faults")]
    timed.sort(key=lambda item: item[0])  # stable: one host's events keep their logged order
    return timed


def replay(run: Path, feed: Feed, *, speed: float = 1.0, progress=print) -> int:
    """Publish ``run`` into ``feed``: at ``speed`` times real time (0: all at once); return the messages sent."""
    run = Path(run)
    feed.publish(topology_of(run))
    timed = timed_messages(run)
    feed.publish(phase_message("run", f"replay of {run.name}" + (f" at {speed:g}x" if speed else "")))
    if not timed:
        progress(f"[dashboard] {run} holds no events to replay")
    started = time.monotonic()
    first = timed[0][0] if timed else 0
    for wall_ns, message in timed:
        if speed > 0:
            delay = (wall_ns - first) / 1e9 / speed - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
        feed.publish(message)
    feed.publish(phase_message("done", f"replay of {run.name} finished"))
    return len(timed)
