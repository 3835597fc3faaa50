"""One run directory to report.md, report.html, figures/*.png|pdf and analysis.json, plus a terminal table.

``analyze`` backs ``fab analyze --run DIR [--baseline DIR]``; ``summary_table`` is the
text printed at the end of ``make demo``.  Everything written lands in the run directory
(next to the data it describes) and is overwritten on the next analysis.  ``report.html`` holds the
same tables and figures as ``report.md`` with the figures embedded: one file that opens from disk,
mails, and prints (page breaks avoid splitting a figure or a table).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import pandas as pd
from tabulate import tabulate

from analysis import figures
from analysis.load import RunData, RunDirError, load
from analysis.metrics import Metrics, compute
from analysis.tables import cell, in_ms, markdown, ms, with_hop_names

REPORT = "report.md"
REPORT_HTML = "report.html"
SUMMARY = "analysis.json"
FIGURES = "figures"

FIGURE_CAPTIONS: dict[str, tuple[Callable[[Metrics, RunData], object], str]] = {
    "latency_timeline": (
        lambda m, d: figures.latency_timeline(d),
        "Per-token latency over the run. Dashed lines: faults taking effect; shaded: tokens produced "
        "with layers skipped; red circles: steps that had to be re-sent.",
    ),
    "hop_breakdown": (
        figures.hop_breakdown,
        "Mean time per frame on each hop: serialisation at the sender, one-way network delay "
        "(error bar: clock-offset uncertainty), queueing and compute at the receiver.",
    ),
    "latency_cdfs": (
        figures.latency_cdfs,
        "Distribution of round trips (offset-free) and one-way delays per link-profile pair.",
    ),
    "network_over_time": (
        figures.network_over_time,
        "Round trip of every frame and bytes delivered per hop over the run.",
    ),
    "topology": (
        figures.topology,
        "Nodes, their layers and link profiles; arrows are hops used (median round trip), dashed ones reroutes.",
    ),
    "layer_map": (
        lambda m, d: figures.layer_map(d),
        "Decoder layers applied to each token; red cells are skipped layers.",
    ),
}


def analyze(run: Path, baseline: Path | None = None, *, allow_incomplete: bool = False) -> Path:
    """Analyse ``run`` (against ``baseline``, a run of the same prompts, if given); return report.md's path."""
    run = Path(run)
    data = _load_with_tokens(run, allow_incomplete=allow_incomplete)
    base = None if baseline is None else _load_with_tokens(Path(baseline), allow_incomplete=False)
    metrics = compute(data, base)
    written: dict[str, list[Path]] = {}
    for name, (draw, _) in FIGURE_CAPTIONS.items():
        written[name] = figures.save(draw(metrics, data), run / FIGURES, name)
    report = run / REPORT
    report.write_text(render_markdown(metrics, data, baseline), encoding="utf-8")
    (run / REPORT_HTML).write_text(render_html(metrics, data, baseline), encoding="utf-8")
    summary = summary_json(metrics, data, baseline, written)
    (run / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(table_text(metrics, data))
    figures_written = [path for paths in written.values() for path in paths if path.suffix == ".png"]
    print(f"report: {report} (and {REPORT_HTML}, self-contained)")
    print(f"figures ({len(figures_written)}): " + ", ".join(str(path.relative_to(run)) for path in figures_written))
    return report


def summary_table(run: Path, *, allow_incomplete: bool = False) -> str:
    """The terminal table of a run: per-session latency and throughput, then its faults."""
    data = _load_with_tokens(Path(run), allow_incomplete=allow_incomplete)
    return table_text(compute(data), data)


def _load_with_tokens(run: Path, *, allow_incomplete: bool) -> RunData:
    """Load a run for a report, which has nothing to say about a run without tokens."""
    data = load(run, allow_incomplete=allow_incomplete)
    if data.tokens.empty:
        raise RunDirError(f"{run / 'tokens.csv'} has no tokens: nothing to analyse")
    return data


def table_text(metrics: Metrics, data: RunData) -> str:
    """Session table (plus an "all" row) and one line per fault, as plain text."""
    info = data.info
    sessions = metrics.sessions
    rows = [[s.session, s.tokens, ms(s.ttft_ns), ms(s.latency_median_ns), ms(s.latency_p95_ns),
             ms(s.latency_p99_ns), f"{s.tokens_per_s:.2f}", s.degraded_tokens] for s in sessions.itertuples()]
    run = metrics.runs.iloc[0]
    rows.append(["all", run["tokens"], ms(run["ttft_median_ns"]), ms(run["latency_median_ns"]),
                 ms(run["latency_p95_ns"]), ms(run["latency_p99_ns"]), f"{run['tokens_per_s']:.2f}",
                 run["degraded_tokens"]])
    headers = ["session", "tokens", "TTFT ms", "p50 ms", "p95 ms", "p99 ms", "tokens/s", "degraded"]
    state = "complete" if info.complete else "INCOMPLETE"
    lines = [f"JARVIS run {info.run_id}: {info.label} ({state})",
             tabulate(rows, headers=headers, tablefmt="rounded_outline", disable_numparse=True)]
    lines += [f"fault: {_fault_sentence(f)}" for f in metrics.faults.itertuples()]
    return "\n".join(lines)


def _fault_sentence(fault: Any) -> str:
    """One fault as a sentence; ``fault`` is a row of ``metrics.faults.itertuples()``."""
    text = f"{fault.action} {fault.target} at {fault.trigger}"
    if pd.notna(fault.detection_ns):
        text += f"; detected after {ms(fault.detection_ns)} ms by node {fault.detected_by}"
    if pd.notna(fault.reroute_ns):
        text += f"; next token after {ms(fault.reroute_ns)} ms"
    if pd.notna(fault.degraded_tokens):
        text += f"; {fault.degraded_tokens} tokens degraded"
    if fault.layers_lost:
        lost = [int(x) for x in fault.layers_lost.split()]
        bridged = [int(x) for x in fault.layers_bridged.split()]
        text += f"; layers {figures.layer_ranges(lost)} lost"
        if bridged:
            text += f" ({'all' if bridged == lost else figures.layer_ranges(bridged)} bridged)"
    return text


def _heading(data: RunData) -> tuple[str, str, list[str]]:
    """(title, the line under it, warnings) shared by both renderings of the report."""
    info = data.info
    versions = ", ".join(f"{k} {v}" for k, v in info.versions.items() if v)
    warnings = []
    if not info.complete:
        warnings.append("Incomplete run: summary.json says the run did not finish; figures cover what was logged.")
    if info.missing_event_logs:
        warnings.append(f"No event log for {', '.join(info.missing_event_logs)}: their detections cannot be counted.")
    return f"Run {info.run_id}", f"model {info.summary.get('model', '?')} · {versions}", warnings


def render_markdown(metrics: Metrics, data: RunData, baseline: Path | None) -> str:
    """The report's Markdown: each table with how it was computed, then the figures with their captions."""
    title, subtitle, warnings = _heading(data)
    out = [f"# {title}", "", f"**{data.info.label}** · {subtitle}", ""]
    out += [line for warning in warnings for line in (f"> **{warning.replace(':', '**:', 1)}", "")]
    for heading, frame, note in _sections(metrics, data, baseline):
        out += [f"## {heading}", "", markdown(frame), "", note, ""]
    out += ["## Figures", ""]
    for name, (_, caption) in FIGURE_CAPTIONS.items():
        out += [f"![{caption}]({FIGURES}/{name}.png)", "", f"{caption} ([PDF]({FIGURES}/{name}.pdf))", ""]
    return "\n".join(out)


def _code_spans(note: str) -> markupsafe.Markup:
    """A note written for Markdown, escaped for HTML with its `code` spans as <code>."""
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(markupsafe.escape(note))))


