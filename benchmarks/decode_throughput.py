"""Aggregate decode throughput of a chain at several concurrencies: unbatched against batched decode (and event
loops), side by side.

Each round deploys the chain once per variant (``--batch-decode`` sizes, payload/batching.py, times
``--event-loops``, payload/eventloop.py) and runs, on each, ``--concurrency`` sessions at once for every
concurrency asked; it prints aggregate decode tokens/s (decode tokens of all sessions over the wall time from
the first session's start to the last token), per concurrency and variant, the median over rounds with the
spread, and each variant's ratio to the first.  ``--testbed local`` runs every node on this machine's cores
(compute-bound from a few sessions: where batching pays); ``--testbed emu`` (root) puts every node on a link
profile (``--link wifi``: issue 16's 7-node WiFi chain), where the links, not the cores, set the pace.

    .venv/bin/python benchmarks/decode_throughput.py [--model gemma3-270m] [--nodes 18] [--tokens 16]
        [--concurrency 1 4 8] [--batch-decode 1 8] [--event-loops uvloop] [--rounds 2]
        [--testbed local|emu] [--link wifi]
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
    parser.add_argument("--batch-decode", type=int, nargs="+", default=[1, 8],
                        help="most decode steps a node computes as one batch (1: unbatched)")
    parser.add_argument("--event-loops", nargs="+", default=["uvloop"], choices=eventloop.CHOICES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--testbed", choices=["local", "emu"], default="local")
    parser.add_argument("--link", default="wifi", help="link profile of every node (emu testbed)")
    args = parser.parse_args()
    prepared = prepare(args.model)
    placement = even_placement(load_manifest(prepared)["num_layers"], args.nodes)
    if args.testbed == "emu":
        from emu.testbed import EmuTestbed
        from testbed.profiles import resolve

        testbed = EmuTestbed("jv-bench-throughput", backend="userspace")
        testbed.up(args.nodes, {k: resolve(args.link) for k in range(1, args.nodes + 1)})
    else:
        testbed = LocalTestbed("jv-bench-throughput")
        testbed.up(args.nodes)
    variants = [(loop, batch) for batch in args.batch_decode for loop in args.event_loops]
    label = {v: f"{v[0]}, batch {v[1]}" for v in variants}
    rates: dict[tuple[int, tuple[str, int]], list[float]] = {}
    try:
        for index in range(args.rounds):
            for variant in variants:
                deployment = deploy(testbed, prepared, placement, model=args.model, event_loop=variant[0],
                                    batch_decode=variant[1], progress=lambda m: None)
                for concurrency in args.concurrency:
                    rate = tokens_per_s(testbed, deployment, concurrency, args.tokens)
                    rates.setdefault((concurrency, variant), []).append(rate)
                    print(f"round {index + 1}, {label[variant]}, concurrency {concurrency}: {rate:.2f} tokens/s",
                          flush=True)
    finally:
        testbed.down()
    rows = []
    for concurrency in args.concurrency:
        row = [concurrency]
        for variant in variants:
            got = rates[(concurrency, variant)]
            row.append(f"{statistics.median(got):.2f} ({min(got):.2f}-{max(got):.2f})")
        base = rates[(concurrency, variants[0])]
        for variant in variants[1:]:  # per round, then the median and spread of the ratios
            ratios = [b / a for a, b in zip(base, rates[(concurrency, variant)])]
            row.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        rows.append(row)
    where = f"{args.testbed} testbed" + (f", every node on {args.link}" if args.testbed == "emu" else "")
    print(f"model {args.model}, {args.nodes} layer nodes ({where}), {args.tokens} decode tokens per session, "
          f"{args.rounds} rounds")
    print(tabulate(rows, headers=["concurrency", *(f"{label[v]} tokens/s" for v in variants),
                                  *(f"{label[v]} / {label[variants[0]]}" for v in variants[1:])],
                   tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
