"""Benchmark the layer-skip study on a bundled model (default: Gemma 3 270M, 18 layers).

Runs, in one process each:

1. proxies (perplexity, KL, top-1 agreement) for the full model, all single
   and all double skips (1 + 18 + 153 sets) over ``--tokens`` evaluated tokens;
2. one plain full forward pass over the same tokens (embeddings, every layer,
   output head), the unit the per-set cost is quoted in;
3. MMLU 0-shot on ``--mmlu-limit`` questions for the full model and single skips.

It prints the wall time of each phase, the cost per skip set against one
full forward pass, and the headline findings, and writes ``benchmark.json``
next to the study outputs.  It also records the process's CPU time: on a
machine shared with other work, wall time measures the neighbours too, while
CPU seconds divided by the threads used estimate the wall time on an idle
machine.  Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/skip_study.py --out /tmp/skip-study
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from payload.prepare import prepare
from quality.corpus import read_corpus, windows
from quality.model import SkipModel, load_tokenizer
from quality.study import DEFAULT_TOKENS, DEFAULT_WINDOW, run_skip_study

BUDGET_S = 60 * 60  # the budget for all single and double skips on the proxies


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def full_forward(prepared: Path, tokens: int, window: int) -> Clock:
    """Time one ordinary forward pass (all layers and the head) over the study's corpus windows."""
    model = SkipModel(prepared)
    tokenizer = load_tokenizer(prepared)
    bos = tokenizer.bos_token_id if model.adds_bos else None
    cut = windows(tokenizer.encode(read_corpus(None), add_special_tokens=False), tokens=tokens, window=window, bos=bos)
    with Clock() as clock:
        for w in cut:
            model.logits(model.final_hidden(w.token_ids))
    return clock


def summarise_proxies(table: pd.DataFrame) -> dict:
    """Per-layer single-skip KL and perplexity, and the worst and mildest pairs."""
    kl = table[table.metric == "kl"].set_index("skip_set")
    ppl = table[table.metric == "ppl"].set_index("skip_set")
    singles = kl[kl.n_skipped == 1].value.sort_values()
    pairs = kl[kl.n_skipped == 2].value.sort_values()
    return {
        "full_ppl": float(ppl.loc["none", "value"]),
        "single_kl": {k: float(v) for k, v in singles.items()},
        "single_ppl": {k: float(ppl.loc[k, "value"]) for k in singles.index},
        "mildest_pairs_kl": {k: float(v) for k, v in pairs.head(5).items()},
        "worst_pairs_kl": {k: float(v) for k, v in pairs.tail(5).items()},
        "pairs_significant_ppl_holm": int((table[(table.metric == "ppl") & (table.n_skipped == 2)].p_holm < 0.05).sum()),
    }


def summarise_mmlu(table: pd.DataFrame) -> dict:
    rows = table[table.metric == "mmlu"].set_index("skip_set")
    singles = rows[rows.n_skipped == 1]
    return {
        "questions": int(rows.n.iloc[0]),
        "full_accuracy": float(rows.loc["none", "value"]),
        "full_interval": [float(rows.loc["none", "value_low"]), float(rows.loc["none", "value_high"])],
        "single_accuracy": {k: float(v) for k, v in singles.value.items()},
        "singles_significant_holm": int((singles.p_holm < 0.05).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--out", type=Path, default=Path("/tmp/jarvis-skip-study"))
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--mmlu-limit", type=int, default=513, help="0 skips MMLU; 513 = 9 per subject")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    prepared = prepare(args.model)
    print(f"prepared {args.model} in {time.perf_counter() - started:.1f}s ({args.threads} threads)", flush=True)

    with Clock() as proxies_clock:
        proxies_dir = run_skip_study(
            args.model, single=True, double=True, sets_file=None, metrics=["ppl", "kl", "top1"], mmlu_data=None,
            shots=0, limit=None, out=args.out / "proxies", tokens=args.tokens, window=args.window,
        )
    run = json.loads((proxies_dir / "run.json").read_text())
    forward = full_forward(prepared, args.tokens, args.window)
    sets = run["skip_sets"]
    per_set = run["seconds"]["proxies_skip_sets"] / sets
    result = {
        "model": args.model,
        "threads": args.threads,
        "tokens": args.tokens,
        "skip_sets": sets,
        "proxies_total_s": proxies_clock.wall,
        "proxies_total_cpu_s": proxies_clock.cpu,
        "proxies_idle_estimate_s": proxies_clock.cpu / args.threads,
        "proxies_scoring_s": run["seconds"]["proxies"],
        "examples_s": run["seconds"].get("examples"),
        "full_forward_s": forward.wall,
        "full_forward_cpu_s": forward.cpu,
        "per_set_s": per_set,
        "per_set_vs_full_forward": per_set / forward.wall,
        "layer_calls_per_token": run["layer_calls_per_input"],
        "layer_calls_without_reuse": run["layer_calls_without_reuse"],
        "within_budget": proxies_clock.wall <= BUDGET_S,
        "proxies": summarise_proxies(pd.read_csv(proxies_dir / "results.csv")),
    }
    print(f"proxies: {sets} skip sets x {args.tokens} tokens in {proxies_clock.wall / 60:.1f} min "
          f"({'within' if result['within_budget'] else 'OVER'} the 60 min budget); "
          f"CPU {proxies_clock.cpu / 60:.1f} min = {proxies_clock.cpu / args.threads / 60:.1f} min "
          f"on {args.threads} idle cores")
    print(f"one full forward over the same tokens: {forward.wall:.1f}s; "
          f"per skip set: {per_set:.1f}s = {per_set / forward.wall:.2f}x a full forward "
          f"(layer calls {run['layer_calls_per_input']} vs {run['layer_calls_without_reuse']} without reuse)")

    if args.mmlu_limit:
        with Clock() as mmlu_clock:
            mmlu_dir = run_skip_study(
                args.model, single=True, double=False, sets_file=None, metrics=["mmlu"], mmlu_data=None,
                shots=0, limit=args.mmlu_limit, out=args.out / "mmlu",
            )
        result["mmlu_total_s"] = mmlu_clock.wall
        result["mmlu_total_cpu_s"] = mmlu_clock.cpu
        result["mmlu"] = summarise_mmlu(pd.read_csv(mmlu_dir / "results.csv"))
        m = result["mmlu"]
        print(f"MMLU 0-shot, {m['questions']} questions, full + {len(m['single_accuracy'])} single skips in "
              f"{result['mmlu_total_s'] / 60:.1f} min: full accuracy {m['full_accuracy']:.3f} "
              f"(95% {m['full_interval'][0]:.3f}-{m['full_interval'][1]:.3f}; chance 0.25)")

    (args.out / "benchmark.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
