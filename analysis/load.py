"""Run directories to tidy pandas DataFrames, cached as Parquet inside the run.

The contract is :mod:`payload.schema` (documented in docs/run-directory.md); this
module reads its tables with its column names and dtypes and adds a few derived
columns.  Every table starts with ``run_id`` so that many runs concatenate into one
frame and group cleanly.

Tables: the schema's columns and dtypes (the ``*_DTYPES`` mappings below), plus:

- ``tokens``: ``degraded`` (bool, nodes_out non-empty) and ``n_layers`` (int64, layers applied).
- ``hops``: as hops.csv.
- ``faults``: ``fault`` (int64, row number within the run: a stable id for the fault).
- ``nodes``: as nodes.csv; ``peak_rss_bytes`` is nullable (a killed node may report none).
- ``links``: as links.csv.
- ``events``: the events no table tabulates (the schema's ``CONTROL_EVENTS``) of every
  ``nodes/<name>/events.jsonl``, with ``host`` (the directory name) and ``detail`` (JSON
  of the fields not given a column).  Data-plane events (recv, compute, ack, token) are
  left out: hops.csv and tokens.csv already tabulate them, and parsing three JSON lines
  per hop would dominate load time.

String columns hold "" (never NaN) where the CSV cell is empty, so ``nodes_out == ""``
means "no node out".  The cache is ``<run>/.analysis-cache/<table>.parquet``; each file
records the size and mtime of its sources and ``CACHE_VERSION``, and is rebuilt when any
of them changes.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from payload.schema import CONTROL_EVENTS, EVENTS_FRAME, RUN_FILES, TABLES, RunDirError

CACHE_DIR = ".analysis-cache"
CACHE_VERSION = "2"  # bump when a table's derivation changes, so older caches are rebuilt
_CACHE_KEY = b"jarvis.analysis.sources"

REQUIRED_FILES = tuple(name for name in RUN_FILES if "<" not in name)  # all but the per-node logs

TOKENS_DTYPES: dict[str, str] = TABLES["tokens"].dtypes
HOPS_DTYPES: dict[str, str] = TABLES["hops"].dtypes
FAULTS_DTYPES: dict[str, str] = TABLES["faults"].dtypes
NODES_DTYPES: dict[str, str] = TABLES["nodes"].dtypes
LINKS_DTYPES: dict[str, str] = TABLES["links"].dtypes
EVENTS_DTYPES: dict[str, str] = EVENTS_FRAME.dtypes

_ARROW_TYPES = {"int64": pa.int64(), "Int64": pa.int64(), "str": pa.string(), "float64": pa.float64(),
                "bool": pa.bool_()}
_INDEX_LIST = r"\s*(?:\d+(?:\s+\d+)*)?\s*"  # space-separated node or layer indices, possibly none
_CSV_TABLES = {  # table -> (dtypes, columns holding index lists, values may span lines)
    "tokens": (TOKENS_DTYPES, ("layers", "route", "nodes_out", "rebuilt"), True),
    "hops": (HOPS_DTYPES, (), False),
    "faults": (FAULTS_DTYPES, (), True),
    "nodes": (NODES_DTYPES, ("layers",), True),
    "links": (LINKS_DTYPES, (), True),
}
_TABLE_NAMES = ("tokens", "hops", "faults", "nodes", "links", "events")
_CONTROL_LINE = re.compile(rb'"ev"\s*:\s*"(?:' + b"|".join(e.encode() for e in CONTROL_EVENTS) + rb')"')
_EVENT_REQUIRED = ("ev", "node", "wall_ns", "mono_ns")


@dataclass(frozen=True)
class RunInfo:
    """The JSON/YAML side of one run, plus where it lives."""

    run_id: str
    path: Path
    summary: dict
    scenario: dict
    testbed: dict
    versions: dict
    layer_nodes: int
    missing_event_logs: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.summary.get("complete") is True

    @property
    def label(self) -> str:
        """A short name for legends and tables: scenario, testbed kind, node count."""
        scenario = self.summary.get("scenario")
        name = scenario if isinstance(scenario, str) else self.scenario.get("name", self.run_id)
        return f"{name} · {self.testbed.get('kind', '?')} · {self.layer_nodes} nodes"


@dataclass(frozen=True)
class RunData:
    """The tables of one or many runs; every frame has a ``run_id`` column."""

    runs: dict[str, RunInfo]
    tokens: pd.DataFrame
    hops: pd.DataFrame
    faults: pd.DataFrame
    nodes: pd.DataFrame
    links: pd.DataFrame
    events: pd.DataFrame

    @property
    def info(self) -> RunInfo:
        """The run's info when exactly one run is loaded (per-run figures and reports need one)."""
        if len(self.runs) != 1:
            raise ValueError(f"{len(self.runs)} runs are loaded; pick one with .select(run_id)")
        return next(iter(self.runs.values()))

    def select(self, run_id: str) -> RunData:
        """The tables of one of the loaded runs."""
        if run_id not in self.runs:
            raise KeyError(f"run {run_id!r} is not loaded (loaded: {', '.join(self.runs)})")
        frames = {name: _rows_of(getattr(self, name), run_id) for name in _TABLE_NAMES}
        return RunData(runs={run_id: self.runs[run_id]}, **frames)


