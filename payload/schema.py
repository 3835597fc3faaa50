"""The run-data contract, declared once: every event a node logs and every table a run directory holds.

Nodes write events through :class:`payload.events.EventLog`, which checks each
one against :data:`EVENTS`; collection (``experiment/collect.py``) derives the
run directory's tables from those events with the columns of :data:`TABLES`;
analysis and the consistency oracle read them with the same names and dtypes;
``docs/run-directory.md`` is checked against this module by a test.  So a field
that one side writes and another reads is named in exactly one place.

Standard library only: the payload ships to nodes with it, and importing it
must not pull in torch or pandas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from payload.errors import JarvisError

# -- events -----------------------------------------------------------------------------------------

BASE_FIELDS = ("ev", "node", "wall_ns", "mono_ns")  # stamped on every event by the writer
LAYER, USER = "layer", "user"  # who emits an event kind: layer nodes, the end-user node (node 0)
# Where an event kind ends up in a run directory: tokens.csv, hops.csv, or analysis' events frame.
TO_TOKENS, TO_HOPS, TO_EVENTS = "tokens", "hops", "events"

JSON = (dict, list, str, int, float, bool)
INT, STR, BOOL, LIST = (int,), (str,), (bool,), (list,)
PEER = (int, str)  # a node index, or the address of a connection that never named its node


class RunDirError(JarvisError, ValueError):
    """A path is not a usable run directory (missing, interrupted or off-contract); the message names the file."""


class EventSchemaError(Exception):
    """This process tried to log an event the schema does not declare, or with the wrong fields (a bug)."""


@dataclass(frozen=True)
class EventField:
    name: str
    types: tuple[type, ...]
    doc: str
    required: bool = True


def f(name: str, types: tuple[type, ...], doc: str, *, required: bool = True) -> EventField:
    return EventField(name, types, doc, required)


def opt(name: str, types: tuple[type, ...], doc: str) -> EventField:
    return EventField(name, types, doc, required=False)


@dataclass(frozen=True)
class EventKind:
    """One kind of event: its fields, who emits it, and which run-directory table it reaches."""

    name: str
    doc: str
    emitters: frozenset[str]
    table: str
    fields: tuple[EventField, ...] = ()
    required: frozenset[str] = field(init=False)
    allowed: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", frozenset(x.name for x in self.fields if x.required))
        object.__setattr__(self, "allowed", frozenset(x.name for x in self.fields))

    def check(self, fields: dict) -> None:
        """Raise EventSchemaError unless ``fields`` are exactly this kind's (None allowed for optional ones)."""
        names = fields.keys()
        if not (self.required <= names <= self.allowed):
            missing, unknown = sorted(self.required - names), sorted(names - self.allowed)
            raise EventSchemaError(f"event {self.name!r}: missing {missing}, undeclared {unknown}")
        for spec in self.fields:
            value = fields.get(spec.name)
            if value is None:
                if spec.required:
                    raise EventSchemaError(f"event {self.name!r}: {spec.name} is None")
                continue
            if not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types):
                raise EventSchemaError(f"event {self.name!r}: {spec.name}={value!r} is not "
                                       f"{'/'.join(t.__name__ for t in spec.types)}")


def _kind(name: str, doc: str, emitters: tuple[str, ...], table: str, *fields: EventField) -> EventKind:
    return EventKind(name, doc, frozenset(emitters), table, tuple(fields))


