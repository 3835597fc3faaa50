"""analysis.report and analysis.compare: what `fab analyze` and `fab compare` write and print."""

from __future__ import annotations

import json
import shutil
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from analysis.compare import compare
from analysis.load import RunDirError
from analysis.report import FIGURE_CAPTIONS, SUMMARY, analyze, summary_table


@pytest.fixture(scope="module")
def analysed(runs, tmp_path_factory) -> tuple[Path, str]:
    """Analyse a copy of the faulted run against its baseline, once: (report path, printed text)."""
    run = tmp_path_factory.mktemp("analysed") / "faulted"
    shutil.copytree(runs.faulted, run)
    printed = StringIO()
    with redirect_stdout(printed):
        report = analyze(run, runs.baseline)
    return report, printed.getvalue()


class TestAnalyze:
    def test_writes_the_report_with_every_figure_as_png_and_pdf(self, analysed):
        report, _ = analysed
        assert report.name == "report.md" and report.is_file()
        text = report.read_text(encoding="utf-8")
        for name in FIGURE_CAPTIONS:
            for suffix in ("png", "pdf"):
                figure = report.parent / "figures" / f"{name}.{suffix}"
                assert figure.stat().st_size > 1000, figure
            assert f"figures/{name}.png" in text
        for heading in ("## Summary", "## Hops", "## Clock offsets", "## Faults", "## Quality against the baseline"):
            assert heading in text

    def test_the_summary_json_carries_the_known_answers(self, analysed, runs):
        report, _ = analysed
        summary = json.loads((report.parent / SUMMARY).read_text(encoding="utf-8"))
        assert summary["run_id"] == "faulted" and summary["complete"] is True
        assert summary["run"]["tokens"] == 24
        fault = summary["faults"][0]
        assert fault["detection_ns"] == runs.truth.detection_ns[0]
        assert fault["degraded_tokens"] == runs.truth.degraded_tokens[0]
        divergence = {q["session"]: q["first_divergence"] for q in summary["quality"]}
        assert divergence == runs.truth.first_divergence
        assert len(summary["figures"]) == 2 * len(FIGURE_CAPTIONS)

    def test_prints_the_summary_table(self, analysed):
        _, printed = analysed
        assert "JARVIS run faulted" in printed and "p0-r0" in printed and "│ all" in printed
        assert "fault: kill node2 at token:4; detected after" in printed

    def test_a_missing_run_directory_is_a_clear_error(self, tmp_path):
        with pytest.raises(RunDirError, match="no such run directory"):
            analyze(tmp_path / "nope")


def test_summary_table_lists_sessions_and_the_run(runs):
    table = summary_table(runs.baseline)
    lines = table.splitlines()
    assert lines[0].startswith("JARVIS run baseline: synthetic") and "(complete)" in lines[0]
    assert sum(line.startswith("│ p") for line in lines) == 2
    assert "fault:" not in table


def test_compare_writes_a_report_a_figure_and_prints_a_row_per_run(runs, tmp_path, capsys):
    report = compare([runs.faulted, runs.baseline], out=tmp_path / "cmp")
    assert report == tmp_path / "cmp" / "compare.md"
    assert (tmp_path / "cmp" / "figures" / "comparison.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "figures" / "comparison.pdf").is_file()
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text(encoding="utf-8"))
    assert set(summary["runs"]) == {"faulted", "baseline"}
    printed = capsys.readouterr().out
    assert "(faulted)" in printed and "(baseline)" in printed
