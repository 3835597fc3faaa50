"""Deploy time and bytes shipped on the emulated testbed, cold and warm, for 7 and 18 nodes (root).

Bytes are compared with what a sliced deploy should cost: the model's bytes
once (each layer to its node, the head and tokenizer to the user node) plus the
per-node config and manifest, never the whole model to every node.

    .venv/bin/python benchmarks/deploy.py [--model gemma3-270m] [--nodes 7 18]
"""

from __future__ import annotations

import argparse
import time

from emu.testbed import EmuTestbed
from experiment.deploy import deploy
from payload.prepare import load_manifest, prepare
from payload.routing import even_placement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--nodes", type=int, nargs="+", default=[7, 18])
    args = parser.parse_args()
    prepared = prepare(args.model)
    manifest = load_manifest(prepared)
    model_bytes = sum(f["bytes"] for f in manifest["files"].values())
    print(f"model {args.model}: {model_bytes / 1e6:.1f} MB prepared")
    print(f"{'nodes':>5} {'cold s':>8} {'cold MB':>9} {'warm s':>8} {'warm MB':>8} {'cold / model':>13}")
    for nodes in args.nodes:
        testbed = EmuTestbed(f"jv-bench-deploy{nodes}", backend="userspace")
        testbed.up(nodes)
        try:
            placement = even_placement(manifest["num_layers"], nodes)
            start = time.perf_counter()
            cold = deploy(testbed, prepared, placement, model=args.model, progress=lambda m: None)
            cold_s = time.perf_counter() - start
            start = time.perf_counter()
            warm = deploy(testbed, prepared, placement, model=args.model, progress=lambda m: None)
            warm_s = time.perf_counter() - start
        finally:
            testbed.down()
        cold_b, warm_b = sum(cold.bytes_shipped.values()), sum(warm.bytes_shipped.values())
        print(f"{nodes:5d} {cold_s:8.1f} {cold_b / 1e6:9.1f} {warm_s:8.1f} {warm_b / 1e6:8.2f} "
              f"{cold_b / model_bytes:13.3f}")
    print("target: cold bytes within 5% of the model's bytes (+ payload x nodes); warm ships only what changed")


if __name__ == "__main__":
    main()
