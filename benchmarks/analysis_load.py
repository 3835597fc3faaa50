"""How long loading a large run takes: cold (parse the CSVs and logs, write the cache) and warm (Parquet).

The target (issue 7) is 10,000 tokens x 18 hops = 180,000 hop rows loaded in <= 3 s.  The
run is synthetic (experiment.synth) with data-plane events in every node log, as a real
run has, so the event-log scan is part of the cold figure.

    PYTHONPATH=. .venv/bin/python benchmarks/analysis_load.py [--tokens 10000] [--hops 18]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from analysis.load import load
from experiment.synth import Spec, write_run

TARGET_S = 3.0
SESSIONS = 10


def _timed(run: Path) -> tuple[float, float, int, int]:
    """Wall and CPU seconds (all threads) of one load: CPU time shows the cost on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    data = load(run)
    return time.perf_counter() - wall, time.process_time() - cpu, len(data.tokens), len(data.hops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000, help="tokens in the run (split over 10 sessions)")
    parser.add_argument("--hops", type=int, default=18, help="hops per step (layer nodes + 1)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jarvis-bench-") as tmp:
        run = Path(tmp) / "bench"
        start = time.perf_counter()
        write_run(run, Spec(nodes=args.hops - 1, layers=max(18, args.hops - 1), prompts=SESSIONS,
                            tokens=args.tokens // SESSIONS, profiles=("wifi", "lte", "server")))
        synth_s = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) / 1e6
        cold_s, cold_cpu, tokens, hops = _timed(run)
        warm_s, warm_cpu, _, _ = _timed(run)
    print(f"run: {tokens} tokens, {hops} hop rows, {size_mb:.0f} MB on disk (synthesised in {synth_s:.1f} s)")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'load':<26}{'wall s':>8}{'CPU s':>8}{'target s':>10}{'target/wall':>13}")
    rows = (("cold (CSV + logs, cache)", cold_s, cold_cpu), ("warm (Parquet cache)", warm_s, warm_cpu))
    for name, seconds, cpu in rows:
        print(f"{name:<26}{seconds:>8.2f}{cpu:>8.2f}{TARGET_S:>10.1f}{TARGET_S / seconds:>12.1f}x")
    print(f"warm is {cold_s / warm_s:.1f}x faster than cold")
    return 0 if max(cold_s, warm_s) <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
