"""Per-token decode latency of a local N-node chain vs monolithic decode, measured side by side.

Prints the ratio (target <= 1.10 for 18 nodes) and the decode wire bytes per hop
per token (target <= hidden_size x 2 + 256).  Usage:

    .venv/bin/python benchmarks/chain_latency.py [--model gemma3-270m] [--nodes 18] [--tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from experiment.deploy import deploy
from experiment.local import LocalTestbed
from experiment.replay import load_hf_model
from experiment.run import run_job
from payload.prepare import load_manifest, prepare
from payload.routing import even_placement


def monolithic_ms_per_token(prepared: Path, prompt: str, tokens: int) -> float:
    """Decode cost of ``model.generate`` in one process: (time for 1 + N tokens - time for 1) / N."""
    from transformers import AutoTokenizer

    torch.set_num_threads(1)  # each chain node computes on one thread; compare like with like
    tok = AutoTokenizer.from_pretrained(prepared)
    model = load_hf_model(prepared)
    ids = tok(prompt, return_tensors="pt").input_ids

    def timed(new: int) -> float:
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return time.perf_counter() - start

    timed(2)  # warm-up
    one = statistics.median(timed(1) for _ in range(3))
    many = statistics.median(timed(tokens + 1) for _ in range(2))
    return (many - one) / tokens * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--nodes", type=int, default=18)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--wire-dtype", default="bfloat16")
    args = parser.parse_args()
    prompt = "The three most important inventions of the twentieth century are"
    prepared = prepare(args.model)
    layers = load_manifest(prepared)["num_layers"]
    hidden = load_manifest(prepared)["hidden_size"]
    testbed = LocalTestbed("jv-bench-chain")
    testbed.up(args.nodes)
    try:
        dep = deploy(testbed, prepared, even_placement(layers, args.nodes), model=args.model,
                     wire_dtype=args.wire_dtype, progress=lambda m: None)
        with tempfile.TemporaryDirectory() as tmp:
            run = run_job(testbed, dep, {"prompts": [prompt], "max_new_tokens": args.tokens + 1}, [],
                          Path(tmp) / "run", stream=lambda line: None)
            tokens = pd.read_csv(run / "tokens.csv")
            hops = pd.read_csv(run / "hops.csv")
    finally:
        testbed.down()
    chain_ms = tokens["latency_ns"].iloc[1:].median() / 1e6
    mono_ms = monolithic_ms_per_token(prepared, prompt, args.tokens)
    decode_hops = hops[(hops["step"] > 0) & (hops["positions"] == 1)]
    bytes_per_hop = decode_hops["bytes"].max()
    print(f"model {args.model}, {args.nodes} layer nodes, {args.tokens} decode tokens, wire {args.wire_dtype}")
    print(f"monolithic decode   : {mono_ms:8.2f} ms/token (median, one process, 1 thread)")
    print(f"{args.nodes:2d}-node local chain : {chain_ms:8.2f} ms/token (median, from tokens.csv)")
    print(f"ratio chain/monolith: {chain_ms / mono_ms:8.3f}  (target <= 1.10)")
    print(f"decode wire bytes per hop per token: {bytes_per_hop} (target <= {hidden * 2 + 256})")


if __name__ == "__main__":
    main()
