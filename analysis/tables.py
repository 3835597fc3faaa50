"""Formatting shared by reports and comparisons: ns to ms, Markdown tables, table cells."""

from __future__ import annotations

import pandas as pd

MS = 1e6


def ms(ns: float) -> str:
    """Nanoseconds as a short ms string ("–" when missing)."""
    return "–" if pd.isna(ns) else f"{ns / MS:.1f}"


def in_ms(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns ending in _ns become ms, renamed to _ms: tables meant to be read."""
    renamed = {c: c.removesuffix("_ns") + "_ms" for c in frame.columns if c.endswith("_ns")}
    out = frame.copy()
    for column in renamed:
        out[column] = out[column] / MS
    return out.rename(columns=renamed)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table, or "_none_" for an empty frame."""
    return frame.to_markdown(index=False, floatfmt=".2f") if len(frame) else "_none_"


def cell(text: str) -> str:
    """Free text made safe for one Markdown table cell (⏎ marks a newline)."""
    return text.replace("|", "\\|").replace("\n", "⏎")
