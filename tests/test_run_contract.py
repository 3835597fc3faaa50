"""The run-data contract is declared once (payload/schema.py): the docs, the writers and the readers agree with it.

Parts of this were drifting apart before the schema existed (docs listing events no node emitted, analysis
ignoring events the user node did emit, a synthetic generator writing columns nodes never wrote); each test
here fails on such a drift.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiment.collect import write_tables
from experiment.deploy import Deployment
from experiment.synth import Kill, Spec, write_run
from payload.events import EventLog, read_events
from payload.schema import EVENTS, EVENTS_FRAME, RUN_FILES, SUMMARY_KEYS, TABLES, EventSchemaError, RunDirError

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "run-directory.md"


def doc_sections() -> dict[str, list[str]]:
    """First cells of the Markdown table rows under each ``## `` heading of the run-directory doc."""
    sections: dict[str, list[str]] = {}
    current = "(top)"
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        elif line.startswith("|") and not line.startswith("|---"):
            first = line.split("|")[1].strip()
            sections.setdefault(current, []).append(first)
    return {name: rows[1:] for name, rows in sections.items()}  # drop each table's header row


class TestTheDocMatchesTheSchema:
    def test_every_table_lists_exactly_the_schema_columns_in_order(self):
        sections = doc_sections()
        for table in TABLES.values():
            assert sections[table.file] == table.names, table.file

    def test_every_event_kind_is_documented_and_nothing_else(self):
        (events_heading,) = [name for name in doc_sections() if name.startswith("Event log")]
        documented = [cell.strip("`") for cell in doc_sections()[events_heading]]
        assert documented == list(EVENTS)

    def test_the_documented_fields_of_each_event_are_the_schema_fields(self):
        rows = [line for line in DOC.read_text().splitlines() if re.match(r"^\| `[a-z_]+` \| (layer|user)", line)]
        for row in rows:
            name, _, _, fields = (cell.strip() for cell in row.strip("|").split("|"))
            kind = EVENTS[name.strip("`")]
            assert fields.replace("[", "").replace("]", "").split(", ") == [f.name for f in kind.fields] or \
                (fields == "" and not kind.fields), name

    def test_the_events_frame_summary_and_files_are_documented(self):
        sections = doc_sections()
        assert sections["The events frame (analysis)"] == EVENTS_FRAME.names
        assert sections["summary.json"] == list(SUMMARY_KEYS)
        listed = [cell.strip("`") for cell in sections["(top)"]]
        assert [f for f in listed if f in RUN_FILES] == list(RUN_FILES)


