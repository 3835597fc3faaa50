"""One tidy table: a row per (skip set, metric), with values, deltas against the full model, intervals and tests.

Metrics and what ``delta`` means for each (0 for the full model):

* ``ppl`` perplexity on the corpus; delta is the log perplexity ratio, i.e.
  the mean change in next-token loss in nats (additive, so the interaction
  Δij − Δi − Δj is meaningful).  Paired block bootstrap interval and p-value.
* ``kl`` mean next-token KL(full || skipped) in nats; delta is the value.
* ``top1`` share of tokens where the skipped model's top token is the full
  model's; delta is value − 1.
* ``mmlu`` accuracy; delta is the paired accuracy difference, p-value from
  McNemar's exact test.

``kl`` and ``top1`` have intervals but no p-value: against the full model
they are 0 and 1 by construction, so a test of "no difference" would be
empty.  ``p_holm`` adjusts p-values within each family of tests (one method,
one metric, one number of skipped layers).

``method`` says what stood in for the skipped layers (``skip``: nothing;
``bridge``, ``repeat``: :mod:`quality.standins`).  For every method but skip,
``vs_skip`` is the paired difference from plain skipping of the same set on the
same tokens or questions, in ``delta``'s units (so negative is better for ppl
and kl, positive for top1 and mmlu), with a 95% interval and a p-value (block
bootstrap for the proxies, McNemar's exact test for MMLU), Holm-adjusted in the
same families.  The full model's rows are written once, under ``skip``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quality.mmlu import MMLUScores
from quality.proxies import ProxyScores
from quality.skipsets import SkipSet, label
from quality.stats import BlockBootstrap, bootstrap_p, holm, paired_accuracy, percentile_interval, wilson

PROXY_METRICS = ("ppl", "kl", "top1")
METRICS = PROXY_METRICS + ("mmlu",)
COLUMNS = [
    "model", "skip_set", "n_skipped", "metric", "value", "value_low", "value_high",
    "delta", "delta_low", "delta_high", "p_value", "p_holm", "n",
    "method", "vs_skip", "vs_skip_low", "vs_skip_high", "vs_skip_p", "vs_skip_p_holm",
]
VS_SKIP = ("vs_skip", "vs_skip_low", "vs_skip_high", "vs_skip_p")


def _row(skip: SkipSet, metric: str, n: int, **values: float) -> dict:
    return {"skip_set": label(skip), "n_skipped": len(skip), "metric": metric, "n": n, **values}


def _vs_skip(boot: BlockBootstrap, values: np.ndarray, skipped: np.ndarray) -> list[dict]:
    """Per set: the paired mean difference ``values - skipped`` with its block-bootstrap interval and p."""
    diff = values.astype(np.float64) - skipped.astype(np.float64)  # top1 is boolean
    samples = boot.means(diff)
    low, high = percentile_interval(samples)
    p = bootstrap_p(samples)
    return [dict(zip(VS_SKIP, (float(diff[i].mean()), float(low[i]), float(high[i]), float(p[i]))))
            for i in range(len(values))]


def proxy_rows(scores: ProxyScores, metrics: list[str], *, method: str = "skip",
               skipped: ProxyScores | None = None) -> list[dict]:
    """Rows for the proxy metrics, with paired block-bootstrap intervals; ``skipped`` (the plain-skip scores of
    the same sets and tokens) adds the comparison with skipping, for a ``method`` other than skip."""
    boot = BlockBootstrap(scores.blocks)
    full = scores.row(())
    n = scores.nll.shape[1]
    rows: list[dict] = []
    order = [skipped.row(s) for s in scores.sets] if skipped is not None else None
    compare = {name: _vs_skip(boot, getattr(scores, name), getattr(skipped, name)[order])
               for name in ("nll", "kl", "top1")} if skipped is not None else {}
    if "ppl" in metrics:
        nll = boot.means(scores.nll)
        diff = boot.means(scores.nll - scores.nll[full])
        nll_low, nll_high = percentile_interval(nll)
        d_low, d_high = percentile_interval(diff)
        p = bootstrap_p(diff)
        for i, skip in enumerate(scores.sets):
            delta = float(np.mean(scores.nll[i] - scores.nll[full]))
            rows.append(_row(
                skip, "ppl", n,
                value=float(np.exp(scores.nll[i].mean())), value_low=float(np.exp(nll_low[i])),
                value_high=float(np.exp(nll_high[i])), delta=delta, delta_low=float(d_low[i]),
                delta_high=float(d_high[i]), p_value=float(p[i]) if skip else np.nan, method=method,
                **compare.get("nll", [{}] * len(scores.sets))[i],
            ))
    for metric, values, offset in (("kl", scores.kl, 0.0), ("top1", scores.top1, 1.0)):
        if metric not in metrics:
            continue
        low, high = percentile_interval(boot.means(values))
        for i, skip in enumerate(scores.sets):
            value = float(values[i].mean())
            rows.append(_row(
                skip, metric, n, value=value, value_low=float(low[i]), value_high=float(high[i]),
                delta=value - offset, delta_low=float(low[i]) - offset, delta_high=float(high[i]) - offset,
                p_value=np.nan, method=method, **compare.get(metric, [{}] * len(scores.sets))[i],
            ))
    return [r for r in rows if method == "skip" or r["n_skipped"]]


def mmlu_rows(scores: MMLUScores, *, method: str = "skip", skipped: MMLUScores | None = None) -> list[dict]:
    """Rows for MMLU accuracy: Wilson interval for the value, paired interval and McNemar for the delta (and,
    with ``skipped``, for the difference from plain skipping)."""
    correct = scores.correct
    full = correct[scores.row(())]
    n = correct.shape[1]
    rows = []
    for i, skip in enumerate(scores.sets):
        if method != "skip" and not skip:
            continue
        low, high = wilson(int(correct[i].sum()), n)
        paired = paired_accuracy(full, correct[i])
        compare = {}
        if skipped is not None:
            vs = paired_accuracy(skipped.correct[skipped.row(skip)], correct[i])
            compare = dict(zip(VS_SKIP, (vs.delta, vs.low, vs.high, vs.p_value)))
        rows.append(_row(
            skip, "mmlu", n, value=float(correct[i].mean()), value_low=low, value_high=high,
            delta=paired.delta, delta_low=paired.low, delta_high=paired.high,
            p_value=paired.p_value if skip else np.nan, method=method, **compare,
        ))
    return rows


def results_table(model: str, rows: list[dict]) -> pd.DataFrame:
    """Assemble rows into the study table and Holm-adjust p-values per (metric, set size) family."""
    table = pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if c not in ("model", "p_holm",
                                                                                "vs_skip_p_holm")])
    table.insert(0, "model", model)
    table["method"] = table["method"].fillna("skip")
    table["p_holm"] = table["vs_skip_p_holm"] = np.nan
    for _, family in table.groupby(["method", "metric", "n_skipped"]):
        table.loc[family.index, "p_holm"] = holm(family["p_value"].to_numpy())
        table.loc[family.index, "vs_skip_p_holm"] = holm(family["vs_skip_p"].to_numpy())
    return table[COLUMNS]
