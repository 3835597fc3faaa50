"""Soak: a local chain serving concurrent sessions while hostile connections flood every node.

Alternates rounds without and with a flood (idle connections held open, garbage, headers claiming huge
bodies, and replays of a captured valid frame, from several threads), and prints the median per-token
latency of each, their ratio, and the two counts that must be 0: sessions that failed, and healthy nodes
the user node declared dead.  The flooders run in this process, on the same cores as the chain: the ratio
includes the CPU they take.

    PYTHONPATH=. .venv/bin/python benchmarks/soak.py [--model smollm2-135m-instruct] [--nodes 4]
        [--sessions 8] [--concurrency 4] [--tokens 24] [--rounds 2] [--flooders 6] [--keep DIR]
        [--ack-floor-ms 250] [--heartbeat-floor-ms 500] [--event-loop auto|asyncio|uvloop]
        [--batch-decode 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pandas as pd

from experiment.deploy import deploy
from experiment.run import run_job
from local.testbed import LocalTestbed
from payload import eventloop
from payload.config import Timing
from payload.events import read_events
from payload.frames import Frame, FrameType, Hop, WireDtype, encode
from payload.prepare import load_manifest, prepare
from payload.routing import even_placement

PROMPTS = ["The three most important inventions of the twentieth century are",
           "Explain why the sky is blue to a child.", "List four uses of a paperclip.",
           "What is distributed inference?"]


class Flood:
    """Hostile traffic at every node until stopped; counts what it sent."""

    def __init__(self, targets: list[tuple[str, int]], key: bytes, hidden: int, threads: int):
        self.targets, self.threads = targets, threads
        self.stop = threading.Event()
        self.sent = {"idle": 0, "garbage": 0, "huge": 0, "replay": 0}
        self.replay = encode(Frame(FrameType.DATA, uuid.uuid4(), step=0, epoch=1, n_pos=1, hidden=hidden,
                                   dtype=WireDtype.BFLOAT16, route=(Hop(1, 0, 1),), src=0, dst=1,
                                   payload=bytes(hidden * 2)), key, boot=1, seq=1)
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> "Flood":
        kinds = [self._idle, self._garbage, self._huge, self._replays]
        for i in range(self.threads):
            worker = threading.Thread(target=self._loop, args=(kinds[i % len(kinds)],), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def _loop(self, kind) -> None:
        while not self.stop.is_set():
            for target in self.targets:
                try:
                    kind(target)
                except OSError:
                    time.sleep(0.01)

    def _idle(self, target) -> None:
        held = [socket.create_connection(target, timeout=2) for _ in range(50)]
        self.sent["idle"] += len(held)
        self.stop.wait(0.5)
        for sock in held:
            sock.close()

    def _garbage(self, target) -> None:
        with socket.create_connection(target, timeout=2) as sock:
            sock.sendall(os.urandom(4096))
        self.sent["garbage"] += 1

    def _huge(self, target) -> None:
        with socket.create_connection(target, timeout=2) as sock:
            sock.sendall((1 << 20).to_bytes(4, "big") + os.urandom(65536))
        self.sent["huge"] += 1

    def _replays(self, target) -> None:
        with socket.create_connection(target, timeout=2) as sock:
            for _ in range(100):
                sock.sendall(self.replay)
        self.sent["replay"] += 100


def one_round(testbed, deployment, job: dict, label: str, keep: Path | None = None
              ) -> tuple[float, int, int, pd.Series]:
    """Median decode ms per token, sessions failed, nodes declared dead, and every acked hop's round trip (ms:
    the margin against the ack deadline); a round with a failure or a node declared dead is kept in ``keep`` (its
    run directory, for a look at every node's events)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = run_job(testbed, deployment, job, [], Path(tmp) / "run", stream=lambda line: None)
        tokens = pd.read_csv(run / "tokens.csv")
        hops = pd.read_csv(run / "hops.csv")
        rtt_ms = hops.loc[hops["acked"], "rtt_ns"].astype(float) / 1e6
        user = read_events(run / "nodes" / "user" / "events.jsonl")
        if keep is not None and any(e["ev"] == "node_out" or (e["ev"] == "session_end" and e.get("error"))
                                    for e in user):
            target = keep / f"round-{time.strftime('%H%M%S')}-{label}"
            shutil.copytree(run, target)
            print(f"  kept {target}", flush=True)
    failed = sum(1 for e in user if e["ev"] == "session_end" and e.get("error"))
    failed += job["repeats"] * len(job["prompts"]) - tokens["session"].nunique()
    outs = [e for e in user if e["ev"] == "node_out"]
    for e in outs:
        print(f"  {label}: node {e['peer']} declared {e['kind']} by node {e['reporter']}: {e['reason']}", flush=True)
    return tokens.loc[tokens["step"] > 0, "latency_ns"].median() / 1e6, failed, len(outs), rtt_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flooders", type=int, default=6, help="flooding threads (kinds taken in turn)")
    parser.add_argument("--keep", type=Path, help="keep the run directory of every round with a failure here")
    parser.add_argument("--ack-floor-ms", type=float, default=Timing().ack_floor_ms,
                        help="the deployment's ack deadline floor (detection latency traded for fewer false alarms)")
    parser.add_argument("--heartbeat-floor-ms", type=float, default=Timing().heartbeat_floor_ms,
                        help="the deployment's heartbeat silence floor (the same trade)")
    parser.add_argument("--event-loop", default="auto", choices=eventloop.CHOICES, help="what the nodes run on")
    parser.add_argument("--batch-decode", type=int, default=1,
                        help="most decode steps a node computes as one batch (1: unbatched, the default)")
    args = parser.parse_args()
    prepared = prepare(args.model)
    manifest = load_manifest(prepared)
    testbed = LocalTestbed("jv-bench-soak")
    testbed.up(args.nodes)
    job = {"prompts": PROMPTS, "max_new_tokens": args.tokens, "repeats": max(1, args.sessions // len(PROMPTS)),
           "concurrency": args.concurrency}
    quiet, flooded, counts, rtts = [], [], {"failed": 0, "dead": 0}, []
    try:
        deployment = deploy(testbed, prepared, even_placement(manifest["num_layers"], args.nodes), model=args.model,
                            timing=Timing(ack_floor_ms=args.ack_floor_ms, heartbeat_floor_ms=args.heartbeat_floor_ms),
                            event_loop=args.event_loop, batch_decode=args.batch_decode, progress=lambda m: None)
        targets = [(h["address"], h["extra"]["port"]) for h in deployment.hosts if h["index"] > 0]
        for index in range(args.rounds):
            ms, failed, dead, quiet_rtt = one_round(testbed, deployment, job, "quiet", args.keep)
            quiet.append(ms)
            with Flood(targets, bytes.fromhex(deployment.key_hex), manifest["hidden_size"], args.flooders) as flood:
                time.sleep(0.5)  # the flood is under way before the sessions start
                fms, ffailed, fdead, flood_rtt = one_round(testbed, deployment, job, "flooded", args.keep)
            flooded.append(fms)
            counts["failed"] += failed + ffailed
            counts["dead"] += dead + fdead
            print(f"round {index + 1}: quiet {ms:.1f} ms/token, flooded {fms:.1f} ms/token ({fms / ms:.2f}x); "
                  f"hop round trips quiet p99 {quiet_rtt.quantile(0.99):.0f} / max {quiet_rtt.max():.0f} ms, "
                  f"flooded p99 {flood_rtt.quantile(0.99):.0f} / max {flood_rtt.max():.0f} ms; "
                  f"flood sent {flood.sent}", flush=True)
            rtts.append(flood_rtt)
    finally:
        testbed.down()
    ratios = [f / q for f, q in zip(flooded, quiet)]
    print(f"model {args.model}, {args.nodes} layer nodes, {job['repeats'] * len(PROMPTS)} sessions at concurrency "
          f"{args.concurrency}, {args.flooders} flooding threads on the same {os.cpu_count()} cores, ack floor "
          f"{args.ack_floor_ms:.0f} ms, heartbeat floor {args.heartbeat_floor_ms:.0f} ms, event loop "
          f"{eventloop.resolve(args.event_loop)}, batch_decode {args.batch_decode}")
    print(f"per-token latency, flooded / quiet: {statistics.median(ratios):.2f} "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")
    flood_rtt = pd.concat(rtts)
    print(f"hop round trips under the flood (the ack deadline's floor is {args.ack_floor_ms:.0f} ms): median "
          f"{flood_rtt.median():.1f}, p99 {flood_rtt.quantile(0.99):.0f}, max {flood_rtt.max():.0f} ms")
    print(f"sessions failed: {counts['failed']} (must be 0); healthy nodes declared dead: {counts['dead']} "
          "(must be 0)")
    return 0 if counts["failed"] == 0 and counts["dead"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
