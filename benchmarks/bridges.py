#!/usr/bin/env python3
"""Bridge healing against plain skipping: next-token KL from the full model when one node's slice is lost.

For the even placement over ``--nodes`` nodes (the demo's 6 nodes: 3 layers each on Gemma 3 270M), every
single-node loss is scored on the skip study's evaluation text (the first ``--tokens`` tokens of the bundled
corpus, 512-token windows) three ways: plain skip (the hidden state goes on unchanged), the bridge (an affine
map fitted on the rest of the corpus, disjoint from the evaluated tokens; quality/bridges.py), and the cheap
baseline (the layer before the gap applied again in the gap's place, once).  Then each pair of adjacent nodes:
one bridge fitted for the pair's span against the two single bridges composed.  The label is the skip study's
rule on KL alone (functioning < 0.5 <= degraded < 3 nats <= critical; repetition is not measured here).

Targets (issue 15): mean bridge KL over the single losses >= 5x below plain skip's; no single loss above
2 nats under the bridge; none critical under skip stays critical under the bridge.

    PYTHONPATH=. .venv/bin/python benchmarks/bridges.py [--model gemma3-270m] [--nodes 6] [--ridge 1e-3,1e-2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tabulate import tabulate

from payload.prepare import prepare
from payload.routing import even_placement
from quality.bridges import calibration_states, calibration_windows, compose, fit_bridges
from quality.corpus import read_corpus, windows
from quality.examples import classify
from quality.model import SkipModel, load_tokenizer
from quality.proxies import Reference, token_metrics
from quality.walk import trunk

WINDOW = 512


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=2048, help="evaluated tokens (the skip study's default)")
    parser.add_argument("--ridge", default="1e-4", help="comma-separated relative ridge strengths to compare")
    args = parser.parse_args()
    torch.manual_seed(0)
    prepared = prepare(args.model)
    model = SkipModel(prepared)
    tokenizer = load_tokenizer(prepared)
    bos = tokenizer.bos_token_id if model.adds_bos else None
    stream = tokenizer.encode(read_corpus(None), add_special_tokens=False)
    evaluated = windows(stream, tokens=args.tokens, window=WINDOW, bos=bos)
    calibration = calibration_windows(stream, bos=bos, own_file=False, limit=len(stream), evaluated=args.tokens,
                                      window=WINDOW)  # the rest of the corpus: disjoint from the evaluated tokens
    calibration_tokens = sum(len(w.token_ids) for w in calibration)
    print(f"model {args.model}: {model.num_layers} layers; evaluated {args.tokens} tokens; calibration "
          f"{calibration_tokens} tokens (disjoint, the rest of the bundled corpus)", flush=True)

    started = time.perf_counter()
    states = calibration_states(model, calibration)
    slices = [even_placement(model.num_layers, args.nodes).slices[n] for n in range(1, args.nodes + 1)]
    pairs = [(a[0], b[1]) for a, b in zip(slices, slices[1:])]
    ridges = [float(r) for r in args.ridge.split(",")]
    single = {r: {b.first: b for b in fit_bridges(states, slices, ridge=r)} for r in ridges}
    paired = {r: {b.first: b for b in fit_bridges(states, pairs, ridge=r)} for r in ridges}
    print(f"fitted {len(ridges) * (len(slices) + len(pairs))} bridges in {time.perf_counter() - started:.1f} s",
          flush=True)

    kl: dict[tuple, list[np.ndarray]] = {}

    def score(name: tuple, hidden: torch.Tensor, seq, first_kept: int, ref, targets) -> None:
        final = model.run(hidden, seq, first_kept, model.num_layers)
        kl.setdefault(name, []).append(token_metrics(model, final, ref, targets)[1].numpy())

    started = time.perf_counter()
    with torch.inference_mode():
        for window in evaluated:
            seq = model.sequence(window.token_ids)
            trunk_states = trunk(model, seq)
            ref = Reference(model, trunk_states[-1])
            targets = torch.tensor(window.targets)
            for first, end in slices:
                entering = trunk_states[first]
                score(("skip", first), entering, seq, end, ref, targets)
                if first > 0:  # the layer before the gap, applied once more in its place
                    score(("repeat", first), model.run(entering, seq, first - 1, first), seq, end, ref, targets)
                for r in ridges:
                    score(("bridge", r, first), single[r][first].apply(entering), seq, end, ref, targets)
            for first, end in pairs:
                entering = trunk_states[first]
                score(("skip2", first), entering, seq, end, ref, targets)
                for r in ridges:
                    score(("span", r, first), paired[r][first].apply(entering), seq, end, ref, targets)
                    middle = next(s for s in slices if s[0] > first)[0]
                    both = compose([single[r][first], single[r][middle]])
                    score(("composed", r, first), both.apply(entering), seq, end, ref, targets)
    print(f"scored in {time.perf_counter() - started:.1f} s", flush=True)

    def mean(name: tuple) -> float:
        return float(np.concatenate(kl[name]).mean()) if name in kl else float("nan")

    rows = []
    for (first, end) in slices:
        skip = mean(("skip", first))
        row = [f"{first}-{end - 1}", f"{skip:.3f}", classify(skip, 0.0), f"{mean(('repeat', first)):.3f}"]
        for r in ridges:
            bridged = mean(("bridge", r, first))
            row += [f"{bridged:.3f}", classify(bridged, 0.0)]
        rows.append(row)
    headers = ["lost layers", "skip KL", "skip label", "repeat-prev KL"]
    for r in ridges:
        headers += [f"bridge KL (ridge {r:g})", "bridge label"]
    print(tabulate(rows, headers=headers, tablefmt="github"))

    for r in ridges:
        skip_mean = np.mean([mean(("skip", f)) for f, _ in slices])
        bridge_mean = np.mean([mean(("bridge", r, f)) for f, _ in slices])
        worst = max(mean(("bridge", r, f)) for f, _ in slices)
        still = [f"{f}-{e - 1}" for f, e in slices
                 if classify(mean(("skip", f)), 0) == "critical" and classify(mean(("bridge", r, f)), 0) == "critical"]
        print(f"ridge {r:g}: mean KL over single losses: skip {skip_mean:.3f}, bridge {bridge_mean:.3f} "
              f"({skip_mean / bridge_mean:.1f}x lower; target >= 5x); worst single under the bridge {worst:.3f} "
              f"(target <= 2); critical under skip and still under the bridge: {still or 'none'}")
    pair_rows = [[f"{f}-{e - 1}", f"{mean(('skip2', f)):.3f}"]
                 + [x for r in ridges for x in (f"{mean(('span', r, f)):.3f}", f"{mean(('composed', r, f)):.3f}")]
                 for f, e in pairs]
    print(tabulate(pair_rows, headers=["two nodes lost", "skip KL"]
                   + [h for r in ridges for h in (f"span bridge ({r:g})", f"composed ({r:g})")], tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
