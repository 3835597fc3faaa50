"""A run that real node processes produced, collected and loaded through analysis: nothing they logged is lost.

Real local chain (tiny model, four layer nodes): node 2 is killed and node 3 paused and continued, so the
logs hold failures, reports, retries, stale frames, a rejoin with a replay.  Every event kind in the raw
logs must reach the frame the schema says it reaches, and collecting the same logs again changes nothing.
"""

from __future__ import annotations

import collections
import shutil

from analysis.load import load
from experiment.collect import recollect
from experiment.run import Fault, run_job
from payload.config import Timing
from payload.events import read_events
from payload.schema import EVENTS, TO_EVENTS, TO_HOPS, TO_TOKENS


def test_every_event_kind_the_nodes_emitted_reaches_a_frame(tiny_prepared, chain, tmp_path):
    faults = [Fault("kill", (2,), at_token=2), Fault("pause", (3,), at_token=4), Fault("resume", (3,), at_token=8)]
    with chain(tiny_prepared("llama"), 4, timing=Timing(rejoin_after_s=0.05)) as (testbed, deployment):
        run = run_job(testbed, deployment, {"prompts": ["the cat sat on the"], "max_new_tokens": 40}, faults,
                      tmp_path / "run", stream=lambda line: None)
        testbed.stop_services()  # nothing logs any more: the raw logs are final
        recollect(testbed, deployment, run)
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        recollect(testbed, deployment, run)
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert before == after, "collecting the same raw logs again must write the same files"

    raw = {log.parent.name: read_events(log) for log in run.glob("nodes/*/events.jsonl")}
    kinds = collections.Counter(e["ev"] for events in raw.values() for e in events)
    assert {"token", "ack", "recv", "compute", "peer_failed", "node_out", "retry", "session_start"} <= set(kinds)

    data = load(run, cache=False)
    for kind, count in kinds.items():
        table = EVENTS[kind].table
        if table == TO_TOKENS:
            assert len(data.tokens) == count
        elif table == TO_EVENTS:
            assert (data.events["ev"] == kind).sum() == count, kind
    hop_keys = {(r.dst, r.session, r.step, r.epoch, r.src) for r in data.hops.itertuples()}
    assert data.hops["acked"].sum() == kinds["ack"]
    assert (~data.hops["acked"]).any(), "node 3 took a frame after its sender gave up on it: a row of its own"
    for host, events in raw.items():
        node = int(data.nodes.loc[data.nodes["name"] == host, "index"].iloc[0])
        for e in events:
            if EVENTS[e["ev"]].table == TO_HOPS and e["ev"] != "ack":
                key = (node, e["session"], e["step"], e["epoch"], e["src"])
                assert key in hop_keys, f"{host}'s {e['ev']} of {key} reached no hop row"
    replays = kinds["replay"]  # a rejoin (timing decides whether one comes before the run ends) shows in hops.csv
    assert ((data.hops["replay_len"] > 0).sum() > 0) == (replays > 0), "a rebuilt cache is a replay hop"
    assert (data.hops["compute_ns"] > 0).sum() == kinds["compute"], "every compute joins its own hop"

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert load(copy, cache=False).tokens.equals(data.tokens)