_SESSION = f("session", STR, "session id")
_STEP = f("step", INT, "step of the session (0 = prefill)")
_EPOCH = f("epoch", INT, "attempt counter of the session (the user node bumps it on every re-send)")
_RSS = f("peak_rss_bytes", INT, "peak resident set size of the process so far")
_HOP_STAMPS = (
    f("src", INT, "sending node"), f("dst", INT, "receiving node"), f("positions", INT, "positions carried"),
    f("bytes", INT, "frame bytes on the wire"), f("serialize_ns", INT, "time spent encoding the frame"),
    f("t1_wall_ns", INT, "T1: frame sent (sender's wall clock)"),
    f("t1_mono_ns", INT, "T1 on the sender's monotonic clock"),
    f("t2_wall_ns", INT, "T2: frame received (receiver's wall clock, from its ack)"),
    f("t3_wall_ns", INT, "T3: ack sent (receiver's wall clock, from its ack)"),
    f("t4_wall_ns", INT, "T4: ack received (sender's wall clock)"),
    f("t4_mono_ns", INT, "T4 on the sender's monotonic clock"),
    f("rtt_ns", INT, "offset-free round trip (T4-T1)-(T3-T2)"),
)
TOKEN_FIELDS = (
    _SESSION, f("prompt_index", INT, "index of the prompt in the job"), f("repeat", INT, "repeat number"),
    _STEP, f("token_id", INT, "the emitted token"), f("text", STR, "decoded text of that token"),
    f("t_emit_ns", INT, "wall-clock ns when the token was emitted"),
    f("t_emit_mono_ns", INT, "monotonic ns when the token was emitted"),
    f("latency_ns", INT, "from the step's first send to the token's emission"),
    f("layers", STR, "space-separated 0-based decoder layers applied to produce this token"),
    f("route", STR, "space-separated node indices the step's final attempt visited (0 ... 0)"),
    f("epoch", INT, "attempt counter of the session when this token was produced"),
    f("attempts", INT, "attempts needed for this step (1 = no re-send)"),
    f("nodes_out", STR, "space-separated layer nodes the step's plan routed around"),
    f("rebuilt", STR, "space-separated layers whose cache was rebuilt by replay before this step"),
    f("bridges", STR, "space-separated first-last layer spans bridged at this step (on_failure: bridge)"),
    f("chunks", STR, "space-separated positions of each frame the step's input went in (a chunked prefill); "
                     "empty: one frame"),
    f("head_batch", STR, "rows and place of the batch the user node computed this token's logits in "
                         "(batch_decode), e.g. `4 1`; empty: alone"),
)

# Token fields added after run directories were first written, with the value they stand for in older ones.
ADDED_TOKEN_FIELDS = {"bridges": "", "chunks": "", "head_batch": ""}

