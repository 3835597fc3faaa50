"""Collect per-node logs and derive the run directory (the contract: payload/schema.py, docs/run-directory.md).

The raw event logs are the data; every table and the summary are derived from
them with the schema's columns, so collecting the same logs twice writes the
same files.  The directory is built in ``<out>.partial`` and renamed into
place only when it is complete, so an interrupted collection never leaves a
half-written run.  :func:`write_tables` is the one writer: real runs reach it
through :func:`write_run_dir` (logs fetched from a testbed), synthetic runs
(:mod:`experiment.synth`) with logs they emitted through the same event writer.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from experiment.deploy import Deployment
from payload.events import read_events
from payload.schema import SESSION_KEYS, TABLES, RunDirError
from testbed.interface import HostInfo, Testbed, TestbedError

Events = dict[int, list[dict]]  # node index -> its events, in log order


def versions() -> dict:
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "jarvis_commit": commit, "platform": platform.platform()}


def fetch_logs(testbed: Testbed, hosts: list[HostInfo], into: Path) -> None:
    """Copy every host's events.jsonl (killed nodes included: their log is on disk) into ``into/nodes/<name>``."""
    for host in hosts:
        target = into / "nodes" / host.name / "events.jsonl"
        try:
            testbed.shell(host).get("events.jsonl", target)
        except Exception as exc:  # one unreachable host must not lose everyone else's logs
            target.parent.mkdir(parents=True, exist_ok=True)
            (target.parent / "COLLECT_ERROR").write_text(f"{type(exc).__name__}: {exc}\n")


def read_logs(run: Path, hosts: list[dict]) -> Events:
    """The events of every host's collected log (none for a host whose log could not be fetched)."""
    events: Events = {}
    for host in hosts:
        log = run / "nodes" / host["name"] / "events.jsonl"
        events[int(host["index"])] = read_events(log) if log.is_file() else []
    return events


def tokens_frame(events: Events) -> pd.DataFrame:
    """tokens.csv: the user node's ``token`` events."""
    columns = TABLES["tokens"].names
    rows = [{c: e.get(c) for c in columns} for e in events.get(0, []) if e["ev"] == "token"]
    return pd.DataFrame(rows, columns=columns)


def hops_frame(events: Events) -> pd.DataFrame:
    """hops.csv: every frame sent across a hop, from the sender's ``ack`` and the receiver's ``recv`` and
    ``compute`` events of it (keyed by receiver, session, step, epoch, sender and first position: the chunks of a
    chunked prefill are frames of one step); see the schema.  Logs from before acks named their first position
    match on the rest."""
    sides: dict[str, dict[tuple, dict]] = {"ack": {}, "recv": {}, "compute": {}}
    for node, evs in events.items():
        for e in evs:
            side = sides.get(e["ev"])
            if side is not None:
                receiver = e["dst"] if e["ev"] == "ack" else node
                side[(receiver, e["session"], e["step"], e["epoch"], e["src"], e.get("pos_start"))] = e
    if sides["ack"] and all(k[-1] is None for k in sides["ack"]):  # an older run: acks did not name it
        sides = {name: {k[:-1] + (None,): e for k, e in side.items()} for name, side in sides.items()}
    columns = TABLES["hops"].names
    keys = list(sides["ack"]) + [k for k in {**sides["recv"], **sides["compute"]} if k not in sides["ack"]]
    rows = []
    for key in keys:
        ack, recv, compute = (sides[name].get(key, {}) for name in ("ack", "recv", "compute"))
        dst, session, step, epoch, src, _ = key
        rows.append({
            **{k: ack.get(k) for k in columns}, "session": session, "step": step, "epoch": epoch, "src": src,
            "dst": dst, "positions": (ack or recv or compute)["positions"], "acked": bool(ack),
            "pos_start": recv.get("pos_start"), "replay_len": recv.get("replay_len"),
            "t2_wall_ns": ack.get("t2_wall_ns", recv.get("t2_wall_ns")),
            "t3_wall_ns": ack.get("t3_wall_ns", recv.get("t3_wall_ns")),
            "queue_ns": compute.get("queue_ns", 0), "compute_ns": compute.get("compute_ns", 0)})
    nullable = {c.name: c.dtype for c in TABLES["hops"].columns if c.dtype in ("Int64", "bool")}
    frame = pd.DataFrame(rows, columns=columns).astype(nullable)
    return frame.sort_values(["session", "step", "epoch", "t1_wall_ns", "t2_wall_ns", "src"], kind="stable",
                             na_position="last").reset_index(drop=True)


