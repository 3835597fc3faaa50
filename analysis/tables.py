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
    """A GitHub Markdown table ("_none_" for no rows); missing values show as "–".

    Cells go in as Python objects so that integer columns stay integers next to float ones.
    """
    if frame.empty:
        return "_none_"
    cells = frame.astype(object).where(frame.notna(), None)
    return cells.to_markdown(index=False, floatfmt=".2f", missingval="–")


def with_hop_names(frame: pd.DataFrame, nodes: pd.DataFrame) -> pd.DataFrame:
    """Put a readable "hop" column (names, src → dst) in front of a frame keyed by src and dst indices."""
    names = dict(zip(nodes["index"], nodes["name"], strict=True))
    hop = [f"{names.get(s, s)} → {names.get(d, d)}" for s, d in zip(frame["src"], frame["dst"], strict=True)]
    return frame.drop(columns=["src", "dst"]).assign(hop=hop)[["hop", *frame.columns.drop(["src", "dst"])]]


def cell(text: str) -> str:
    """Free text made safe for one Markdown table cell (⏎ marks a newline, ⇥ a tab)."""
    return text.replace("|", "\\|").replace("\n", "⏎").replace("\t", "⇥")
