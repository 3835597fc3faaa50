"""Several runs side by side (``fab compare DIR...``): compare.md, compare.json, one figure, a table.

Typical use is the original study's question: how inference time changes between
topologies (an 18-node blend, 7 nodes on Wi-Fi, server links), with and without a
mid-generation fault.  Each run is analysed with the same definitions as a report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from analysis import figures
from analysis.load import RunData, RunDirError, load
from analysis.metrics import Metrics, compute
from analysis.tables import in_ms, markdown, ms

COMPARE = "compare.md"
SUMMARY = "compare.json"


def compare(runs: list[Path], out: Path | None = None) -> Path:
    """Compare ``runs``; write into ``out`` (default: a compare-<digest> directory beside the first run)."""
    if not runs:
        raise ValueError("compare needs at least one run directory")
    data = load([Path(r) for r in runs])
    empty = [info.path for run_id, info in data.runs.items() if not (data.tokens["run_id"] == run_id).any()]
    if empty:
        raise RunDirError(f"{empty[0] / 'tokens.csv'} has no tokens: nothing to compare")
    metrics = compute(data)
    out = Path(out) if out is not None else default_out(data)
    figure = figures.save(figures.comparison(metrics, data), out / "figures", "comparison")
    report = out / COMPARE
    report.write_text(render_markdown(metrics, data), encoding="utf-8")
    summary = {
        "runs": {run_id: {"path": str(info.path), "label": info.label, "complete": info.complete}
                 for run_id, info in data.runs.items()},
        "metrics": json.loads(metrics.runs.to_json(orient="records")),
        "composition": json.loads(metrics.composition.to_json(orient="records")),
        "faults": json.loads(metrics.faults.to_json(orient="records")),
        "figures": [str(p.relative_to(out)) for p in figure],
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(table_text(metrics, data))
    return report


def default_out(data: RunData) -> Path:
    """A directory named after the set of runs, so comparing the same runs again overwrites it."""
    digest = hashlib.sha1("\n".join(sorted(data.runs)).encode()).hexdigest()[:8]
    first = next(iter(data.runs.values())).path
    return first.parent / f"compare-{digest}"


def _runs_frame(metrics: Metrics, data: RunData) -> pd.DataFrame:
    labels = figures.run_labels(data)
    frame = metrics.runs.assign(run=metrics.runs["run_id"].map(labels))
    detection = metrics.faults.groupby("run_id")["detection_ns"].median()
    frame["detection_median_ns"] = frame["run_id"].map(detection)
    columns = ["run", "run_id", "sessions", "tokens", "ttft_median_ns", "latency_median_ns", "latency_p95_ns",
               "latency_p99_ns", "tokens_per_s", "degraded_tokens", "retried_steps", "detection_median_ns"]
    return frame[columns]


def table_text(metrics: Metrics, data: RunData) -> str:
    """One line per run: TTFT, latency percentiles, tokens/s, degraded tokens, median detection latency."""
    frame = _runs_frame(metrics, data)
    rows = [[r.run, ms(r.ttft_median_ns), ms(r.latency_median_ns), ms(r.latency_p95_ns),
             ms(r.latency_p99_ns), f"{r.tokens_per_s:.2f}", r.degraded_tokens, ms(r.detection_median_ns)]
            for r in frame.itertuples()]
    headers = ["run", "TTFT ms", "p50 ms", "p95 ms", "p99 ms", "tokens/s", "degraded", "detect ms"]
    return tabulate(rows, headers=headers, tablefmt="rounded_outline", disable_numparse=True)


def render_markdown(metrics: Metrics, data: RunData) -> str:
    """compare.md: the runs, where their time goes, their faults, and the figure."""
    labels = figures.run_labels(data)
    composition = metrics.composition.assign(run=metrics.composition["run_id"].map(labels))
    faults = metrics.faults.drop(columns=["effective_wall_ns"])
    lines = [
        "# Runs compared", "",
        markdown(in_ms(_runs_frame(metrics, data))), "",
        "TTFT: median over sessions. Latency percentiles: decode steps. detection: median over the run's faults.", "",
        "## Where a token's time goes (mean per decode token, ms)", "",
        markdown(in_ms(composition[["run", *metrics.composition.columns.drop("run_id")]])), "",
        "## Faults", "", markdown(in_ms(faults)), "",
        "## Figure", "",
        "![Per-token latency CDF, time composition, TTFT and throughput per run](figures/comparison.png)", "",
        "Per-token latency CDF, where a token's time goes, TTFT and throughput per run "
        "([PDF](figures/comparison.pdf)).", "",
        "## Runs", "",
        *[f"- `{run_id}`: {info.path}" + ("" if info.complete else " (incomplete)")
          for run_id, info in data.runs.items()],
        "",
    ]
    return "\n".join(lines)
