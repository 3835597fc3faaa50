"""Figures of a run or of several runs, readable without the code.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through
pyplot: no display is needed, nothing global is left open, and a notebook still shows
them inline.  Every figure has a title and axes with units; times are ms unless the
axis says otherwise.  ``save`` writes the PNG and the PDF side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analysis.load import RunData, indices
from analysis.metrics import DISRUPTIVE, Metrics, skipped_layers

MS = 1e6
NODE_RADIUS_PT = 26  # topology node discs, in points
COMPONENT_STYLE = {  # column -> (legend, colour)
    "serialize_ns": ("serialisation (src)", "#4c72b0"),
    "network_ns": ("network, one way (src → dst)", "#dd8452"),
    "queue_ns": ("queueing (dst)", "#55a868"),
    "compute_ns": ("compute (dst)", "#c44e52"),
}


def new_figure(width: float = 10.0, height: float = 5.0, **kwargs: object) -> Figure:
    """A headless figure (Agg canvas) with constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, directory: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf into ``directory``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    figure.savefig(paths[0], dpi=150)
    figure.savefig(paths[1])
    return paths


def layer_ranges(layers: tuple[int, ...] | list[int]) -> str:
    """Compact layer list: (0, 1, 2, 5) -> "0–2, 5"."""
    parts, values = [], sorted(layers)
    for value in values:
        if parts and value == parts[-1][1] + 1:
            parts[-1][1] = value
        else:
            parts.append([value, value])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in parts)


def _origin_ns(data: RunData) -> int:
    """The run's first send on the user node's wall clock: time zero of timelines."""
    tokens = data.tokens
    return int((tokens["t_emit_ns"] - tokens["latency_ns"]).min())


