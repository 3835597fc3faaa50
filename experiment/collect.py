"""Collect per-node logs and derive the run directory (see docs/run-directory.md).

The raw event logs are the data; tokens.csv, hops.csv and summary.json are
derived from them, so re-running collect reproduces the same files.  The
directory is built in ``<out>.partial`` and renamed into place only when it is
complete, so an interrupted collection never leaves a half-written run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import yaml

from experiment.testbed import HostInfo, Testbed
from payload.events import read_events

TOKEN_COLUMNS = ["session", "prompt_index", "repeat", "step", "token_id", "text", "t_emit_ns", "t_emit_mono_ns",
                 "latency_ns", "layers", "route", "epoch", "attempts", "nodes_out", "rebuilt"]
HOP_COLUMNS = ["session", "step", "epoch", "src", "dst", "positions", "bytes", "t1_wall_ns", "t2_wall_ns",
               "t3_wall_ns", "t4_wall_ns", "t1_mono_ns", "t4_mono_ns", "rtt_ns", "serialize_ns", "queue_ns",
               "compute_ns"]
FAULT_COLUMNS = ["action", "target", "trigger", "session", "step", "requested_wall_ns", "effective_wall_ns",
                 "effective_mono_ns", "detail"]


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


def fetch_logs(testbed: Testbed, hosts: list[HostInfo], into: Path) -> dict[int, list[dict]]:
    """Copy every host's events.jsonl (killed nodes included: their log is on disk) into ``into``."""
    events: dict[int, list[dict]] = {}
    for host in hosts:
        target = into / "nodes" / host.name / "events.jsonl"
        try:
            testbed.shell(host).get("events.jsonl", target)
            events[host.index] = read_events(target)
        except Exception as exc:  # one unreachable host must not lose everyone else's logs
            target.parent.mkdir(parents=True, exist_ok=True)
            (target.parent / "COLLECT_ERROR").write_text(f"{type(exc).__name__}: {exc}\n")
            events[host.index] = []
    return events


def tokens_frame(events: dict[int, list[dict]]) -> pd.DataFrame:
    rows = [{c: e.get(c) for c in TOKEN_COLUMNS} for e in events.get(0, []) if e["ev"] == "token"]
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS)


def hops_frame(events: dict[int, list[dict]]) -> pd.DataFrame:
    """One row per acknowledged hop, joined with the receiver's compute record of the same frame."""
    compute = {}
    for node, evs in events.items():
        for e in evs:
            if e["ev"] == "compute":
                compute[(node, e["session"], e["step"], e["epoch"], e.get("src"))] = e
    rows = []
    for node, evs in events.items():
        for e in evs:
            if e["ev"] != "ack":
                continue
            c = compute.get((e["dst"], e["session"], e["step"], e["epoch"], e["src"]), {})
            row = {k: e.get(k) for k in HOP_COLUMNS if k in e}
            row["queue_ns"] = c.get("queue_ns", 0)
            row["compute_ns"] = c.get("compute_ns", 0)
            rows.append(row)
    frame = pd.DataFrame(rows, columns=HOP_COLUMNS)
    return frame.sort_values(["session", "step", "epoch", "t1_wall_ns"]).reset_index(drop=True)


def summarise(tokens: pd.DataFrame, events: dict[int, list[dict]], deployment, *, complete: bool,
              started_wall_ns: int, faults: list[dict], user_exit: int | None) -> dict:
    sessions = []
    for sid, group in tokens.groupby("session", sort=False):
        group = group.sort_values("step")
        end = next((e for e in events.get(0, []) if e["ev"] == "session_end" and e["session"] == sid), {})
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
    for e in events.get(0, []):
        if e["ev"] == "session_end" and e.get("error") and e["session"] not in tokens["session"].values:
            sessions.append({"session": e["session"], "tokens": 0, "error": e["error"], "text": ""})
    peak = {}
    for node, evs in events.items():
        rss = [e["peak_rss_bytes"] for e in evs if "peak_rss_bytes" in e]
        if rss:
            peak[str(node)] = max(rss)
    placement = deployment.placement
    return {
        "run_id": None, "model": deployment.model, "testbed": deployment.testbed,
        "nodes": len(placement["slices"]), "layers_per_node": placement["slices"], "policy": deployment.policy,
        "complete": bool(complete and all(not s.get("error") for s in sessions)), "user_exit_code": user_exit,
        "started_wall_ns": started_wall_ns, "ended_wall_ns": time.time_ns(), "sessions": sessions,
        "peak_rss_bytes": peak, "faults": len(faults), "bytes_shipped": deployment.bytes_shipped,
    }


def nodes_frame(deployment, summary: dict) -> pd.DataFrame:
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
    return pd.DataFrame(rows)


def links_frame(testbed_desc: dict) -> pd.DataFrame:
    rows = []
    for h in testbed_desc.get("hosts", []):
        for direction, prof in (h.get("extra", {}).get("links") or {}).items():
            rows.append({"node": h["index"], "name": h["name"], "direction": direction, **prof})
        if not (h.get("extra", {}).get("links")):
            rows.append({"node": h["index"], "name": h["name"], "direction": "both", "name_profile": h.get("profile")})
    return pd.DataFrame(rows)


def write_run_dir(testbed: Testbed, deployment, out: Path, *, faults: list[dict], scenario: dict,
                  started_wall_ns: int, complete: bool, user_exit: int | None = None) -> Path:
    """Collect logs and write the complete run directory atomically; return its path."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    hosts = [HostInfo(**h) for h in deployment.hosts]
    events = fetch_logs(testbed, hosts, partial)
    tokens = tokens_frame(events)
    tokens.to_csv(partial / "tokens.csv", index=False)
    hops_frame(events).to_csv(partial / "hops.csv", index=False)
    pd.DataFrame(faults, columns=FAULT_COLUMNS).to_csv(partial / "faults.csv", index=False)
    summary = summarise(tokens, events, deployment, complete=complete, started_wall_ns=started_wall_ns,
                        faults=faults, user_exit=user_exit)
    summary["run_id"] = out.name
    desc = testbed.describe()
    (partial / "testbed.json").write_text(json.dumps(desc, indent=2, default=str))
    nodes_frame(deployment, summary).to_csv(partial / "nodes.csv", index=False)
    links_frame(desc).to_csv(partial / "links.csv", index=False)
    public = {k: v for k, v in deployment.__dict__.items() if k != "key_hex"}  # never write the key
    (partial / "deployment.json").write_text(json.dumps(public, indent=2))
    (partial / "versions.json").write_text(json.dumps(versions(), indent=2))
    (partial / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    (partial / "summary.json").write_text(json.dumps(summary, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


def recollect(testbed: Testbed, deployment, out: Path) -> Path:
    """Collect again into an existing run directory: same faults, scenario and start time, fresh logs.

    Idempotent: running it twice yields the same files (the raw logs are the data).
    """
    out = Path(out)
    if not (out / "summary.json").exists():
        raise FileNotFoundError(f"{out} is not a run directory (no summary.json); `fab run` writes one")
    summary = json.loads((out / "summary.json").read_text())
    faults = pd.read_csv(out / "faults.csv", keep_default_na=False).to_dict("records") if (out / "faults.csv").exists() else []
    scenario = yaml.safe_load((out / "scenario.yaml").read_text()) if (out / "scenario.yaml").exists() else {}
    return write_run_dir(testbed, deployment, out, faults=faults, scenario=scenario,
                         started_wall_ns=int(summary["started_wall_ns"]), complete=bool(summary["complete"]),
                         user_exit=summary.get("user_exit_code"))
