"""Per-token decode latency of a local N-node chain vs monolithic decode, measured side by side.

Prints the ratio (target <= 1.05 for 18 nodes) and the decode wire bytes per hop
per token (target <= hidden_size x 2 + 256).  Usage:

    .venv/bin/python benchmarks/chain_latency.py [--model gemma3-270m] [--nodes 18] [--tokens 32] [--rounds 3]
                                                 [--sealed] [--event-loops asyncio uvloop]

It also splits a decode step into layer compute, the gaps between layer nodes
(what the chain adds per hop) and the user node's share.  ``--sealed`` also
runs the chain with every payload sealed (ChaCha20-Poly1305) in each round, and
prints what sealing costs per token and per hop beside the plain chain.  ``--event-loops asyncio uvloop``
measures the nodes on each event loop side by side (payload/eventloop.py).
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
from payload import eventloop
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
    parser.add_argument("--event-loops", nargs="+", default=["auto"], choices=eventloop.CHOICES,
                        help="the nodes' event loops to compare side by side (each round deploys each in turn)")
    args = parser.parse_args()
    prompt = "The three most important inventions of the twentieth century are"
    prepared = prepare(args.model)
    layers = load_manifest(prepared)["num_layers"]
    hidden = load_manifest(prepared)["hidden_size"]
    monolith = Monolith(prepared, prompt)
    testbed = LocalTestbed("jv-bench-chain")
    testbed.up(args.nodes)
    # Each variant is a deployment; with more than one, every round redeploys each in turn (one chain at a time).
    variants = {loop: {"event_loop": loop} for loop in args.event_loops}
    if args.sealed:
        variants["sealed"] = {"event_loop": args.event_loops[0], "encrypt": True}
    baseline = args.event_loops[0]
    rounds: dict[str, list] = {name: [] for name in variants}
    splits: list[dict[str, float]] = []
    deployments = {}
    try:
        for index in range(args.rounds):
            for name, options in variants.items():
                if name not in deployments or len(variants) > 1:
                    deployments[name] = deploy(testbed, prepared, even_placement(layers, args.nodes), model=args.model,
                                               wire_dtype=args.wire_dtype, progress=lambda m: None, **options)
                with tempfile.TemporaryDirectory() as tmp:
                    run = run_job(testbed, deployments[name], {"prompts": [prompt], "max_new_tokens": args.tokens + 1},
                                  [], Path(tmp) / "run", stream=lambda line: None)
                    tokens = pd.read_csv(run / "tokens.csv")
                    hops = pd.read_csv(run / "hops.csv")
                    computes = compute_events(run)
                    if name == baseline:
                        splits.append(hop_split(run))
                    if args.keep and index == args.rounds - 1 and name == baseline:
                        shutil.copytree(run, args.keep, dirs_exist_ok=True)
                rounds[name].append((tokens["latency_ns"].iloc[1:].median() / 1e6, critical_path(tokens, hops, computes)))
                if name == baseline:
                    plain_hops = hops
            mono_ms = monolith.ms_per_token(args.tokens)
            rounds.setdefault("monolith", []).append(mono_ms)
            print(f"round {index + 1}: monolith {mono_ms:.2f} ms/token; " + "; ".join(
                f"{name} chain {rounds[name][-1][0]:.2f} ms/token (ratio {rounds[name][-1][0] / mono_ms:.3f})"
                for name in variants), flush=True)
    finally:
        testbed.down()
    mono = rounds.pop("monolith")
    mono_ms = statistics.median(mono)
    decode_hops = plain_hops[(plain_hops["step"] > 0) & (plain_hops["positions"] == 1)]
    print(f"model {args.model}, {args.nodes} layer nodes, {args.tokens} decode tokens, wire {args.wire_dtype}, "
          f"{args.rounds} alternating rounds")
    print(f"monolithic decode   : {mono_ms:8.2f} ms/token (median over rounds, one process, 1 thread)")
    gap = "gaps between layer nodes"
    paths = {name: pd.DataFrame([r[1] for r in runs]).median() for name, runs in rounds.items()}
    for name, runs in rounds.items():
        chain_ms = statistics.median(r[0] for r in runs)
        ratios = [r[0] / m for r, m in zip(runs, mono)]
        print(f"{args.nodes:2d}-node chain, {name:8s}: {chain_ms:8.2f} ms/token, ratio chain/monolith {chain_ms / mono_ms:.3f} "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.05), "
              f"{paths[name][gap] / max(1, args.nodes - 1) * 1000:.0f} us per hop between layer nodes")
        print("  per decode step (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in paths[name].items()))
    print(f"decode wire bytes per hop per token: {decode_hops['bytes'].max()} (target <= {hidden * 2 + 256})")
    split = pd.DataFrame(splits).median()
    print(f"where a decode hop between layer nodes goes ({baseline}, median us): "
          + ", ".join(f"{k} {v:.0f}" for k, v in split.items()))
    if args.sealed:
        spread = [s[0] / p[0] for s, p in zip(rounds["sealed"], rounds[baseline])]
        per_hop = (paths["sealed"][gap] - paths[baseline][gap]) / max(1, args.nodes - 1)
        print(f"sealed payloads (ChaCha20-Poly1305): {statistics.median(spread):.3f}x the plain {baseline} chain "
              f"(rounds {min(spread):.3f}-{max(spread):.3f}); {per_hop * 1000:+.0f} us per hop")


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


def hop_split(run: Path) -> dict[str, float]:
    """One decode hop from node k's compute end to node k+1's compute start, in four parts (median us): the
    sender's work until its write (``t1``; of it, encoding and signing), the write to the receiver's read
    (kernel, wake-up), the receiver's work until its ack (decode, checks), and from the ack to its compute."""
    events = [{**e, "at": int(log.parent.name[4:])} for log in run.glob("nodes/node*/events.jsonl")
              for e in read_events(log) if e["ev"] in ("compute", "ack")]
    frame = pd.DataFrame(events)
    keys = ["session", "step", "epoch"]
    compute = frame[(frame["ev"] == "compute") & (frame["positions"] == 1) & (frame["step"] > 0)]
    acks = frame[(frame["ev"] == "ack") & (frame["dst"] > 0) & (frame["positions"] == 1)]
    sent = compute[[*keys, "at", "end_mono_ns"]].merge(
        acks[[*keys, "src", "dst", "t1_mono_ns", "t1_wall_ns", "t2_wall_ns", "t3_wall_ns", "serialize_ns"]],
        left_on=[*keys, "at"], right_on=[*keys, "src"])
    hop = sent.merge(compute[[*keys, "at", "start_mono_ns", "queue_ns"]], left_on=[*keys, "dst"],
                     right_on=[*keys, "at"], suffixes=("", "_next"))
    parts = {
        "sender until written": hop["t1_mono_ns"] - hop["end_mono_ns"],
        "(of it, encode and sign)": hop["serialize_ns"],
        "write to read": hop["t2_wall_ns"] - hop["t1_wall_ns"],
        "receiver until ack": hop["t3_wall_ns"] - hop["t2_wall_ns"],
        "ack to compute": hop["queue_ns"],
        "whole gap": hop["start_mono_ns"] - hop["end_mono_ns"],
    }
    return {k: float(v.median()) / 1e3 for k, v in parts.items()}


def compute_events(run: Path) -> pd.DataFrame:
    """Every node's ``compute`` events (session, step, epoch, start/end on the shared monotonic clock)."""
    records = [e for log in run.glob("nodes/*/events.jsonl") for e in read_events(log) if e["ev"] == "compute"]
    return pd.DataFrame(records)[["session", "step", "epoch", "start_mono_ns", "end_mono_ns"]]

if __name__ == "__main__":
    main()
