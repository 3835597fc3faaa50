"""Time to first token of a long prompt over the study's 18-node blend, side by side: the prompt in one frame
against chunked, pipelined prefill (``prefill_chunk: auto``), with bfloat16 on the wire and with ``auto`` (int8
from nodes on uplinks below 50 Mbit/s).  Root: the emulated testbed.

Links as issue 16 measured them: ``{"1-6": wifi, "7-12": cellular, "13-18": server}`` (the user node on WiFi),
Gemma 3 270M, the first ``--prompt-tokens`` tokens of the bundled corpus as the prompt.  Each wire dtype is
deployed once; each round then runs the unchunked and the chunked job back to back on that deployment (the job's
``prefill_chunk`` overrides the deployment's), so the ratio is measured side by side.  TTFT is the user node's:
from the prefill's first send to the first token.

    .venv/bin/python benchmarks/prefill_ttft.py [--rounds 2] [--prompt-tokens 910] [--wire bfloat16 auto]
        [--chunks 0 auto 96]   # a chunk sweep: 0 is one frame, auto the deployment's choice
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from emu.testbed import EmuTestbed
from experiment.deploy import deploy
from experiment.run import run_job
from payload.prepare import load_manifest, prepare
from payload.routing import even_placement
from quality.corpus import read_corpus
from quality.model import load_tokenizer
from testbed.profiles import resolve

BLEND = {**{k: "wifi" for k in range(1, 7)}, **{k: "cellular" for k in range(7, 13)},
         **{k: "server" for k in range(13, 19)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--prompt-tokens", type=int, default=910)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wire", nargs="+", default=["bfloat16", "auto"])
    parser.add_argument("--chunks", nargs="+", default=["0", "auto"],
                        help="prefill chunks each round runs, in order: positions, 0 (one frame) or auto")
    parser.add_argument("--timeline", action="store_true",
                        help="print, per hop of each run, when its first and last frame arrived and its rate")
    args = parser.parse_args()
    prepared = prepare(args.model)
    tokenizer = load_tokenizer(prepared)
    ids = tokenizer.encode(read_corpus(None), add_special_tokens=False)[:args.prompt_tokens - 1]
    prompt = tokenizer.decode(ids)  # with BOS, about --prompt-tokens positions
    job = {"prompts": [prompt], "max_new_tokens": 2, "ignore_eos": True}
    nodes = len(BLEND)
    placement = even_placement(load_manifest(prepared)["num_layers"], nodes)
    testbed = EmuTestbed("jv-bench-ttft", backend="userspace")
    testbed.up(nodes, {k: resolve(p) for k, p in BLEND.items()})
    rows, ttft = [], {}
    out = Path(tempfile.mkdtemp(prefix="jarvis-ttft-"))
    try:
        for wire in args.wire:
            dep = deploy(testbed, prepared, placement, model=args.model, wire_dtype=wire, prefill="auto")
            print(f"[bench] {wire}: prefill chunk {dep.prefill_chunk}, dtypes {sorted(set(dep.wire_dtypes.values()))}",
                  flush=True)
            for round_ in range(args.rounds):
                for chunk in [dep.prefill_chunk if c == "auto" else int(c) for c in args.chunks]:
                    run = run_job(testbed, dep, {**job, "prefill_chunk": chunk}, [],
                                  out / f"{wire}-{chunk}-{round_}", stream=lambda line: None)
                    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False)
                    hops = pd.read_csv(run / "hops.csv")
                    first = hops[(hops["step"] == 0) & (hops["session"] == tokens["session"].iloc[0])]
                    seconds = tokens["latency_ns"].iloc[0] / 1e9
                    ttft.setdefault((wire, chunk), []).append(seconds)
                    print(f"[bench] {wire} chunk {chunk or 'off'} round {round_ + 1}: TTFT {seconds:.2f} s, "
                          f"{len(first)} frames, layer compute {first['compute_ns'].sum() / 1e9:.2f} s, attempts "
                          f"{tokens['attempts'].iloc[0]}, nodes out {tokens['nodes_out'].iloc[0] or 'none'}", flush=True)
                    if args.timeline:
                        print(_timeline(first, int(tokens["t_emit_ns"].iloc[0] - tokens["latency_ns"].iloc[0])))
    finally:
        testbed.down()
    base = statistics.median(ttft[(args.wire[0], 0)]) if (args.wire[0], 0) in ttft else None
    for (wire, chunk), values in ttft.items():
        rows.append([wire, chunk or "off", " ".join(f"{v:.2f}" for v in values), f"{statistics.median(values):.2f}",
                     "-" if base is None else f"{base / statistics.median(values):.2f}x"])
    print(tabulate(rows, headers=["wire", "prefill chunk", "TTFT s per round", "median s",
                                  f"faster than {args.wire[0]} in one frame"], tablefmt="github"))
    print(f"targets (issue 16): <= 12 s with bfloat16 chunked, <= 7 s compressed and chunked; runs in {out}")
    return 0


def _timeline(first: pd.DataFrame, t0_wall_ns: int) -> str:
    """Where a prefill's time went, hop by hop: when the hop's first and last frame arrived (seconds after the
    user node's first send; the emulated nodes share this machine's clock), the bytes it carried, its rate from
    the first frame's send to the last arrival, and the receiver's layer compute and queueing."""
    rows = []
    for (src, dst), hop in first.groupby(["src", "dst"], sort=False):
        t1, t2 = hop["t1_wall_ns"].dropna(), hop["t2_wall_ns"].dropna()
        span = (t2.max() - t1.min()) / 1e9 if len(t1) and len(t2) else float("nan")
        rows.append([f"{src}->{dst}", len(hop), (t1.min() - t0_wall_ns) / 1e9, (t2.min() - t0_wall_ns) / 1e9,
                     (t2.max() - t0_wall_ns) / 1e9, hop["bytes"].sum() / 1e3, hop["bytes"].sum() * 8 / 1e6 / span,
                     hop["compute_ns"].sum() / 1e6, hop["queue_ns"].sum() / 1e6])
    rows.sort(key=lambda r: r[2])
    return tabulate(rows, headers=["hop", "frames", "first sent s", "first in s", "last in s", "kB",
                                   "Mbit/s", "dst compute ms", "dst queue ms"], floatfmt=".2f", tablefmt="github")


if __name__ == "__main__":
    raise SystemExit(main())
