"""analysis.load: tables and dtypes, the Parquet cache, and clear errors for broken run directories."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import analysis.load as loader
from analysis.load import CACHE_DIR, EVENTS_DTYPES, HOPS_DTYPES, TOKENS_DTYPES, RunDirError, load


def later(path: Path, mtime_ns: int) -> None:
    """Move a rewritten file's mtime past ``mtime_ns``, as a later write would on a coarse clock."""
    os.utime(path, ns=(mtime_ns + 1_000_000_000, mtime_ns + 1_000_000_000))


def rewrite(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` in a file by ``new``."""
    mtime = path.stat().st_mtime_ns
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")
    later(path, mtime)


def edit_csv(path: Path, row: int, column: str, value: str) -> None:
    """Set one cell of a CSV file, keeping every other cell as written."""
    mtime = path.stat().st_mtime_ns
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)
    later(path, mtime)


class TestTables:
    def test_contract_columns_have_their_documented_dtypes(self, runs):
        data = load(runs.faulted)
        for frame, dtypes in ((data.tokens, TOKENS_DTYPES), (data.hops, HOPS_DTYPES), (data.events, EVENTS_DTYPES)):
            assert frame.columns[0] == "run_id"
            for column, dtype in dtypes.items():
                assert frame[column].dtype == pd.Series([], dtype=dtype).dtype, column
        assert data.tokens["degraded"].dtype == bool and data.tokens["n_layers"].dtype == "int64"
        # Nullable: a node whose log could not be collected reports none (tests/test_collect.py); a killed node
        # reports what it logged before it was killed.
        assert data.nodes["peak_rss_bytes"].dtype == "Int64" and data.nodes["peak_rss_bytes"].notna().all()

    def test_text_with_newlines_quotes_and_commas_survives(self, runs):
        texts = set(load(runs.faulted).tokens["text"])
        assert {"\n", ' "edge"', ",", "\t"} <= texts

    def test_empty_cells_are_empty_strings(self, runs):
        tokens = load(runs.faulted).tokens
        assert (tokens.loc[~tokens["degraded"], "nodes_out"] == "").all()

    def test_events_keep_control_events_only_with_other_fields_as_json(self, runs):
        events = load(runs.faulted).events
        assert set(events["ev"]) <= set(loader.CONTROL_EVENTS)
        assert {"start", "ready", "peer_failed", "node_out", "retry", "session_end", "stop"} <= set(events["ev"])
        out = events[events["ev"] == "node_out"].iloc[0]
        assert out["peer"] == "2" and out["kind"] == "silent"
        assert json.loads(out["detail"]) == {"critical": False, "layers": [2, 3], "reporter": 1}
        assert events["wall_ns"].is_monotonic_increasing

    def test_many_runs_share_frames_keyed_by_run_id(self, runs):
        data = load([runs.faulted, runs.baseline])
        assert set(data.runs) == {"faulted", "baseline"}
        assert set(data.hops["run_id"]) == {"faulted", "baseline"}
        one = data.select("baseline")
        assert one.info.run_id == "baseline" and set(one.tokens["run_id"]) == {"baseline"}
        with pytest.raises(ValueError, match="2 runs are loaded"):
            data.info

    def test_two_runs_with_one_run_id_are_refused(self, runs, tmp_path):
        shutil.copytree(runs.baseline, tmp_path / "copy")
        with pytest.raises(RunDirError, match="same run_id 'baseline'"):
            load([runs.baseline, tmp_path / "copy"])


class TestCache:
    def test_a_second_load_reads_the_cache_without_parsing(self, small_run, monkeypatch):
        first = load(small_run)
        assert sorted(p.name for p in (small_run / CACHE_DIR).iterdir()) == [
            f"{name}.parquet" for name in sorted(("tokens", "hops", "faults", "nodes", "links", "events"))]

        def refuse(*_):
            raise AssertionError("parsed although the cache is fresh")

        monkeypatch.setattr(loader, "_parse", refuse)
        second = load(small_run)
        for name in ("tokens", "hops", "faults", "nodes", "links", "events"):
            pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))

    def test_a_changed_source_rebuilds_only_its_table(self, small_run, monkeypatch):
        load(small_run)
        edit_csv(small_run / "tokens.csv", 0, "text", "CHANGED")
        parsed = []
        real_parse = loader._parse
        monkeypatch.setattr(loader, "_parse", lambda name, sources: parsed.append(name) or real_parse(name, sources))
        data = load(small_run)
        assert parsed == ["tokens"]
        assert data.tokens["text"].iat[0] == "CHANGED"

    def test_a_new_event_line_invalidates_the_events_table(self, small_run):
        before = load(small_run).events
        log = small_run / "nodes" / "node2" / "events.jsonl"
        with log.open("a", encoding="utf-8") as handle:
            handle.write('{"ev": "reject", "node": 2, "wall_ns": 1, "mono_ns": 1, "reason": "bad hmac", "peer": 1}\n')
        after = load(small_run).events
        assert len(after) == len(before) + 1
        assert after.iloc[0][["ev", "reason", "peer"]].tolist() == ["reject", "bad hmac", "1"]

    def test_cache_false_leaves_no_cache(self, small_run):
        load(small_run, cache=False)
        assert not (small_run / CACHE_DIR).exists()


class TestBrokenRunDirectories:
    def test_a_missing_file_is_named(self, small_run):
        (small_run / "hops.csv").unlink()
        (small_run / "links.csv").unlink()
        with pytest.raises(RunDirError, match="missing hops.csv, links.csv"):
            load(small_run)

    def test_a_missing_directory_points_at_its_partial_twin(self, tmp_path):
        (tmp_path / "run.partial").mkdir()
        with pytest.raises(RunDirError, match=r"no such run directory; .*run\.partial exists"):
            load(tmp_path / "run")

    def test_an_interrupted_run_is_refused_unless_allowed(self, small_run):
        summary = small_run / "summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "complete": False}))
        with pytest.raises(RunDirError, match="summary.json says complete: False"):
            load(small_run)
        assert not load(small_run, allow_incomplete=True).info.complete

    def test_a_missing_column_is_named_with_its_file(self, small_run):
        frame = pd.read_csv(small_run / "hops.csv").drop(columns="rtt_ns")
        frame.to_csv(small_run / "hops.csv", index=False)
        with pytest.raises(RunDirError, match=r"hops\.csv lacks column\(s\) rtt_ns"):
            load(small_run)

    def test_an_empty_integer_cell_is_refused(self, small_run):
        edit_csv(small_run / "hops.csv", 3, "positions", "")
        with pytest.raises(RunDirError, match="column positions has empty cells"):
            load(small_run)

    def test_a_malformed_index_list_is_named(self, small_run):
        rewrite(small_run / "nodes.csv", ",0 1,", ",0-1,")
        with pytest.raises(RunDirError, match=r"nodes\.csv: column layers .* '0-1'"):
            load(small_run)

    def test_a_torn_last_event_line_is_skipped(self, small_run):
        log = small_run / "nodes" / "node1" / "events.jsonl"
        with log.open("a", encoding="utf-8") as handle:
            handle.write('{"ev":"stop","node":1,"wall_')
        assert load(small_run).events["ev"].tolist().count("stop") == 2  # user and node2; node1 was killed

    def test_invalid_json_is_named(self, small_run):
        (small_run / "testbed.json").write_text("{")
        with pytest.raises(RunDirError, match=r"testbed\.json: not valid JSON"):
            load(small_run)
