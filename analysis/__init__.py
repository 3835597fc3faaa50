"""JARVIS analysis: run directories (docs/run-directory.md) to tables, metrics, figures and reports.

Modules, one concern each:

- ``load``: run directories to tidy DataFrames, cached as Parquet inside the run.
- ``timing``: offset-free round trips, clock offsets and one-way delays from T1..T4.
- ``metrics``: latency, throughput, per-hop, per-fault and quality figures.
- ``figures``: matplotlib figures (headless, PNG and PDF).
- ``report``: ``analyze`` (report.md, figures, analysis.json, terminal table).
- ``compare``: several runs side by side.
- ``tables``: ns-to-ms and Markdown formatting shared by report and compare.
- ``synth``: synthetic run directories with known answers, for tests and benchmarks.

Nothing is imported here: ``import analysis`` stays cheap (no matplotlib), and the
module ``analysis.load`` is not shadowed by its function ``load``.  Start with
``from analysis.load import load``.
"""