def _log_calls(path: Path) -> list[tuple[int, str, set[str]]]:
    """``<anything>.log("kind", field=...)`` calls in a module: (line, kind, field names)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "log"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            fields = {k.arg for k in node.keywords if k.arg is not None}
            if any(k.arg is None for k in node.keywords):
                fields.add("**")
            calls.append((node.lineno, node.args[0].value, fields))
    return calls


class TestWritersUseTheSchema:
    @pytest.mark.parametrize("module", sorted((ROOT / "payload").glob("*.py")), ids=lambda p: p.name)
    def test_every_event_the_payload_logs_is_declared_with_its_fields(self, module):
        for line, kind, fields in _log_calls(module):
            assert kind in EVENTS, f"{module.name}:{line} logs undeclared event {kind!r}"
            if "**" not in fields:
                declared = EVENTS[kind]
                assert declared.required <= fields <= declared.allowed, (
                    f"{module.name}:{line} {kind}: missing {declared.required - fields}, "
                    f"undeclared {fields - declared.allowed}")

    def test_the_event_log_refuses_an_undeclared_kind_field_type_or_emitter(self, tmp_path):
        layer, user = EventLog(tmp_path / "n.jsonl", 3), EventLog(tmp_path / "u.jsonl", 0)
        with pytest.raises(EventSchemaError, match="undeclared event kind 'reroute'"):
            layer.log("reroute", nodes_out=[2])
        with pytest.raises(EventSchemaError, match=r"undeclared \['detect_ns'\]"):
            layer.log("peer_failed", peer=2, kind="silent", reason="x", detect_ns=5)
        with pytest.raises(EventSchemaError, match="peer=.2. is not int"):
            layer.log("peer_lost", peer="2", reason="x")
        with pytest.raises(EventSchemaError, match="not one a user node emits"):
            user.log("peer_failed", peer=2, kind="silent", reason="x")
        layer.log("peer_lost", peer=2, reason="connection closed")
        assert [e["ev"] for e in read_events(tmp_path / "n.jsonl")] == ["peer_lost"]
        assert not (tmp_path / "u.jsonl").read_text()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("synth") / "run"
    write_run(run, Spec(nodes=3, layers=6, prompts=2, tokens=8, kills=(Kill(node=2, token=3),), seed=3))
    return run


def _recollect(run: Path, into: Path) -> Path:
    """The tables of ``run`` written again from its raw logs alone, into ``into``."""
    shutil.copytree(run / "nodes", into / "nodes")
    faults = pd.read_csv(run / "faults.csv", keep_default_na=False).to_dict("records")
    summary = json.loads((run / "summary.json").read_text())
    write_tables(into, Deployment(**json.loads((run / "deployment.json").read_text())),
                 testbed_desc=json.loads((run / "testbed.json").read_text()),
                 versions_info=json.loads((run / "versions.json").read_text()), faults=faults,
                 scenario=yaml.safe_load((run / "scenario.yaml").read_text()),
                 started_wall_ns=summary["started_wall_ns"], complete=summary["complete"],
                 user_exit=summary["user_exit_code"])
    return into


class TestCollection:
    def test_collecting_the_same_logs_twice_gives_identical_tables_and_summary(self, synthetic, tmp_path):
        first = _recollect(synthetic, tmp_path / "first" / synthetic.name)
        second = _recollect(synthetic, tmp_path / "second" / synthetic.name)
        for name in ["summary.json", *(t.file for t in TABLES.values())]:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
            assert (first / name).read_bytes() == (synthetic / name).read_bytes(), name

    def test_the_summary_ends_at_the_last_event_not_at_collection_time(self, synthetic):
        summary = json.loads((synthetic / "summary.json").read_text())
        last = max(e["wall_ns"] for log in synthetic.glob("nodes/*/events.jsonl") for e in read_events(log))
        assert summary["ended_wall_ns"] == last
        assert set(summary) == set(SUMMARY_KEYS)

    def test_a_node_whose_log_was_not_collected_reports_no_peak_memory(self, synthetic, tmp_path):
        run = tmp_path / "lost"
        shutil.copytree(synthetic, run)
        (run / "nodes" / "node2" / "events.jsonl").unlink()
        (run / "nodes" / "node2" / "COLLECT_ERROR").write_text("TestbedError: node2: ssh failed\n")
        again = _recollect(run, tmp_path / "again" / "lost")
        nodes = pd.read_csv(again / "nodes.csv", keep_default_na=False)
        assert nodes.loc[nodes["name"] == "node2", "peak_rss_bytes"].tolist() == [""]
        assert (nodes.loc[nodes["name"] != "node2", "peak_rss_bytes"] != "").all()


def test_a_run_written_before_a_column_was_added_still_loads_with_its_documented_value(synthetic, tmp_path):
    """tokens.csv gained ``bridges``, ``chunks`` and ``head_batch`` after runs were first written: an older run
    reads as bridging nothing, sending every step in one frame and computing every head alone; a column that was
    always there stays required."""
    from analysis.load import load
    from experiment.replay import read_table

    assert TABLES["tokens"].absent == {"bridges": "", "chunks": "", "head_batch": ""}
    run = tmp_path / "older"
    shutil.copytree(synthetic, run)
    tokens = pd.read_csv(run / "tokens.csv", keep_default_na=False)
    tokens.drop(columns=["bridges", "chunks", "head_batch"]).to_csv(run / "tokens.csv", index=False)
    for column in ("bridges", "chunks", "head_batch"):
        assert (load([run]).tokens[column] == "").all()
        assert (read_table(run, "tokens")[column] == "").all()
    tokens.drop(columns=["bridges", "rebuilt"]).to_csv(run / "tokens.csv", index=False)
    with pytest.raises(RunDirError, match="lacks column.*rebuilt"):
        read_table(run, "tokens")