_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("analysis", "templates"), autoescape=True)
_TEMPLATES.filters["code_spans"] = _code_spans


def render_html(metrics: Metrics, data: RunData, baseline: Path | None) -> str:
    """The report as one HTML file: the Markdown report's tables and notes, figures embedded as PNG data."""
    title, subtitle, warnings = _heading(data)
    sections = [{"heading": heading, "note": note,
                 "table": "<p><em>none</em></p>" if frame.empty else
                 frame.to_html(index=False, na_rep="–", float_format=lambda x: f"{x:.2f}", border=0)}
                for heading, frame, note in _sections(metrics, data, baseline)]
    figures_dir = data.info.path / FIGURES
    shown = [{"name": name, "caption": caption,
              "src": "data:image/png;base64," + base64.b64encode((figures_dir / f"{name}.png").read_bytes()).decode()}
             for name, (_, caption) in FIGURE_CAPTIONS.items() if (figures_dir / f"{name}.png").exists()]
    return _TEMPLATES.get_template("report.html.j2").render(title=title, subtitle=subtitle, label=data.info.label,
                                                            warnings=warnings, sections=sections, figures=shown)


def _sections(metrics: Metrics, data: RunData, baseline: Path | None) -> list[tuple[str, pd.DataFrame, str]]:
    """(heading, table in ms, how it was computed) for each table of the report."""
    def shown(frame: pd.DataFrame) -> pd.DataFrame:
        return in_ms(frame.drop(columns="run_id"))

    sections = [
        ("Summary", shown(metrics.runs),
         "TTFT: first send of the prefill to the first token. Latency percentiles: decode steps only. "
         "tokens/s: all tokens over the span from the first send to the last token."),
        ("Sessions", shown(metrics.sessions), "As above, per session; decode_tokens_per_s leaves the prefill out."),
        ("Where a token's time goes", shown(metrics.composition),
         "Mean per decode token, summed over the hops of its final attempt; `other` is what the hops do not "
         "account for (head and sampling at the user node, decoding, failed attempts)."),
        ("Hops", shown(with_hop_names(metrics.hops, data.nodes)),
         "`rtt`: offset-free round trip (T4−T1)−(T3−T2). `owd_*`: one-way delays corrected by the host pair's "
         "clock offset, each ± `owd_uncertainty`. `serialize` … `compute`: means per frame."),
        ("Clock offsets", shown(with_hop_names(metrics.offsets, data.nodes)),
         "clock(dst) − clock(src), from the intersection of the per-frame bounds [T3−T4, T2−T1]: the true offset "
         "lies within ± uncertainty whatever the path asymmetry. A clock that stepped mid-run (bounds no single "
         "offset meets) splits its pairs into `segment`s from `from_mono_ns` on, each with its own offset, and "
         "`consistent` is False for them."),
        ("Faults", shown(metrics.faults.drop(columns="effective_wall_ns")),
         "Detection: fault in effect → first `peer_failed` naming the node. Reroute: → next token of the session. "
         "Both compare the control host's clock with the nodes' (exact on one host, ± NTP offset otherwise)."),
    ]
    if metrics.quality is not None:
        quality = metrics.quality.assign(text=metrics.quality["text"].map(cell),
                                         baseline_text=metrics.quality["baseline_text"].fillna("").map(cell))
        sections.append((f"Quality against the baseline `{baseline}`", shown(quality),
                         "first_divergence: index of the first token that differs (–: identical). agreement: share "
                         "of positions with the same token (missing tokens disagree). ⏎ marks a newline, ⇥ a tab."))
    return sections


def summary_json(metrics: Metrics, data: RunData, baseline: Path | None, written: dict[str, list[Path]]) -> dict:
    """Machine-readable metrics (ns, indices), the figures and the report they belong to."""
    info = data.info

    def records(frame: pd.DataFrame | None) -> list | None:
        return None if frame is None else json.loads(frame.drop(columns="run_id").to_json(orient="records"))

    return {
        "run_id": info.run_id,
        "label": info.label,
        "complete": info.complete,
        "baseline": None if baseline is None else str(baseline),
        "run": records(metrics.runs)[0],  # _load_with_tokens guarantees one row
        "sessions": records(metrics.sessions),
        "composition": (records(metrics.composition) or [None])[0],  # None: no decode step
        "hops": records(metrics.hops),
        "clock_offsets": records(metrics.offsets),
        "faults": records(metrics.faults),
        "quality": records(metrics.quality),
        "report": REPORT,
        "figures": [str(p.relative_to(info.path)) for paths in written.values() for p in paths],
    }
