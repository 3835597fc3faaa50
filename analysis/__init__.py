"""JARVIS analysis: run directories (docs/run-directory.md) to tables, metrics, figures and reports.

Analysis reads run directories only: it imports nothing of JARVIS but the run-data
schema (:mod:`payload.schema`).  Synthetic runs with known answers for its tests
come from :mod:`experiment.synth`, written through the same collection code as
real runs.

Modules, one concern each:

- ``load``: run directories to tidy DataFrames, cached as Parquet inside the run.
- ``timing``: offset-free round trips, clock offsets and one-way delays from T1..T4.
- ``metrics``: latency, throughput, per-hop, per-fault and quality figures.
- ``figures``: matplotlib figures (headless, PNG and PDF).
- ``report``: ``analyze`` (report.md, figures, analysis.json, terminal table).
- ``compare``: several runs side by side.
- ``tables``: ns-to-ms and Markdown formatting shared by report and compare.

Nothing is imported here: ``import analysis`` stays cheap (no matplotlib), and the
module ``analysis.load`` is not shadowed by its function ``load``.  Start with
``from analysis.load import load``.
"""