def load(
    runs: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    cache: bool = True,
    allow_incomplete: bool = False,
) -> RunData:
    """Load one run directory or several into one RunData.

    ``cache=False`` neither reads nor writes the Parquet cache.  An interrupted run
    (``summary.json`` with ``complete`` not true) is refused unless ``allow_incomplete``,
    so that partial numbers are never reported by accident.
    """
    paths = [Path(runs)] if isinstance(runs, (str, os.PathLike)) else [Path(p) for p in runs]
    if not paths:
        raise ValueError("no run directory given")
    infos: dict[str, RunInfo] = {}
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in _TABLE_NAMES}
    for path in paths:
        info, frames = _load_run(path, cache=cache, allow_incomplete=allow_incomplete)
        if info.run_id in infos:
            raise RunDirError(f"{path} and {infos[info.run_id].path} have the same run_id {info.run_id!r}")
        infos[info.run_id] = info
        for name, frame in frames.items():
            tables[name].append(frame)
    return RunData(runs=infos, **{name: _concat(frames) for name, frames in tables.items()})


def latest_run(root: str | os.PathLike | None = None) -> Path:
    """The most recently written run directory under ``root`` (default: the first ``runs/`` found in the
    working directory or above it, so notebooks/ finds the repository's runs/).

    "Written" is when its ``summary.json`` was (a run's last file, renamed into place whole); directories
    without one (a skip study, a ``DIR.partial/`` still being collected) are not runs.
    """
    if root is None:
        here = Path.cwd().resolve()
        found = next((d / "runs" for d in (here, *here.parents) if (d / "runs").is_dir()), None)
        if found is None:
            raise RunDirError(f"no runs/ directory in {here} or above it: run `make demo` (or `fab experiment`) "
                              "first, or set RUN_DIR")
        root = found
    root = Path(root)
    runs = [d for d in root.iterdir() if not d.name.endswith(".partial") and (d / "summary.json").is_file()] \
        if root.is_dir() else []
    if not runs:
        raise RunDirError(f"no run directory in {root}: run `make demo` (or `fab experiment`) first, or set RUN_DIR")
    return max(runs, key=lambda d: (d / "summary.json").stat().st_mtime_ns)


def _load_run(path: Path, *, cache: bool, allow_incomplete: bool) -> tuple[RunInfo, dict[str, pd.DataFrame]]:
    _check_layout(path)
    summary = _read_json(path / "summary.json")
    if summary.get("complete") is not True and not allow_incomplete:
        raise RunDirError(
            f"{path / 'summary.json'} says complete: {summary.get('complete')!r} (the run was interrupted); "
            "pass allow_incomplete=True to analyse what it has"
        )
    run_id = str(summary.get("run_id") or path.name)
    frames = {name: _table(path, name, use_cache=cache) for name in _TABLE_NAMES}
    for frame in frames.values():
        frame.insert(0, "run_id", run_id)
    names = frames["nodes"]["name"]
    info = RunInfo(
        run_id=run_id,
        path=path,
        summary=summary,
        scenario=_read_yaml(path / "scenario.yaml"),
        testbed=_read_json(path / "testbed.json"),
        versions=_read_json(path / "versions.json"),
        layer_nodes=int((frames["nodes"]["index"] > 0).sum()),
        missing_event_logs=tuple(n for n in names if not (path / "nodes" / n / "events.jsonl").is_file()),
    )
    return info, frames


def _check_layout(path: Path) -> None:
    if not path.is_dir():
        partial = path.with_name(path.name + ".partial")
        hint = f"; {partial} exists: that run was interrupted" if partial.is_dir() else ""
        raise RunDirError(f"{path}: no such run directory{hint}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise RunDirError(
            f"{path} is not a complete run directory: missing {', '.join(missing)} (docs/run-directory.md)"
        )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _read_yaml(path: Path) -> dict:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RunDirError(f"{path}: not valid YAML ({exc})") from exc
    return value if isinstance(value, dict) else {}


def _sources(run: Path, name: str) -> list[Path]:
    if name == "events":
        return sorted(run.glob("nodes/*/events.jsonl"))
    return [run / f"{name}.csv"]


def _table(run: Path, name: str, *, use_cache: bool) -> pd.DataFrame:
    sources = _sources(run, name)
    if not use_cache:
        return _parse(name, sources)
    stamp = _stamp(run, sources)
    cached = run / CACHE_DIR / f"{name}.parquet"
    if _stamp_of(cached) == stamp:
        return pd.read_parquet(cached)
    frame = _parse(name, sources)
    _write_cache(cached, frame, stamp)
    return frame


