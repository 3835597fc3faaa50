"""Figures of the study, each saved as PNG (for docs) and PDF (for papers).

* ``single_skips``: Δ against the full model per skipped layer, 95% interval bars, one panel per metric, one
  series per method (plain skip, bridge, repeat) when the study compared them.
* ``double_<metric>``: triangular heatmap of Δ for every pair i < j (row j, column i), single skips on the diagonal.
* ``interaction_<metric>``: Δij − Δi − Δj; red where a pair hurts more than its two layers apart.

Δ is the ``delta`` column of the results table, so interactions are taken on
additive scales (log perplexity, KL, agreement, accuracy).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, Normalize, SymLogNorm, TwoSlopeNorm  # noqa: E402

TITLES = {
    "ppl": "Δ log perplexity (nats/token)",
    "kl": "KL(full ‖ skipped) (nats/token)",
    "top1": "top-1 agreement − 1",
    "mmlu": "Δ MMLU accuracy",
}
# KL and loss changes span several orders of magnitude (first and last layers are catastrophic): log-like scales.
LOG_LIKE = {"ppl", "kl"}


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


METHOD_LABELS = {"skip": "skipped", "bridge": "bridged", "repeat": "previous layer repeated"}


def _singles(table: pd.DataFrame, metric: str, method: str = "skip") -> pd.DataFrame:
    rows = table[(table.metric == metric) & (table.n_skipped == 1)].copy()
    if "method" in rows:
        rows = rows[rows.method == method]
    rows["layer"] = rows.skip_set.astype(int)
    return rows.sort_values("layer")


def single_skip_figure(table: pd.DataFrame, out: Path, title: str) -> list[Path]:
    """Δ per single skipped layer with 95% intervals, one panel per metric in the table, one series per method."""
    metrics = [m for m in TITLES if not _singles(table, m).empty]
    if not metrics:
        return []
    methods = [m for m in METHOD_LABELS if "method" in table and (table.method == m).any()] or ["skip"]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for k, method in enumerate(methods):
            rows = _singles(table, metric, method)
            err = np.vstack([rows.delta - rows.delta_low, rows.delta_high - rows.delta]).clip(min=0)
            shift = (k - (len(methods) - 1) / 2) * 0.22  # side by side at each layer
            ax.errorbar(rows.layer + shift, rows.delta, yerr=err, fmt="o", capsize=3, label=METHOD_LABELS[method])
        if len(methods) > 1 and metric == metrics[0]:
            ax.legend(fontsize=7)
        if metric == "kl":
            ax.set_yscale("log")  # KL > 0 for any real skip; a zero line would stretch the axis to 1e-15
        else:
            ax.axhline(0, color="grey", linewidth=0.8)
        if metric == "ppl":
            ax.set_yscale("symlog", linthresh=0.01)
        ax.set_ylabel(TITLES[metric], fontsize=8)
    axes[-1, 0].set_xlabel("skipped layer (0-based)")
    axes[-1, 0].set_xticks(sorted(_singles(table, metrics[0]).layer))
    fig.suptitle(title)
    return _save(fig, out, "single_skips")


def _pair_matrix(table: pd.DataFrame, metric: str, num_layers: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(Δ of pairs with singles on the diagonal, interaction) as [j, i] matrices, NaN above the diagonal."""
    rows = table[table.metric == metric].set_index("skip_set").delta
    pairs = np.full((num_layers, num_layers), np.nan)
    interaction = np.full((num_layers, num_layers), np.nan)
    found = False
    for i in range(num_layers):
        pairs[i, i] = rows.get(str(i), np.nan)
        for j in range(i + 1, num_layers):
            both = rows.get(f"{i}+{j}")
            if both is None:
                continue
            found = True
            pairs[j, i] = both
            interaction[j, i] = both - rows.get(str(i), np.nan) - rows.get(str(j), np.nan)
    return (pairs, interaction) if found else None


def _norm(metric: str, values: np.ndarray, *, diverging: bool):
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Normalize()
    if diverging:
        bound = float(np.max(np.abs(finite))) or 1.0
        if metric in LOG_LIKE:
            return SymLogNorm(linthresh=0.01, vmin=-bound, vmax=bound)
        return TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    if metric == "kl" and np.any(finite > 0):
        return LogNorm(vmin=float(finite[finite > 0].min()), vmax=float(finite.max()))
    if metric == "ppl":
        return SymLogNorm(linthresh=0.01, vmin=float(finite.min()), vmax=float(finite.max()))
    return Normalize(vmin=float(finite.min()), vmax=float(finite.max()))


def _heatmap(matrix: np.ndarray, metric: str, title: str, *, diverging: bool, cmap: str, label: str):
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=_norm(metric, matrix, diverging=diverging))
    ticks = range(matrix.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("first skipped layer i (0-based)")
    ax.set_ylabel("second skipped layer j")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return fig


def double_skip_figures(table: pd.DataFrame, out: Path, num_layers: int, title: str) -> list[Path]:
    """Triangular heatmap and interaction map for every metric that has double skips."""
    paths: list[Path] = []
    for metric in TITLES:
        matrices = _pair_matrix(table, metric, num_layers)
        if matrices is None:
            continue
        pairs, interaction = matrices
        worse_is_high = metric in LOG_LIKE
        fig = _heatmap(pairs, metric, f"{title}: skipping layers i and j (diagonal: i alone)",
                       diverging=False, cmap="magma" if worse_is_high else "magma_r", label=TITLES[metric])
        paths += _save(fig, out, f"double_{metric}")
        fig = _heatmap(interaction, metric, f"{title}: interaction Δij − Δi − Δj",
                       diverging=True, cmap="RdBu_r" if worse_is_high else "RdBu",
                       label=f"Δij − Δi − Δj of {TITLES[metric]}")
        paths += _save(fig, out, f"interaction_{metric}")
    return paths