def _fault_lines(ax: Axes, data: RunData, origin: int, *, label: bool = True) -> None:
    for fault in data.faults.itertuples(index=False):
        x = (fault.effective_wall_ns - origin) / 1e9
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        if label:
            ax.annotate(f"{fault.action} {fault.target}", (x, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8)


def _hop_label(src: int, dst: int, names: dict[int, str]) -> str:
    return f"{names.get(src, src)}→{names.get(dst, dst)}"


def _names(data: RunData) -> dict[int, str]:
    return dict(zip(data.nodes["index"], data.nodes["name"], strict=True))


def latency_timeline(data: RunData) -> Figure:
    """Per-token latency over time, faults as dashed lines, runs of skipped layers shaded and named."""
    info = data.info
    tokens = data.tokens.assign(skipped=skipped_layers(data.tokens, data.nodes)).sort_values("t_emit_ns")
    origin = _origin_ns(data)
    tokens["t_s"] = (tokens["t_emit_ns"] - origin) / 1e9
    tokens["ms"] = tokens["latency_ns"] / MS
    figure = new_figure(11, 5)
    ax = figure.add_subplot()
    for session, group in tokens.groupby("session", sort=False):
        decode = group[group["step"] >= 1]
        ax.plot(decode["t_s"], decode["ms"], marker=".", markersize=4, linewidth=0.6, label=f"session {session}",
                rasterized=len(decode) > 2000)
    prefill = tokens[tokens["step"] == 0]
    ax.scatter(prefill["t_s"], prefill["ms"], marker="^", color="black", zorder=3, label="first token (prefill)")
    retried = tokens[tokens["attempts"] > 1]
    if len(retried):
        ax.scatter(retried["t_s"], retried["ms"], marker="o", facecolors="none", edgecolors="red", s=60, zorder=4,
                   label="re-sent step")
    for skipped, start, end in _skip_spans(tokens):
        ax.axvspan(start, end, color="orange", alpha=0.15, linewidth=0)
        ax.annotate(f"layers {layer_ranges(indices(skipped))} skipped", (start, 0.02),
                    xycoords=("data", "axes fraction"), fontsize=8, color="darkorange")
    _fault_lines(ax, data, origin)
    if len(tokens) and tokens["ms"].max() > 20 * max(tokens["ms"].median(), 1e-9):
        ax.set_yscale("log")
    ax.set(title=f"Per-token latency — {info.label}", xlabel="time since the first send (s, user-node clock)",
           ylabel="latency per token (ms)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def _skip_spans(tokens: pd.DataFrame) -> list[tuple[str, float, float]]:
    """Consecutive tokens with the same non-empty set of skipped layers, as (layers, start s, end s)."""
    spans: list[tuple[str, float, float]] = []
    for skipped, t in zip(tokens["skipped"], tokens["t_s"], strict=True):
        if spans and spans[-1][0] == skipped:
            spans[-1] = (skipped, spans[-1][1], t)
        elif skipped:
            spans.append((skipped, t, t))
        else:
            spans.append(("", t, t))
    return [span for span in spans if span[0]]


def hop_breakdown(metrics: Metrics, data: RunData) -> Figure:
    """Stacked mean time per frame of each hop, with the one-way delay's offset uncertainty."""
    hops = metrics.hops[metrics.hops["run_id"] == data.info.run_id].sort_values(["src", "dst"])
    names = _names(data)
    labels = [_hop_label(s, d, names) for s, d in zip(hops["src"], hops["dst"], strict=True)]
    figure = new_figure(max(8.0, 0.55 * len(hops) + 3), 5)
    ax = figure.add_subplot()
    x = np.arange(len(hops))
    bottom = np.zeros(len(hops))
    for column, (legend, colour) in COMPONENT_STYLE.items():
        values = hops[column].to_numpy() / MS
        ax.bar(x, values, bottom=bottom, color=colour, label=legend)
        if column == "network_ns":
            ax.errorbar(x, bottom + values, yerr=hops["owd_uncertainty_ns"].to_numpy() / MS, fmt="none",
                        ecolor="black", capsize=3, linewidth=0.8, label="± clock-offset uncertainty")
        bottom += values
    ax.set_xticks(x, labels, rotation=45 if len(hops) > 6 else 0, ha="right" if len(hops) > 6 else "center")
    ax.set(title=f"Per-hop time per frame (mean) — {data.info.label}", xlabel="hop (src → dst)",
           ylabel="mean time per frame (ms)")
    ax.legend(fontsize=8)
    return figure


def _profile_pairs(hop_rows: pd.DataFrame, nodes: pd.DataFrame) -> pd.Series:
    profile = dict(zip(zip(nodes["run_id"], nodes["index"]), nodes["profile"], strict=True))
    return pd.Series([f"{profile.get((r, s), '?')} → {profile.get((r, d), '?')}" for r, s, d in
                      zip(hop_rows["run_id"], hop_rows["src"], hop_rows["dst"], strict=True)], index=hop_rows.index)


def _ecdf(ax: Axes, values: np.ndarray, label: str) -> None:
    ordered = np.sort(values)
    ax.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", label=f"{label} (n={len(ordered)})")


def latency_cdfs(metrics: Metrics, data: RunData) -> Figure:
    """CDFs of round trips and forward one-way delays, per link-profile pair of the hop."""
    rows = metrics.hop_rows[metrics.hop_rows["run_id"] == data.info.run_id]
    pairs = _profile_pairs(rows, data.nodes)
    figure = new_figure(12, 4.8)
    rtt_ax, owd_ax = figure.subplots(1, 2, sharey=True)
    for pair, group in rows.groupby(pairs):
        _ecdf(rtt_ax, group["rtt_ns"].to_numpy() / MS, pair)
        _ecdf(owd_ax, group["owd_fwd_ns"].to_numpy() / MS, pair)
    rtt_ax.set(title="Round trip per frame (offset-free)", xlabel="round trip (ms)", ylabel="fraction of frames ≤ x")
    owd_ax.set(title="One-way delay src → dst (± clock-offset uncertainty)", xlabel="one-way delay (ms)")
    for ax in (rtt_ax, owd_ax):
        ax.grid(alpha=0.3)
        ax.legend(title="link profiles (src → dst)", fontsize=8)
    figure.suptitle(f"Hop latency by link profile — {data.info.label}")
    return figure


def network_over_time(metrics: Metrics, data: RunData) -> Figure:
    """Round trip of every frame and bytes sent so far, per hop, over the run."""
    rows = metrics.hop_rows[metrics.hop_rows["run_id"] == data.info.run_id].sort_values("t1_wall_ns")
    origin = _origin_ns(data)
    names = _names(data)
    figure = new_figure(12, 7)
    rtt_ax, bytes_ax = figure.subplots(2, 1, sharex=True)
    colours = _colours(rows.groupby(["src", "dst"]).ngroups)
    for colour, ((src, dst), group) in zip(colours, rows.groupby(["src", "dst"]), strict=True):
        t = (group["t1_wall_ns"] - origin) / 1e9
        label = _hop_label(src, dst, names)
        rtt_ax.plot(t, group["rtt_ns"] / MS, marker=".", markersize=3, linewidth=0.5, color=colour, label=label,
                    rasterized=True)  # thousands of points: keep the PDF small, text stays vector
        bytes_ax.plot(t, group["bytes"].cumsum() / 1e6, linewidth=1, color=colour, label=label, rasterized=True)
    for ax in (rtt_ax, bytes_ax):
        _fault_lines(ax, data, origin, label=ax is rtt_ax)
        ax.grid(alpha=0.3)
    rtt_ax.set(title="Round trip per frame (offset-free)", ylabel="round trip (ms)")
    bytes_ax.set(title="Bytes delivered per hop (cumulative)", ylabel="MB delivered",
                 xlabel="time since the first send (s, sender clock)")
    bytes_ax.legend(title="hop", fontsize=7, ncol=max(1, len(colours) // 10), loc="upper left")
    figure.suptitle(f"Network behaviour per hop — {data.info.label}")
    return figure


def _colours(count: int) -> list:
    cmap = colormaps["tab20" if count > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(count)]


def topology(metrics: Metrics, data: RunData) -> Figure:
    """Nodes on a ring with their layers and link profile; hops used, median round trip; failed nodes."""
    nodes = data.nodes.sort_values("index")
    hops = metrics.hops[metrics.hops["run_id"] == data.info.run_id]
    failed = {name for f in data.faults.itertuples(index=False) if f.action in DISRUPTIVE for name in f.target.split()}
    profiles = sorted(set(nodes["profile"]))
    palette = dict(zip(profiles, _colours(len(profiles)), strict=True))
    count = len(nodes)
    angle = np.pi - 2 * np.pi * np.arange(count) / count
    where = {i: (np.cos(a), np.sin(a)) for i, a in zip(nodes["index"], angle, strict=True)}
    chain = set(zip(nodes["index"], list(nodes["index"].iloc[1:]) + [0], strict=True))
    side = max(8.0, 0.7 * count)  # the ring grows with the node count so that arrows stay visible
    figure = new_figure(side, side)
    ax = figure.add_subplot()
    for hop in hops.itertuples(index=False):
        (x0, y0), (x1, y1) = where[hop.src], where[hop.dst]
        style = "-" if (hop.src, hop.dst) in chain else "--"
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "-|>", "linestyle": style, "color": "grey",
                                                        "shrinkA": NODE_RADIUS_PT + 3, "shrinkB": NODE_RADIUS_PT + 3})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"{hop.rtt_median_ns / MS:.1f} ms", fontsize=7, ha="center",
                color="dimgrey", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    for node in nodes.itertuples(index=False):
        x, y = where[node.index]
        dead = node.name in failed
        ax.scatter([x], [y], s=np.pi * NODE_RADIUS_PT**2, color=palette[node.profile],
                   edgecolors="red" if dead else "black", linewidths=3 if dead else 1, zorder=3)
        layers = layer_ranges(indices(node.layers))
        role = f"layers {layers}" if layers else ("end user" if node.index == 0 else "no layers")
        text = f"{node.name}\n{role}" + ("\n✕ failed" if dead else "")
        ax.text(x, y, text, ha="center", va="center", fontsize=7, zorder=4, color="darkred" if dead else "black")
    handles = [Patch(color=palette[p], label=f"link profile: {p}") for p in profiles]
    handles.append(Patch(facecolor="white", edgecolor="red", linewidth=3, label="target of a fault"))
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=8)
    ax.set(title=f"Topology — {data.info.label}\n(arrows: hops used, median round trip; dashed: reroutes)",
           xlim=(-1.35, 1.35), ylim=(-1.35, 1.35), aspect="equal")
    ax.axis("off")
    return figure


def layer_map(data: RunData) -> Figure:
    """Which layers each token went through, in emission order; skipped layers stand out."""
    tokens = data.tokens.sort_values("t_emit_ns").reset_index(drop=True)
    layers = sorted(set().union(*(indices(s) for s in data.nodes["layers"])))
    applied = np.zeros((len(layers), len(tokens)))
    row = {layer: i for i, layer in enumerate(layers)}
    for column, text in enumerate(tokens["layers"]):
        for layer in indices(text):
            applied[row[layer], column] = 1
    figure = new_figure(11, 0.25 * len(layers) + 2.5)
    ax = figure.add_subplot()
    ax.imshow(applied, aspect="auto", interpolation="nearest", cmap="RdYlGn", vmin=0, vmax=1, origin="lower",
              extent=(-0.5, len(tokens) - 0.5, -0.5, len(layers) - 0.5))
    starts = tokens.index[tokens["session"] != tokens["session"].shift()].tolist()
    for start in starts[1:]:
        ax.axvline(start - 0.5, color="black", linewidth=0.8)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.legend(handles=[Patch(color="#1a9850", label="applied"), Patch(color="#d73027", label="skipped")],
              loc="upper right", fontsize=8)
    ax.set(title=f"Decoder layers applied per token — {data.info.label}",
           xlabel="token, in emission order (black lines: new session)", ylabel="decoder layer (0-based)")
    return figure


def comparison(metrics: Metrics, data: RunData) -> Figure:
    """Several runs side by side: per-token latency CDF, where the time goes, median TTFT, tokens/s."""
    labels = run_labels(data)
    figure = new_figure(14, 9)
    (cdf_ax, parts_ax), (ttft_ax, rate_ax) = figure.subplots(2, 2)
    decode = data.tokens[data.tokens["step"] >= 1]
    for run_id, group in decode.groupby("run_id"):
        _ecdf(cdf_ax, group["latency_ns"].to_numpy() / MS, labels[run_id])
    cdf_ax.set(title="Per-token latency (decode steps)", xlabel="latency per token (ms)",
               ylabel="fraction of tokens ≤ x")
    cdf_ax.grid(alpha=0.3)
    cdf_ax.legend(fontsize=8)
    names = [labels[r].replace(" · ", "\n") for r in labels]
    parts = metrics.composition.set_index("run_id").loc[list(labels)]
    bottom = np.zeros(len(parts))
    styles = {**COMPONENT_STYLE, "other_ns": ("other (head, sampling, retries)", "#8c8c8c")}
    for column, (legend, colour) in styles.items():
        values = parts[column].clip(lower=0).to_numpy() / MS
        parts_ax.bar(names, values, bottom=bottom, color=colour, label=legend.replace("(src)", "").strip())
        bottom += values
    parts_ax.set(title="Where a token's time goes (mean over decode steps, all hops)", ylabel="time per token (ms)")
    parts_ax.legend(fontsize=7)
    runs = metrics.runs.set_index("run_id").loc[list(labels)]
    ttft_ax.bar(names, runs["ttft_median_ns"] / MS, color="#4c72b0")
    ttft_ax.set(title="Time to first token (median over sessions)", ylabel="TTFT (ms)")
    rate_ax.bar(names, runs["tokens_per_s"], color="#55a868")
    rate_ax.set(title="Throughput (prefill included)", ylabel="tokens per second")
    for ax in (parts_ax, ttft_ax, rate_ax):
        ax.tick_params(axis="x", labelsize=7)
    figure.suptitle("Runs compared")
    return figure


def run_labels(data: RunData) -> dict[str, str]:
    """Legend label per run; the run id is appended when two runs would otherwise look the same."""
    labels = {run_id: info.label for run_id, info in data.runs.items()}
    if len(set(labels.values())) < len(labels):
        labels = {run_id: f"{label} ({run_id})" for run_id, label in labels.items()}
    return labels
