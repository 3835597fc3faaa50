"""The output head's product for a batch of rows: plain (MKL) against packed (oneDNN, payload/packed.py), side by
side on a bundled model's real head.

Each round times, for every row count, ``--repeats`` products of each kind, alternating kinds; it prints the
median per product over rounds with the spread, and the packed / plain ratio.  One torch thread, as nodes run.

    .venv/bin/python benchmarks/head_product.py [--model gemma3-270m] [--rows 1 2 4 8] [--rounds 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

from payload.config import compute_threads
from payload.packed import packed_product
from payload.prepare import prepare
from payload.slices import Head, ModelSpec


def _ms_per_product(product, rows: torch.Tensor, repeats: int) -> float:
    product(rows)
    start = time.perf_counter()
    for _ in range(repeats):
        product(rows)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(compute_threads())
    head = Head(ModelSpec(prepare(args.model)))
    weight = head.lm_head_weight
    packed, is_packed = packed_product(weight)
    if not is_packed:
        print("this torch cannot pack the head (no oneDNN): both columns are the plain product")
    kinds = {"plain": lambda x: torch.nn.functional.linear(x, weight), "packed": packed}
    times: dict[tuple[int, str], list[float]] = {}
    with torch.inference_mode():
        for index in range(args.rounds):
            for count in args.rows:
                rows = torch.randn(count, 1, weight.shape[1])
                for kind, product in kinds.items():
                    times.setdefault((count, kind), []).append(_ms_per_product(product, rows, args.repeats))
            print(f"round {index + 1}: " + ", ".join(f"{n} rows {times[(n, 'plain')][-1]:.1f} / "
                                                     f"{times[(n, 'packed')][-1]:.1f} ms" for n in args.rows),
                  flush=True)
    table = []
    for count in args.rows:
        plain, fast = times[(count, "plain")], times[(count, "packed")]
        ratios = [b / a for a, b in zip(plain, fast)]
        table.append([count, f"{statistics.median(plain):.1f} ({min(plain):.1f}-{max(plain):.1f})",
                      f"{statistics.median(fast):.1f} ({min(fast):.1f}-{max(fast):.1f})",
                      f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"])
    print(f"model {args.model}, head {tuple(weight.shape)} {weight.dtype}, {compute_threads()} torch thread(s), "
          f"{args.rounds} rounds of {args.repeats}")
    print(tabulate(table, headers=["rows", "plain ms", "packed ms", "packed / plain"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
