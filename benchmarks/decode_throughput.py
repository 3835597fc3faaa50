"""Aggregate decode throughput of a local chain at several concurrencies, each event loop side by side.

Each round deploys the chain once per event loop (payload/eventloop.py) and runs, on each, ``--concurrency``
sessions at once for every concurrency asked; it prints aggregate decode tokens/s (decode tokens of all
sessions over the wall time from the first session's start to the last token), per concurrency and loop, the
median over rounds with the spread.  With every node on one of this machine's cores, concurrency shows how
far the chain pipelines before it is compute-bound (issue 16's baseline for batched decode).

    .venv/bin/python benchmarks/decode_throughput.py [--model gemma3-270m] [--nodes 18] [--tokens 16]
        [--concurrency 1 4 8] [--event-loops asyncio uvloop] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from experiment.deploy import deploy
from experiment.run import run_job
from local.testbed import LocalTestbed
from payload import eventloop
from payload.prepare import load_manifest, prepare
from payload.routing import even_placement

PROMPTS = ["The three most important inventions of the twentieth century are",
           "Explain why the sky is blue to a child.", "List four uses of a paperclip.",
           "What is distributed inference?", "Name the planets of the solar system.",
           "Write a haiku about the sea.", "How does a bicycle stay upright?", "What is a prime number?"]


def tokens_per_s(testbed, deployment, concurrency: int, tokens: int) -> float:
    """Decode tokens/s over all sessions of one job of ``concurrency`` sessions run at once."""
    job = {"prompts": [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)], "max_new_tokens": tokens + 1,
           "concurrency": concurrency, "ignore_eos": True}
    with tempfile.TemporaryDirectory() as tmp:
        run = run_job(testbed, deployment, job, [], Path(tmp) / "run", stream=lambda line: None)
        frame = pd.read_csv(run / "tokens.csv")
    first = frame.groupby("session")["t_emit_ns"].min()  # each session's first token ends its prefill
    decode = frame[frame["step"] > 0]
    return len(decode) / ((decode["t_emit_ns"].max() - first.min()) / 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--nodes", type=int, default=18)
    parser.add_argument("--tokens", type=int, default=16, help="decode tokens per session")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--event-loops", nargs="+", default=["asyncio", "uvloop"], choices=eventloop.CHOICES)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    prepared = prepare(args.model)
    placement = even_placement(load_manifest(prepared)["num_layers"], args.nodes)
    testbed = LocalTestbed("jv-bench-throughput")
    testbed.up(args.nodes)
    rates: dict[tuple[int, str], list[float]] = {}
    try:
        for index in range(args.rounds):
            for loop in args.event_loops:
                deployment = deploy(testbed, prepared, placement, model=args.model, event_loop=loop,
                                    progress=lambda m: None)
                for concurrency in args.concurrency:
                    rate = tokens_per_s(testbed, deployment, concurrency, args.tokens)
                    rates.setdefault((concurrency, loop), []).append(rate)
                    print(f"round {index + 1}, {loop}, concurrency {concurrency}: {rate:.2f} tokens/s", flush=True)
    finally:
        testbed.down()
    rows = []
    for concurrency in args.concurrency:
        row = [concurrency]
        for loop in args.event_loops:
            got = rates[(concurrency, loop)]
            row.append(f"{statistics.median(got):.2f} ({min(got):.2f}-{max(got):.2f})")
        base = statistics.median(rates[(concurrency, args.event_loops[0])])
        row += [f"{statistics.median(rates[(concurrency, loop)]) / base:.2f}x" for loop in args.event_loops[1:]]
        rows.append(row)
    print(f"model {args.model}, {args.nodes} layer nodes, {args.tokens} decode tokens per session, {args.rounds} rounds")
    print(tabulate(rows, headers=["concurrency", *(f"{loop} tokens/s" for loop in args.event_loops),
                                  *(f"{loop} / {args.event_loops[0]}" for loop in args.event_loops[1:])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