EVENTS: MappingProxyType[str, EventKind] = MappingProxyType({k.name: k for k in (
    _kind("start", "the process started (before loading weights)", (LAYER,), TO_EVENTS, _RSS),
    _kind("ready", "the node serves (weights loaded, listening)", (LAYER, USER), TO_EVENTS, _RSS,
          opt("listen", LIST, "host and port it listens on"), opt("ranges", LIST, "layer ranges [first, end) held"),
          opt("model_dir", STR, "prepared model directory"),
          opt("event_loop", STR, "the event loop it runs on: uvloop or asyncio (payload/eventloop.py)"),
          opt("gc_frozen", INT, "objects loaded at start that garbage collection no longer sweeps "
                                "(payload/collector.py)")),
    _kind("stop", "the process stops cleanly (SIGTERM or end of job)", (LAYER, USER), TO_EVENTS, _RSS),
    _kind("recv", "a DATA frame was accepted and acked", (LAYER, USER), TO_HOPS, _SESSION, _STEP, _EPOCH,
          f("src", INT, "sending node"), f("positions", INT, "positions carried"),
          f("pos_start", INT, "first position carried"), f("replay_len", INT, "positions of replayed history"),
          f("bytes", INT, "payload bytes"), f("t2_wall_ns", INT, "T2: frame received"),
          f("t3_wall_ns", INT, "T3: ack sent")),
    _kind("compute", "the node applied its layers to a frame", (LAYER,), TO_HOPS, _SESSION, _STEP, _EPOCH,
          f("src", INT, "node the frame came from"), f("layers", LIST, "layers applied"),
          f("positions", INT, "positions computed"), opt("pos_start", INT, "first position of the frame"),
          f("start_mono_ns", INT, "compute start"),
          f("end_mono_ns", INT, "compute end"), f("queue_ns", INT, "receive to compute start"),
          f("compute_ns", INT, "compute time"),
          opt("batch", LIST, "[rows, place]: computed as row `place` of a batch of `rows` decode steps of "
                             "different sessions (batch_decode); absent: alone")),
    _kind("ack", "the next hop acknowledged a frame this node sent (one hop of hops.csv)", (LAYER, USER), TO_HOPS,
          _SESSION, _STEP, _EPOCH, *_HOP_STAMPS, opt("pos_start", INT, "first position of the frame")),
    _kind("token", "the user node emitted a token (one row of tokens.csv)", (USER,), TO_TOKENS, *TOKEN_FIELDS),
    _kind("reject", "a frame was refused (invalid, unauthentic, or not servable here)", (LAYER, USER), TO_EVENTS,
          f("reason", STR, "why"), f("peer", PEER, "sender (node index or connection address)"),
          opt("session", STR, "session of the frame"), opt("step", INT, "step of the frame"),
          opt("fatal", BOOL, "the connection was closed: its byte stream cannot be trusted"),
          opt("suppressed", INT, "refusals of this kind from this peer held back since the last line")),
    _kind("stale", "a frame or report about a superseded attempt was dropped", (LAYER, USER), TO_EVENTS,
          _SESSION, _STEP, _EPOCH, opt("src", INT, "sender"), opt("current_epoch", INT, "the session's epoch here"),
          opt("kind", STR, "what was stale (fail_report), when not a DATA frame")),
    _kind("peer_lost", "an outbound connection to a peer broke", (LAYER,), TO_EVENTS,
          f("peer", INT, "the peer"), f("reason", STR, "how it broke")),
    _kind("peer_failed", "this node reports its successor failed to the user node", (LAYER,), TO_EVENTS,
          f("peer", INT, "the failed node"), f("kind", STR, "crashed | silent | rejected"), f("reason", STR, "why"),
          opt("session", STR, "session whose step it failed"), opt("step", INT, "that step"),
          opt("epoch", INT, "that attempt")),
    _kind("node_out", "the user node marks a node failed and routes around it", (USER,), TO_EVENTS,
          f("peer", INT, "the node"), f("kind", STR, "crashed | silent"), f("reason", STR, "why"),
          f("reporter", INT, "who saw it (0 = the user node itself)"),
          f("critical", BOOL, "its slice holds the first or last layer"), f("layers", LIST, "its layers")),
    _kind("rejoin", "a node marked out is heard from again and rejoins", (USER,), TO_EVENTS,
          f("peer", INT, "the node")),
    _kind("node_slow", "the user node finds a node answering but persistently slow (a straggler)", (USER,),
          TO_EVENTS, f("peer", INT, "the node"), f("threshold_ns", INT, "slow_factor x its baseline p99 step time"),
          f("steps_ns", LIST, "the slow steps' times that made it a straggler"),
          f("action", STR, "on_slow: wait (kept) | skip | replica (routed around)")),
    _kind("slow_retry", "a straggler routed around is tried again after slow_holdoff_s", (USER,), TO_EVENTS,
          f("peer", INT, "the node")),
    _kind("retry", "a step's attempt failed; the user node re-plans and re-sends", (USER,), TO_EVENTS,
          _SESSION, _STEP, _EPOCH, f("peer", INT, "node blamed (-1: the step timed out)"),
          f("kind", STR, "crashed | silent | rejected | timeout"), f("reason", STR, "why"),
          opt("resumed_at", INT, "hop of the failed attempt the next one resumes from")),
    _kind("resume", "a node re-forwards a step's output along a new route (RESUME)", (LAYER,), TO_EVENTS,
          _SESSION, _STEP, _EPOCH, f("route", LIST, "node indices of the new route")),
    _kind("resume_refused", "a node could not re-forward a step's output", (LAYER,), TO_EVENTS,
          f("reason", STR, "why"), _SESSION, _STEP),
    _kind("replay", "a node rebuilds a slice's cache from replayed history", (LAYER,), TO_EVENTS,
          _SESSION, _STEP, f("positions", INT, "positions replayed"), f("layers", LIST, "layers rebuilt")),
    _kind("rollback", "a re-sent step rolls a slice's cache back", (LAYER,), TO_EVENTS,
          _SESSION, _STEP, _EPOCH, f("positions", INT, "positions forgotten")),
    _kind("session_start", "the user node starts a session", (USER,), TO_EVENTS, _SESSION,
          f("prompt_index", INT, "index of the prompt"), f("repeat", INT, "repeat number"),
          f("prompt_tokens", INT, "prompt length in tokens"), f("prompt_ids", LIST, "prompt token ids")),
    _kind("session_error", "a session could not complete", (USER,), TO_EVENTS, _SESSION, f("error", STR, "why")),
    _kind("session_end", "a session ended (user node) or its state was freed (layer node)", (LAYER, USER),
          TO_EVENTS, _SESSION, opt("tokens", INT, "tokens emitted (user node)"),
          opt("error", STR, "why it failed, if it did (user node)"), opt("text", STR, "the answer (user node)"),
          opt("reason", STR, "why a layer node freed it: END, expiry or eviction")),
)})

