"""Failover timing on the local testbed, measured side by side in one run of this script.

Prints, for a middle-node SIGKILL and SIGSTOP mid-decode and for a replica takeover:
time from the fault taking effect to the next token delivered, against the normal
per-token latency of the same run (targets: SIGKILL adds <= 50 ms beyond one normal
step on loopback; SIGSTOP <= deadline + one step; replica takeover vs the prefill
time of the replayed history).

    .venv/bin/python benchmarks/failover.py [--model gemma3-270m] [--nodes 6] [--tokens 24]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from experiment.deploy import deploy
from local.testbed import LocalTestbed
from experiment.run import Fault, run_job
from payload.config import Timing
from payload.prepare import load_manifest, prepare
from payload.routing import Policy, even_placement

PROMPT = "The three most important inventions of the twentieth century are"


def measure(prepared: Path, model: str, nodes: int, tokens: int, fault: Fault | None, *, replicas: int = 0,
            policy: Policy = Policy.SKIP) -> dict:
    layers = load_manifest(prepared)["num_layers"]
    testbed = LocalTestbed(f"jv-bench-failover-{fault.action if fault else 'none'}")
    testbed.up(nodes)
    try:
        dep = deploy(testbed, prepared, even_placement(layers, nodes, replicas), model=model, policy=policy,
                     progress=lambda m: None)
        with tempfile.TemporaryDirectory() as tmp:
            run = run_job(testbed, dep, {"prompts": [PROMPT], "max_new_tokens": tokens}, [fault] if fault else [],
                          Path(tmp) / "run", stream=lambda line: None)
            toks = pd.read_csv(run / "tokens.csv", keep_default_na=False)
            faults = pd.read_csv(run / "faults.csv", keep_default_na=False)
    finally:
        testbed.down()
    normal = toks.loc[(toks["step"] > 0) & (toks["attempts"] == 1), "latency_ns"].median() / 1e6
    out = {"normal_ms": normal, "ttft_ms": toks["latency_ns"].iloc[0] / 1e6, "tokens": len(toks)}
    if fault is not None and len(faults):
        effective = int(faults["effective_wall_ns"].iloc[0])
        after = toks[toks["t_emit_ns"] > effective]
        if len(after):
            out["fault_to_next_token_ms"] = (int(after["t_emit_ns"].iloc[0]) - effective) / 1e6
            out["next_token_attempts"] = int(after["attempts"].iloc[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    prepared = prepare(args.model)
    middle = args.nodes // 2
    at = args.tokens // 2
    deadline_ms = Timing().ack_floor_ms
    rows = {
        "no fault": measure(prepared, args.model, args.nodes, args.tokens, None),
        "SIGKILL middle": measure(prepared, args.model, args.nodes, args.tokens, Fault("kill", (middle,), at_token=at)),
        "SIGSTOP middle": measure(prepared, args.model, args.nodes, args.tokens,
                                  Fault("pause", (middle,), at_token=at)),
        "replica takeover": measure(prepared, args.model, args.nodes, args.tokens,
                                    Fault("kill", (middle,), at_token=at), replicas=1, policy=Policy.REPLICA),
    }
    print(f"model {args.model}, {args.nodes} layer nodes on loopback, fault at token {at} on node {middle}")
    print(f"{'case':18} {'normal ms/token':>16} {'fault->next token ms':>21} {'beyond one step ms':>19}")
    for name, r in rows.items():
        nxt = r.get("fault_to_next_token_ms")
        extra = f"{nxt - r['normal_ms']:19.1f}" if nxt is not None else f"{'-':>19}"
        nxt_s = f"{nxt:21.1f}" if nxt is not None else f"{'-':>21}"
        print(f"{name:18} {r['normal_ms']:16.1f} {nxt_s} {extra}")
    print(f"targets: SIGKILL adds <= 50 ms beyond one step; SIGSTOP <= deadline ({deadline_ms:.0f} ms floor) + one step")
    print(f"replica takeover: next token {rows['replica takeover'].get('fault_to_next_token_ms', float('nan')):.1f} ms "
          f"vs prefill of the prompt {rows['no fault']['ttft_ms']:.1f} ms (the replica replays the history)")


if __name__ == "__main__":
    main()