def _stamp(run: Path, sources: list[Path]) -> bytes:
    """What the cache must match: loader version plus each source's name, size and mtime."""
    stats = [(p, p.stat()) for p in sources]
    entries = [[str(p.relative_to(run)), st.st_size, st.st_mtime_ns] for p, st in stats]
    return json.dumps({"version": CACHE_VERSION, "sources": entries}).encode()


def _stamp_of(cached: Path) -> bytes | None:
    try:
        metadata = pq.read_schema(cached).metadata or {}
    except (OSError, pa.ArrowInvalid):  # absent or unreadable: rebuild it
        return None
    return metadata.get(_CACHE_KEY)


def _write_cache(cached: Path, frame: pd.DataFrame, stamp: bytes) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _CACHE_KEY: stamp})
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(exist_ok=True)
        strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        pq.write_table(table, tmp, use_dictionary=strings)  # dictionaries pay off for strings only (4x faster)
        os.replace(tmp, cached)  # readers never see a half-written cache
    except OSError as exc:
        warnings.warn(
            f"cannot write the analysis cache {cached} ({exc}); the CSVs will be parsed again next time", stacklevel=4
        )


def _parse(name: str, sources: list[Path]) -> pd.DataFrame:
    if name == "events":
        return _read_events(sources)
    dtypes, index_lists, multiline = _CSV_TABLES[name]
    frame = _read_csv(sources[0], dtypes, multiline=multiline, absent=TABLES[name].absent)
    for column in index_lists:
        _check_index_list(frame, column, sources[0])
    if name == "tokens":
        frame["degraded"] = frame["nodes_out"].str.strip() != ""
        frame["n_layers"] = frame["layers"].str.count(r"\d+").astype("int64")
    elif name == "faults":
        frame.insert(0, "fault", pd.RangeIndex(len(frame), dtype="int64"))
    return frame


def _read_csv(path: Path, dtypes: dict[str, str], *, multiline: bool, absent: dict[str, str] | None = None
              ) -> pd.DataFrame:
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=multiline),
            convert_options=pacsv.ConvertOptions(
                column_types={c: _ARROW_TYPES[d] for c, d in dtypes.items()}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        raise RunDirError(f"{path}: {exc}") from exc
    older = {c: v for c, v in (absent or {}).items() if c not in table.column_names}  # a run from before them
    missing = [c for c in dtypes if c not in table.column_names and c not in older]
    if missing:
        raise RunDirError(f"{path} lacks column(s) {', '.join(missing)} (docs/run-directory.md)")
    for column, dtype in dtypes.items():
        if dtype == "int64" and column not in older and table.column(column).null_count:
            raise RunDirError(f"{path}: column {column} has empty cells; the contract needs an integer in every row")
    return table.to_pandas().assign(**older)[list(dtypes)].astype(dtypes)


def _check_index_list(frame: pd.DataFrame, column: str, path: Path) -> None:
    bad = ~frame[column].str.fullmatch(_INDEX_LIST)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise RunDirError(
            f"{path}: column {column} must hold space-separated indices; row {row + 1} has {frame[column].iat[row]!r}"
        )


def _read_events(sources: list[Path]) -> pd.DataFrame:
    """Control-plane events of every node log; a torn last line (node killed mid-write) is skipped."""
    rows = []
    for source in sources:
        data = source.read_bytes()
        for match in _CONTROL_LINE.finditer(data):
            start = data.rfind(b"\n", 0, match.start()) + 1
            end = data.find(b"\n", match.end())
            try:
                record = json.loads(data[start : len(data) if end < 0 else end])
            except json.JSONDecodeError:
                continue
            rows.append(_event_row(source, record))
    frame = pd.DataFrame(rows, columns=list(EVENTS_DTYPES)).astype(EVENTS_DTYPES)
    return frame.sort_values("wall_ns", kind="stable", ignore_index=True)


def _event_row(source: Path, record: dict) -> dict:
    missing = [key for key in _EVENT_REQUIRED if record.get(key) is None]
    if missing:
        raise RunDirError(f"{source}: a {record.get('ev')!r} event lacks {', '.join(missing)}")
    row: dict = {"host": source.parent.name}
    for column, dtype in EVENTS_DTYPES.items():
        if column in ("host", "detail"):
            continue
        value = record.pop(column, None)
        row[column] = ("" if value is None else str(value)) if dtype == "str" else value
    row["detail"] = json.dumps(record, sort_keys=True) if record else ""
    return row


def _rows_of(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    return frame[frame["run_id"] == run_id].reset_index(drop=True)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def indices(text: str) -> tuple[int, ...]:
    """The integers of a space-separated index list (layers, route, nodes_out)."""
    return tuple(int(part) for part in text.split())