# -- run-directory tables -------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column: name, pandas dtype (``Int64`` is a nullable integer), meaning; ``absent`` is its value in
    run directories written before the column existed (None: it always did, and a table without it is refused)."""

    name: str
    dtype: str
    doc: str
    absent: str | None = None


@dataclass(frozen=True)
class Table:
    name: str
    file: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def dtypes(self) -> dict[str, str]:
        return {c.name: c.dtype for c in self.columns}

    @property
    def absent(self) -> dict[str, str]:
        """Columns added after the first runs, and the value older run directories have for them."""
        return {c.name: c.absent for c in self.columns if c.absent is not None}


_DTYPE_OF = {int: "int64", str: "str", bool: "bool", float: "float64"}

TABLES: MappingProxyType[str, Table] = MappingProxyType({t.name: t for t in (
    Table("tokens", "tokens.csv", "one row per emitted token (the user node's `token` events)",
          tuple(Column(x.name, _DTYPE_OF[x.types[0]], x.doc, ADDED_TOKEN_FIELDS.get(x.name)) for x in TOKEN_FIELDS)),
    Table("hops", "hops.csv", "one row per frame sent across one hop: the sender's `ack` event (the frame was "
          "acknowledged) joined with the receiver's `recv` and `compute` events of the same frame, keyed by receiver, "
          "session, step, epoch and sender; a frame the receiver took but whose ack the sender never saw (it had "
          "given up: the receiver was paused, its link cut) has the receiver's side only. TWAMP-style T1..T4", (
              Column("session", "str", "session id"), Column("step", "int64", "step"),
              Column("epoch", "int64", "attempt"), Column("src", "int64", "sending node"),
              Column("dst", "int64", "receiving node"), Column("positions", "int64", "positions carried"),
              Column("acked", "bool", "the sender saw the ack (false: only the receiver's side is known)"),
              Column("bytes", "Int64", "frame bytes on the wire (sender; empty if not acked)"),
              Column("pos_start", "Int64", "first position carried (receiver; empty if it logged no `recv`)"),
              Column("replay_len", "Int64", "positions of replayed history in the frame (a cache rebuild)"),
              Column("t1_wall_ns", "Int64", "T1: src sends (src wall clock)"),
              Column("t2_wall_ns", "Int64", "T2: dst receives (dst wall clock)"),
              Column("t3_wall_ns", "Int64", "T3: dst sends the ack (dst wall clock)"),
              Column("t4_wall_ns", "Int64", "T4: src receives the ack (src wall clock)"),
              Column("t1_mono_ns", "Int64", "T1 on src's monotonic clock"),
              Column("t4_mono_ns", "Int64", "T4 on src's monotonic clock"),
              Column("rtt_ns", "Int64", "offset-free round trip (T4-T1)-(T3-T2)"),
              Column("serialize_ns", "Int64", "time src spent encoding the frame"),
              Column("queue_ns", "int64", "time the frame waited at dst between receive and compute start (0: none)"),
              Column("compute_ns", "int64", "time dst spent applying its layers (0 for the user node, or none logged)"),
          )),
    Table("faults", "faults.csv", "ground truth of injected faults, one row per action taken", (
        Column("action", "str", "kill, pause, resume, link_down, link_up, degrade, partition, one_way_partition, "
                                "blackhole, corrupt, duplicate, reorder, clock_skew, heal "
                                "(a flap is its link_down/link_up rows)"),
        Column("target", "str", "node name(s), space-separated (a one-way partition: `from ... -> to ...`)"),
        Column("trigger", "str", "`token:K` or `seconds:S`"),
        Column("session", "str", "session in progress when it fired (empty if none)"),
        Column("step", "int64", "step of that session when it fired (-1 if none)"),
        Column("requested_wall_ns", "int64", "when the runner decided to fire it"),
        Column("effective_wall_ns", "int64", "when the testbed reported it in effect (wall clock)"),
        Column("effective_mono_ns", "int64", "the same on the control host's monotonic clock"),
        Column("detail", "str", "free text (profile name, signal, ...)"),
    )),
    Table("nodes", "nodes.csv", "one row per node", (
        Column("index", "int64", "0 = end-user node, 1..N layer nodes"), Column("name", "str", "host name"),
        Column("address", "str", "data-plane address"),
        Column("layers", "str", "space-separated layers of its own slice"),
        Column("replicas", "str", "space-separated `first-last` ranges it holds as replicas"),
        Column("profile", "str", "link profile name"),
        Column("peak_rss_bytes", "Int64", "largest peak RSS it logged (empty: none, e.g. its log could not be collected)"),
    )),
    Table("links", "links.csv", "one row per node and direction: the link profile as configured", (
        Column("node", "int64", "node index"), Column("name", "str", "host name"),
        Column("direction", "str", "uplink (node to network) or downlink"),
        Column("profile", "str", "profile name"), Column("delay_ms", "float64", "one-way delay"),
        Column("jitter_ms", "float64", "delay jitter"), Column("distribution", "str", "jitter distribution"),
        Column("loss_pct", "float64", "random loss"), Column("rate_mbit", "float64", "rate (empty: unlimited)"),
        Column("queue_pkts", "Int64", "droptail queue"), Column("source", "str", "where the numbers come from"),
    )),
)})

# Analysis' frame of the events that no table above tabulates (the control plane), read from the raw logs.
EVENTS_FRAME = Table("events", "nodes/<name>/events.jsonl", "control-plane events of every node's log", (
    Column("host", "str", "directory name of the log under nodes/"), Column("ev", "str", "event kind"),
    Column("node", "int64", "node index"), Column("wall_ns", "int64", "wall clock"),
    Column("mono_ns", "int64", "monotonic clock"), Column("peer", "str", "the peer it is about, if any"),
    Column("reason", "str", "reason, if any"), Column("kind", "str", "failure kind, if any"),
    Column("session", "str", "session, if any"), Column("step", "Int64", "step, if any"),
    Column("epoch", "Int64", "epoch, if any"), Column("detail", "str", "JSON of the fields without a column"),
))
CONTROL_EVENTS = tuple(name for name, kind in EVENTS.items() if kind.table == TO_EVENTS)

# -- the JSON files ------------------------------------------------------------------------------

SUMMARY_KEYS = {
    "run_id": "the run directory's name", "scenario": "scenario name", "model": "model name",
    "testbed": "testbed kind", "nodes": "layer nodes", "layers_per_node": "node index -> [first, end)",
    "policy": "on_failure policy", "complete": "true only if the run ended normally and every session completed",
    "user_exit_code": "the user node's exit status", "started_wall_ns": "when the job started (control host)",
    "ended_wall_ns": "the last event any node logged (so collecting twice gives the same summary)",
    "sessions": "per session: session, prompt_index, repeat, text, tokens, ttft_ns, median_token_ns, "
                "tokens_per_s, error",
    "peak_rss_bytes": "node index -> largest peak RSS it reported", "faults": "rows of faults.csv",
    "bytes_shipped": "host -> bytes deploy sent it",
}
SESSION_KEYS = ("session", "prompt_index", "repeat", "text", "tokens", "ttft_ns", "median_token_ns", "tokens_per_s",
                "error")

RUN_FILES = {
    "scenario.yaml": "the resolved scenario (every default filled in)",
    "testbed.json": "testbed kind, hosts (name, index, address, ssh, namespace, profile), link shaping",
    "versions.json": "python, torch, transformers versions, git commit",
    "deployment.json": "model, placement, policy, wire/compute dtypes, timing, bytes shipped per host (never the key)",
    "summary.json": "run-level summary (keys below)",
    **{t.file: t.doc for t in TABLES.values()},
    "nodes/<name>/events.jsonl": "raw per-node event log (JSON lines, one write per event)",
}


def check_event(ev: str, fields: dict, emitter: str) -> None:
    """Raise EventSchemaError unless ``ev`` is a declared event kind that ``emitter`` emits, with its fields."""
    kind = EVENTS.get(ev)
    if kind is None:
        raise EventSchemaError(f"undeclared event kind {ev!r} (payload/schema.py declares {sorted(EVENTS)})")
    if emitter not in kind.emitters:
        raise EventSchemaError(f"event {ev!r} is not one a {emitter} node emits (only {sorted(kind.emitters)})")
    kind.check(fields)


def emitter_of(node: int) -> str:
    """Node 0 is the end-user node; every other index a layer node."""
    return USER if node == 0 else LAYER
