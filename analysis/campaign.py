"""A campaign's results (``campaign.csv``, written by ``fab campaign``) as a table and the figure of quality
against layers lost, one curve per failure policy, with 95% bootstrap intervals over the runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.figures import save

FIGURE = "quality_vs_layers_lost"
BOOTSTRAP = 2000


def mean_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% interval of the runs' values (NaN-free; one value: no spread)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(values, (BOOTSTRAP, values.size)).mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy, layers lost): runs, oracle passes, KL after the fault and agreement with intervals."""
    out = []
    for (policy, lost), group in rows.groupby(["policy", "layers_lost"], sort=True):
        kl, kl_low, kl_high = mean_interval(group.kl_after.to_numpy())
        agree, agree_low, agree_high = mean_interval(group.agreement.to_numpy())
        out.append({"policy": policy, "layers_lost": int(lost), "runs": len(group),
                    "oracle_ok": int(group.oracle_ok.sum()), "complete": int(group.complete.sum()),
                    "kl_after": kl, "kl_low": kl_low, "kl_high": kl_high,
                    "agreement": agree, "agreement_low": agree_low, "agreement_high": agree_high})
    return pd.DataFrame(out)


def figure(summary: pd.DataFrame, out: Path, title: str) -> list[Path]:
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    kl_ax, agree_ax = fig.subplots(1, 2)
    policies = list(dict.fromkeys(summary.policy))
    for k, policy in enumerate(policies):
        rows = summary[summary.policy == policy].sort_values("layers_lost")
        shift = (k - (len(policies) - 1) / 2) * 0.12
        for ax, value, low, high in ((kl_ax, "kl_after", "kl_low", "kl_high"),
                                     (agree_ax, "agreement", "agreement_low", "agreement_high")):
            err = np.vstack([rows[value] - rows[low], rows[high] - rows[value]]).clip(min=0)
            ax.errorbar(rows.layers_lost + shift, rows[value], yerr=err, marker="o", capsize=3, label=policy)
    kl_ax.set_ylabel("KL(full ‖ chain) after the fault (nats/token)")
    kl_ax.set_yscale("symlog", linthresh=0.01)
    agree_ax.set_ylabel("tokens equal to the no-fault run's")
    agree_ax.set_ylim(-0.02, 1.02)
    for ax in (kl_ax, agree_ax):
        ax.set_xlabel("layers lost (of the killed nodes)")
        ax.grid(alpha=0.3)
    kl_ax.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, out, FIGURE)


def report(out: Path) -> Path:
    """``campaign.md`` and the figure from ``out/campaign.csv``; returns the markdown file."""
    out = Path(out)
    rows = pd.read_csv(out / "campaign.csv")
    settings = json.loads((out / "campaign.json").read_text())
    summary = summarise(rows)
    title = (f"{settings['model']}, {settings['nodes']} nodes, {settings['runs']} seeded draws per policy "
             f"(seed {settings['seed']})")
    figure(summary, out, title)
    shown = summary.assign(
        kl_after=[f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(summary.kl_after, summary.kl_low,
                                                                        summary.kl_high)],
        agreement=[f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in zip(summary.agreement, summary.agreement_low,
                                                                         summary.agreement_high)],
    )[["policy", "layers_lost", "runs", "complete", "oracle_ok", "kl_after", "agreement"]]
    overall = summarise(rows.assign(layers_lost=0)).set_index("policy")
    lines = [f"# Campaign: {title}", "",
             f"Prompt: {settings['prompt']!r}, {settings['max_new_tokens']} tokens, {settings['testbed']} testbed. "
             "Each draw kills 1 to {max_lost} layer nodes together at a random token; every policy runs every "
             "draw. KL is the mean next-token KL(full model || chain) over the steps after the fault, on the "
             "chain's own prefix; agreement is the share of tokens equal to the no-fault run's. Brackets: "
             "95% bootstrap intervals over runs.".format(max_lost=settings["max_lost"]), "",
             tabulate(shown, headers="keys", tablefmt="github", showindex=False), "",
             "Over all draws: " + "; ".join(
                 f"{policy} KL {row.kl_after:.3f} [{row.kl_low:.3f}, {row.kl_high:.3f}], agreement "
                 f"{row.agreement:.2f}, oracle {int(row.oracle_ok)}/{int(row.runs)}" for policy, row in overall.iterrows()),
             "", f"![quality against layers lost]({FIGURE}.png)", ""]
    path = out / "campaign.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines[4:7]))
    return path
