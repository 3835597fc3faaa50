"""Print the run-directory doc's tables from payload/schema.py (paste into docs/run-directory.md; a test checks it).

    PYTHONPATH=. .venv/bin/python scripts/run-directory-tables.py
"""

from payload.schema import EVENTS, EVENTS_FRAME, SUMMARY_KEYS, TABLES

REACHES = {"tokens": "tokens.csv", "hops": "hops.csv", "events": "events frame"}


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


for t in TABLES.values():
    print(f"## {t.file}\n{t.doc[0].upper() + t.doc[1:]}.\n")
    print(table([(c.name, c.dtype, c.doc) for c in t.columns], ("column", "dtype", "meaning")) + "\n")
print("## Event log (nodes/<name>/events.jsonl)\n")
print(table([(f"`{k.name}`", ", ".join(sorted(k.emitters)), REACHES[k.table],
              ", ".join(f.name if f.required else f"[{f.name}]" for f in k.fields)) for k in EVENTS.values()],
            ("event", "emitted by", "reaches", "fields (optional in brackets)")) + "\n")
print("## The events frame (analysis)\n")
print(table([(c.name, c.dtype, c.doc) for c in EVENTS_FRAME.columns], ("column", "dtype", "meaning")) + "\n")
print("## summary.json\n")
print(table(list(SUMMARY_KEYS.items()), ("key", "meaning")))