def faults_frame(faults: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(faults, columns=TABLES["faults"].names)


def nodes_frame(deployment: Deployment, summary: dict) -> pd.DataFrame:
    placement = deployment.placement_obj()
    rows = []
    for h in deployment.hosts:
        idx = h["index"]
        ranges = placement.ranges_of(idx) if idx else []
        rows.append({
            "index": idx, "name": h["name"], "address": h["address"],
            "layers": " ".join(str(i) for i in range(*placement.slices[idx])) if idx else "",
            "replicas": " ".join(f"{a}-{b - 1}" for a, b in ranges[1:]), "profile": h.get("profile") or "",
            "peak_rss_bytes": summary["peak_rss_bytes"].get(str(idx)),
        })
    return pd.DataFrame(rows, columns=TABLES["nodes"].names).astype({"peak_rss_bytes": "Int64"})


def links_frame(testbed_desc: dict) -> pd.DataFrame:
    """links.csv: each host's access link per direction, as configured (profile name only where the testbed
    does not shape links itself)."""
    rows = []
    for h in testbed_desc.get("hosts", []):
        link = (h.get("extra") or {}).get("link") or {}
        for direction in ("uplink", "downlink"):
            params = link.get(direction) or {}
            rows.append({"node": h["index"], "name": h["name"], "direction": direction,
                         "profile": link.get("name") or h.get("profile") or "", "source": link.get("source", ""),
                         **params})
    return pd.DataFrame(rows, columns=TABLES["links"].names).astype({"queue_pkts": "Int64"})


def summarise(tokens: pd.DataFrame, events: Events, deployment: Deployment, *, scenario: dict, complete: bool,
              started_wall_ns: int, faults: list[dict], user_exit: int | None) -> dict:
    """summary.json, from the events alone (``ended_wall_ns`` is the last event logged, not the clock now)."""
    ends = {e["session"]: e for e in events.get(0, []) if e["ev"] == "session_end"}
    sessions = []
    for sid, group in tokens.groupby("session", sort=False):
        group = group.sort_values("step")
        end = ends.get(sid, {})
        lat = group["latency_ns"]
        decode = lat.iloc[1:] if len(lat) > 1 else lat
        total_s = (group["t_emit_ns"].iloc[-1] - group["t_emit_ns"].iloc[0]) / 1e9
        sessions.append({
            "session": sid, "prompt_index": int(group["prompt_index"].iloc[0]),
            "repeat": int(group["repeat"].iloc[0]), "text": end.get("text", "".join(group["text"])),
            "tokens": int(len(group)), "ttft_ns": int(lat.iloc[0]), "median_token_ns": int(decode.median()),
            "tokens_per_s": float((len(group) - 1) / total_s) if total_s > 0 else None,
            "error": end.get("error"),
        })
    for sid, end in ends.items():
        if end.get("error") and sid not in set(tokens["session"]):
            sessions.append({"session": sid, "prompt_index": None, "repeat": None, "text": "", "tokens": 0,
                             "ttft_ns": None, "median_token_ns": None, "tokens_per_s": None, "error": end["error"]})
    sessions = [{key: s.get(key) for key in SESSION_KEYS} for s in sessions]
    peak = {}
    for node, evs in events.items():
        rss = [e["peak_rss_bytes"] for e in evs if "peak_rss_bytes" in e]
        if rss:
            peak[str(node)] = max(rss)
    ended = max((e["wall_ns"] for evs in events.values() for e in evs), default=started_wall_ns)
    placement = deployment.placement
    return {
        "run_id": None, "scenario": scenario.get("name", ""), "model": deployment.model,
        "testbed": deployment.testbed, "nodes": len(placement["slices"]), "layers_per_node": placement["slices"],
        "policy": deployment.policy,
        "complete": bool(complete and all(not s.get("error") for s in sessions)), "user_exit_code": user_exit,
        "started_wall_ns": started_wall_ns, "ended_wall_ns": ended, "sessions": sessions,
        "peak_rss_bytes": peak, "faults": len(faults), "bytes_shipped": deployment.bytes_shipped,
    }


def write_tables(run: Path, deployment: Deployment, *, testbed_desc: dict, versions_info: dict, faults: list[dict],
                 scenario: dict, started_wall_ns: int, complete: bool, user_exit: int | None) -> dict:
    """Derive every table and JSON file of ``run`` from the logs under ``run/nodes``; return the summary."""
    events = read_logs(run, deployment.hosts)
    tokens = tokens_frame(events)
    tokens.to_csv(run / "tokens.csv", index=False)
    hops_frame(events).to_csv(run / "hops.csv", index=False)
    faults_frame(faults).to_csv(run / "faults.csv", index=False)
    summary = summarise(tokens, events, deployment, scenario=scenario, complete=complete,
                        started_wall_ns=started_wall_ns, faults=faults, user_exit=user_exit)
    summary["run_id"] = run.name.removesuffix(".partial")
    (run / "testbed.json").write_text(json.dumps(testbed_desc, indent=2, default=str))
    nodes_frame(deployment, summary).to_csv(run / "nodes.csv", index=False)
    links_frame(testbed_desc).to_csv(run / "links.csv", index=False)
    (run / "deployment.json").write_text(json.dumps(deployment.public(), indent=2))  # never the key
    (run / "versions.json").write_text(json.dumps(versions_info, indent=2))
    (run / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory JARVIS wrote (complete or not): the only kind it ever replaces."""
    return (path / "summary.json").is_file() or (path / "nodes").is_dir()


def start_partial(out: Path) -> Path:
    """A fresh ``<out>.partial`` to build a run directory in; refuses to touch directories that are not runs."""
    for path in (out, out.with_name(out.name + ".partial")):
        if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_run_dir(path))):
            raise RunDirError(f"refusing to replace {path}: it is not a run directory (no summary.json or "
                              "nodes/); choose another --out")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def publish(partial: Path, out: Path) -> Path:
    """Move a complete ``<out>.partial`` into place (replacing an older run at ``out``); return ``out``."""
    if out.exists():
        if not is_run_dir(out):
            raise RunDirError(f"refusing to replace {out}: it is not a run directory")
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


def write_run_dir(testbed: Testbed, deployment: Deployment, out: Path, *, faults: list[dict], scenario: dict,
                  started_wall_ns: int, complete: bool, user_exit: int | None = None) -> Path:
    """Collect logs and write the complete run directory atomically; return its path."""
    out = Path(out)
    partial = start_partial(out)
    fetch_logs(testbed, [HostInfo(**h) for h in deployment.hosts], partial)
    write_tables(partial, deployment, testbed_desc=testbed.describe(), versions_info=versions(), faults=faults,
                 scenario=scenario, started_wall_ns=started_wall_ns, complete=complete, user_exit=user_exit)
    return publish(partial, out)


def recollect(testbed: Testbed, deployment: Deployment, out: Path) -> Path:
    """Collect again into an existing run directory: same faults, scenario and start time, fresh logs.

    Idempotent: running it twice yields the same files (the raw logs are the data).
    """
    out = Path(out)
    if not (out / "summary.json").exists():
        raise TestbedError(f"{out} is not a run directory (no summary.json); `fab run` writes one")
    summary = json.loads((out / "summary.json").read_text())
    faults = pd.read_csv(out / "faults.csv", keep_default_na=False).to_dict("records") if (out / "faults.csv").exists() else []
    scenario = yaml.safe_load((out / "scenario.yaml").read_text()) if (out / "scenario.yaml").exists() else {}
    return write_run_dir(testbed, deployment, out, faults=faults, scenario=scenario,
                         started_wall_ns=int(summary["started_wall_ns"]), complete=bool(summary["complete"]),
                         user_exit=summary.get("user_exit_code"))
