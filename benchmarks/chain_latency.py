"""Per-token decode latency of a local N-node chain vs monolithic decode, measured side by side.

Prints the ratio (target <= 1.10 for 18 nodes) and the decode wire bytes per hop
per token (target <= hidden_size x 2 + 256).  Usage:

    .venv/bin/python benchmarks/chain_latency.py [--model gemma3-270m] [--nodes 18] [--tokens 32] [--rounds 3]
                                                 [--sealed]

It also splits a decode step into layer compute, the gaps between layer nodes
(what the chain adds per hop) and the user node's share.  ``--sealed`` also
runs the chain with every payload sealed (ChaCha20-Poly1305) in each round, and
prints what sealing costs per token and per hop beside the plain chain.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from experiment.deploy import deploy
from local.testbed import LocalTestbed
from experiment.replay import load_hf_model
from experiment.run import run_job
from payload.events import read_events
from payload.prepare import load_manifest, prepare
from payload.routing import even_placement


class Monolith:
    """The same prepared model in this process, decoding with ``model.generate`` on one thread."""

    def __init__(self, prepared: Path, prompt: str):
        from transformers import AutoTokenizer

        torch.set_num_threads(1)  # each chain node computes on one thread; compare like with like
        self.model = load_hf_model(prepared)
        self.ids = AutoTokenizer.from_pretrained(prepared)(prompt, return_tensors="pt").input_ids
        self._timed(2)  # warm-up

    def _timed(self, new: int) -> float:
        start = time.perf_counter()
        self.model.generate(self.ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return time.perf_counter() - start

    def ms_per_token(self, tokens: int) -> float:
        """Decode cost: (time for 1 + N tokens - time for 1) / N."""
        one = statistics.median(self._timed(1) for _ in range(3))
        many = statistics.median(self._timed(tokens + 1) for _ in range(2))
        return (many - one) / tokens * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--nodes", type=int, default=18)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate chain and monolith this many times (a shared machine drifts)")
    parser.add_argument("--wire-dtype", default="bfloat16")
    parser.add_argument("--keep", type=Path, help="also copy the last round's chain run directory here")
    parser.add_argument("--sealed", action="store_true", help="also measure the chain with sealed payloads")
    args = parser.parse_args()
    prompt = "The three most important inventions of the twentieth century are"
    prepared = prepare(args.model)
    layers = load_manifest(prepared)["num_layers"]
    hidden = load_manifest(prepared)["hidden_size"]
    monolith = Monolith(prepared, prompt)
    testbed = LocalTestbed("jv-bench-chain")
    testbed.up(args.nodes)
    rounds, sealed_rounds = [], []
    try:
        variants = [False, True] if args.sealed else [False]
        deployments = {}
        for index in range(args.rounds):
            for sealed in variants:
                if sealed not in deployments or len(variants) > 1:  # one chain at a time: redeploy to switch
                    deployments[sealed] = deploy(testbed, prepared, even_placement(layers, args.nodes),
                                                 model=args.model, wire_dtype=args.wire_dtype, encrypt=sealed,
                                                 progress=lambda m: None)
                with tempfile.TemporaryDirectory() as tmp:
                    run = run_job(testbed, deployments[sealed], {"prompts": [prompt], "max_new_tokens": args.tokens + 1},
                                  [], Path(tmp) / "run", stream=lambda line: None)
                    tokens = pd.read_csv(run / "tokens.csv")
                    hops = pd.read_csv(run / "hops.csv")
                    computes = compute_events(run)
                    if args.keep and index == args.rounds - 1 and not sealed:
                        shutil.copytree(run, args.keep, dirs_exist_ok=True)
                chain_ms = tokens["latency_ns"].iloc[1:].median() / 1e6
                (sealed_rounds if sealed else rounds).append((chain_ms, None, critical_path(tokens, hops, computes)))
                if not sealed:
                    plain_hops = hops
            mono_ms = monolith.ms_per_token(args.tokens)
            rounds[-1] = (rounds[-1][0], mono_ms, rounds[-1][2])
            line = (f"round {index + 1}: chain {rounds[-1][0]:.2f} ms/token, monolith {mono_ms:.2f} ms/token, "
                    f"ratio {rounds[-1][0] / mono_ms:.3f}")
            if args.sealed:
                line += f"; sealed chain {sealed_rounds[-1][0]:.2f} ms/token ({sealed_rounds[-1][0] / rounds[-1][0]:.3f}x plain)"
            print(line, flush=True)
    finally:
        testbed.down()
    hops = plain_hops
    chain_ms = statistics.median(r[0] for r in rounds)
    mono_ms = statistics.median(r[1] for r in rounds)
    path = pd.DataFrame([r[2] for r in rounds]).median()
    decode_hops = hops[(hops["step"] > 0) & (hops["positions"] == 1)]
    bytes_per_hop = decode_hops["bytes"].max()
    print(f"model {args.model}, {args.nodes} layer nodes, {args.tokens} decode tokens, wire {args.wire_dtype}, "
          f"{args.rounds} alternating rounds")
    print(f"monolithic decode   : {mono_ms:8.2f} ms/token (median over rounds, one process, 1 thread)")
    print(f"{args.nodes:2d}-node local chain : {chain_ms:8.2f} ms/token (median over rounds, from tokens.csv)")
    print(f"ratio chain/monolith: {chain_ms / mono_ms:8.3f}  (target <= 1.10)")
    print(f"decode wire bytes per hop per token: {bytes_per_hop} (target <= {hidden * 2 + 256})")
    print("per decode step (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in path.items()))
    if sealed_rounds:
        sealed_ms = statistics.median(r[0] for r in sealed_rounds)
        sealed_path = pd.DataFrame([r[2] for r in sealed_rounds]).median()
        gap = "gaps between layer nodes"
        per_hop = (sealed_path[gap] - path[gap]) / max(1, args.nodes - 1)
        spread = [s[0] / p[0] for s, p in zip(sealed_rounds, rounds)]
        print(f"sealed payloads (ChaCha20-Poly1305): {sealed_ms:8.2f} ms/token, {sealed_ms / chain_ms:.3f}x the plain "
              f"chain (rounds {min(spread):.3f}-{max(spread):.3f}); {per_hop * 1000:+.0f} us per hop")


def critical_path(tokens: pd.DataFrame, hops: pd.DataFrame, computes: pd.DataFrame) -> dict[str, float]:
    """Split each decode step's latency into layer compute, the gaps between hops, and the user node's share.

    All local nodes share one monotonic clock, so the gap between one node's
    compute end and the next node's compute start is exact: it is what the
    chain adds (framing, HMAC, logging, the kernel's wake-ups) per hop.
    """
    rows = []
    decode = tokens[tokens["step"] > 0]
    for tok in decode.itertuples():
        spans = computes[(computes["session"] == tok.session) & (computes["step"] == tok.step)
                         & (computes["epoch"] == tok.epoch)].sort_values("start_mono_ns")
        sent = hops[(hops["session"] == tok.session) & (hops["step"] == tok.step) & (hops["src"] == 0)
                    & (hops["epoch"] == tok.epoch)]["t1_mono_ns"].min()
        gaps = spans["start_mono_ns"].iloc[1:].to_numpy() - spans["end_mono_ns"].iloc[:-1].to_numpy()
        rows.append({
            "latency": tok.latency_ns,
            "layers compute": (spans["end_mono_ns"] - spans["start_mono_ns"]).sum(),
            "gaps between layer nodes": gaps.sum(),
            "user send to first layer": spans["start_mono_ns"].iloc[0] - sent,
            "last layer to token (incl. head)": tok.t_emit_mono_ns - spans["end_mono_ns"].iloc[-1],
        })
    return (pd.DataFrame(rows).median() / 1e6).to_dict()


def compute_events(run: Path) -> pd.DataFrame:
    """Every node's ``compute`` events (session, step, epoch, start/end on the shared monotonic clock)."""
    records = [e for log in run.glob("nodes/*/events.jsonl") for e in read_events(log) if e["ev"] == "compute"]
    return pd.DataFrame(records)[["session", "step", "epoch", "start_mono_ns", "end_mono_ns"]]

if __name__ == "__main__":
    main()
