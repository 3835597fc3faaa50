"""Intervals and paired tests for "skipped versus full model on the same inputs".

Every comparison in the study is paired: the same questions, the same corpus
tokens.  MMLU uses the exact McNemar test on the discordant questions and a
paired (Wald) interval for the accuracy difference; proxies use a paired block
bootstrap that resamples the same corpus blocks for the full model and every
skip set.  With 153 double skips, p-values are Holm-adjusted per family of
tests, which controls the chance of any false "this pair hurts" claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from quality.errors import StudyError

Z95 = 1.959963984540054
RESAMPLES = 10_000
SEED = 0


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson interval for a proportion: sensible near 0 and 1, where Wald intervals are not."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


@dataclass(frozen=True)
class PairedAccuracy:
    """Skipped minus full accuracy on the same questions, with its 95% interval and McNemar p-value."""

    delta: float
    low: float
    high: float
    p_value: float
    lost: int  # right with the full model, wrong when skipped
    gained: int  # wrong with the full model, right when skipped


def paired_accuracy(full: np.ndarray, skipped: np.ndarray) -> PairedAccuracy:
    """Compare per-question correctness of the full and a skipped model.

    The interval is the paired Wald interval ``d ± z·sqrt((b+c)/n − d²)/√n``;
    the p-value is McNemar's exact test (binomial on the b + c discordant
    questions), which is what "did this skip change answers" asks.
    """
    full = np.asarray(full, dtype=bool)
    skipped = np.asarray(skipped, dtype=bool)
    if full.shape != skipped.shape or full.ndim != 1 or full.size == 0:
        raise ValueError("paired accuracy needs two equal-length, non-empty 1-D arrays")
    n = full.size
    lost = int(np.sum(full & ~skipped))
    gained = int(np.sum(~full & skipped))
    delta = (gained - lost) / n
    half = Z95 * np.sqrt(max((gained + lost) / n - delta**2, 0.0) / n)
    p_value = binomtest(min(lost, gained), lost + gained, 0.5).pvalue if lost + gained else 1.0
    return PairedAccuracy(delta, delta - half, delta + half, float(p_value), lost, gained)


class BlockBootstrap:
    """Paired bootstrap over blocks of tokens: one set of resampling weights shared by every row.

    ``means(values)`` takes per-token values [rows, tokens] and returns
    resampled means [rows, resamples]; because every row sees the same
    resampled blocks, differences between rows are paired.
    """

    def __init__(self, blocks: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED):
        blocks = np.asarray(blocks)
        ids, self._index = np.unique(blocks, return_inverse=True)
        n = ids.size
        if n < 2:
            raise StudyError("the block bootstrap needs at least 2 blocks; evaluate more tokens")
        rng = np.random.default_rng(seed)
        self._weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).T.astype(np.float64)
        self._counts = np.bincount(self._index, minlength=n).astype(np.float64) @ self._weights

    def means(self, values: np.ndarray) -> np.ndarray:
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        sums = np.zeros((values.shape[0], self._weights.shape[0]))
        np.add.at(sums.T, self._index, values.T)
        return (sums @ self._weights) / self._counts


def percentile_interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile interval of bootstrap ``samples`` [rows, resamples], per row."""
    low, high = np.percentile(samples, [2.5, 97.5], axis=-1)
    return low, high


def bootstrap_p(samples: np.ndarray) -> np.ndarray:
    """Two-sided p-value for "mean difference is 0", per row, from resampled differences.

    Twice the smaller share of resamples on either side of 0, counted with the
    usual +1 so no p-value is 0 (the smallest is 2/(B+1), about 2e-4 for
    B = 10,000: small enough to survive Holm over 153 tests).
    """
    samples = np.atleast_2d(samples)
    b = samples.shape[-1]
    below = (np.sum(samples <= 0, axis=-1) + 1) / (b + 1)
    above = (np.sum(samples >= 0, axis=-1) + 1) / (b + 1)
    return np.minimum(1.0, 2 * np.minimum(below, above))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs stay NaN and do not count as tests)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
