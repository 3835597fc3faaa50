"""Rewrite the tables of docs/run-directory.md from payload/schema.py (its prose above them is kept).

    PYTHONPATH=. .venv/bin/python scripts/run-directory-tables.py

tests/test_run_contract.py fails when the doc and the schema disagree; this puts them back in step.
"""

from pathlib import Path

from payload.schema import EVENTS, EVENTS_FRAME, SUMMARY_KEYS, TABLES

DOC = Path(__file__).resolve().parent.parent / "docs" / "run-directory.md"
REACHES = {"tokens": "tokens.csv", "hops": "hops.csv", "events": "events frame"}
FIRST_TABLE = "## tokens.csv"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def tables() -> str:
    parts = []
    for t in TABLES.values():
        parts.append(f"## {t.file}\n{t.doc[0].upper() + t.doc[1:]}.\n\n"
                     + table([(c.name, c.dtype, c.doc) for c in t.columns], ("column", "dtype", "meaning")))
    parts.append("## Event log (nodes/<name>/events.jsonl)\n"
                 "Every line is a JSON object with `ev`, `node` (index), `wall_ns` and `mono_ns`, then the event's "
                 "fields.\nA node SIGKILLed mid-write leaves at most a torn last line, which readers skip.\n\n"
                 + table([(f"`{k.name}`", ", ".join(sorted(k.emitters)), REACHES[k.table],
                           ", ".join(f.name if f.required else f"[{f.name}]" for f in k.fields))
                          for k in EVENTS.values()], ("event", "emitted by", "reaches", "fields (optional in brackets)")))
    parts.append("## The events frame (analysis)\n`analysis.load` tabulates the events that reach no table above, "
                 "one row per event.\n\n" + table([(c.name, c.dtype, c.doc) for c in EVENTS_FRAME.columns],
                                                  ("column", "dtype", "meaning")))
    parts.append("## summary.json\n" + table(list(SUMMARY_KEYS.items()), ("key", "meaning")))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(text[:text.index(FIRST_TABLE)] + tables())
    print(f"rewrote the tables of {DOC}")
