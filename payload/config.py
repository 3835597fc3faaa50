"""Node configuration: one JSON file per node, written by deploy.

Timing defaults suit loopback and server links as well as WiFi/cellular: the
ack deadline adapts (a multiple of the observed p99 hop round trip) and only
the floor is fixed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from payload.batching import check_batch_decode
from payload.eventloop import CHOICES as EVENT_LOOPS
from payload.stragglers import OnSlow
from payload.routing import Placement, Policy


ZERO_OK = {"retransmit_ms", "rejoin_after_s", "max_attempts"}  # Timing fields for which 0 means something


class TimingError(ValueError):
    """A timing knob out of range; ``knob`` names it, so a scenario loader can point at its line."""

    def __init__(self, knob: str, problem: str):
        super().__init__(f"timing.{knob} {problem}")
        self.knob, self.problem = knob, problem


@dataclass(frozen=True)
class Timing:
    """Failure-detection and resource knobs (per deployment); every one must be a positive number."""

    ack_floor_ms: float = 250.0  # never declare a peer silent sooner than this
    ack_multiplier: float = 4.0  # deadline = max(floor, multiplier x p99 observed ack RTT, 3 x p99 + retransmit)
    slowest_link_mbps: float = 1.0  # ack deadlines and heartbeat silence allow a frame's bytes at this rate
    retransmit_ms: float = 250.0  # room for one TCP retransmission (Linux: 200 ms minimum RTO) before "silent"
    connect_timeout_ms: float = 1500.0  # room for one lost SYN: Linux resends it after 1 s (its initial RTO)
    heartbeat_ms: float = 100.0  # node -> user node liveness
    heartbeat_floor_ms: float = 500.0  # silence longer than max(floor, 4 x p99 gap) = failed
    step_timeout_s: float = 60.0  # backstop per attempt at the user node (compute of long prefills)
    rejoin_after_s: float = 1.0  # a failed node heard from again after this long rejoins
    max_attempts: int = 0  # per step; 0 = number of layer nodes + 2
    first_frame_timeout_s: float = 10.0  # an inbound connection with no authentic frame by then is closed
    idle_timeout_s: float = 600.0  # an authenticated connection idle this long is closed (with a BYE)
    max_unproven_per_address: int = 16  # inbound connections not yet authenticated, per peer address ...
    max_unproven_connections: int = 64  # ... and in all
    max_connections: int = 1024  # authenticated inbound connections
    session_ttl_s: float = 900.0  # a session idle this long is evicted (its END may never come)
    max_sessions: int = 256  # sessions a layer node holds at once (the least recently used idle one goes first)
    log_interval_s: float = 5.0  # a refusal is logged at most once per peer and kind in this interval, with a count
    slow_factor: float = 2.0  # a decode step this many times a node's p99 (payload/stragglers.py) is a slow one ...
    slow_steps: int = 3  # ... and this many in a row make the node a straggler
    slow_holdoff_s: float = 5.0  # a straggler routed around is tried again after this long

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            integer = name.startswith("max_") or name == "slow_steps"
            kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            zero_ok = name in ZERO_OK
            if isinstance(value, bool) or not kind_ok or value < 0 or (value == 0 and not zero_ok):
                want = "a whole number" if integer else "a number"
                raise TimingError(name, f"must be {want} {'>= 0' if zero_ok else '> 0'}, got {value!r}")

    def wire_time_s(self, frame_bytes: int) -> float:
        """Time ``frame_bytes`` may take on the slowest link: added to ack deadlines and heartbeat silence."""
        return frame_bytes * 8 / (self.slowest_link_mbps * 1e6)


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node process needs; ``peers`` maps node index to (host, port)."""

    node: int
    listen: tuple[str, int]
    peers: dict[int, tuple[str, int]]
    model_dir: str
    ranges: list[tuple[int, int]]
    key_hex: str
    log_path: str
    compute_dtype: str = "float32"
    wire_dtype: str = "bfloat16"  # what this node's output travels in (frames say their own dtype)
    wire_dtypes_in: tuple[str, ...] = ()  # what its peers send in, when others than wire_dtype (wire_dtype: auto)
    max_positions: int = 8192
    timing: Timing = field(default_factory=Timing)
    encrypt: bool = False  # seal every payload with ChaCha20-Poly1305 (frames are authenticated either way)
    key_file: str = ""  # where the key is instead of key_hex: a private file outside anything copied off the node
    bridges_file: str = ""  # the placement's bridges (on_failure: bridge): safetensors, payload/bridges.py
    event_loop: str = "auto"  # auto (uvloop where installed) | asyncio | uvloop: payload/eventloop.py
    batch_decode: int = 1  # most decode steps of different sessions computed as one batch (1: one at a time)

    def largest_position_bytes(self, hidden: int) -> int:
        """Bytes of one position in the widest dtype this node sends or receives (what its frame cap allows)."""
        from payload.frames import WireDtype

        return max(WireDtype.from_name(d).position_bytes(hidden) for d in (self.wire_dtype, *self.wire_dtypes_in))

    @property
    def key(self) -> bytes:
        """The deployment key (from ``key_file`` when the config names one)."""
        return bytes.fromhex(Path(self.key_file).read_text().strip() if self.key_file else self.key_hex)

    def to_json(self) -> str:
        data = asdict(self)
        data["peers"] = {str(k): list(v) for k, v in self.peers.items()}
        return json.dumps(data, indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "NodeConfig":
        try:
            config = cls(
                node=int(data["node"]),
                listen=(str(data["listen"][0]), int(data["listen"][1])),
                peers={int(k): (str(v[0]), int(v[1])) for k, v in data["peers"].items()},
                model_dir=str(data["model_dir"]),
                ranges=[(int(a), int(b)) for a, b in data.get("ranges", [])],
                key_hex=str(data.get("key_hex", "")),
                key_file=str(data.get("key_file", "")),
                log_path=str(data["log_path"]),
                compute_dtype=data.get("compute_dtype", "float32"),
                wire_dtype=data.get("wire_dtype", "bfloat16"),
                wire_dtypes_in=tuple(str(d) for d in data.get("wire_dtypes_in", ())),
                max_positions=int(data.get("max_positions", 8192)),
                timing=Timing(**data.get("timing", {})),
                encrypt=bool(data.get("encrypt", False)),
                bridges_file=str(data.get("bridges_file", "")),
                event_loop=str(data.get("event_loop", "auto")),
                batch_decode=data.get("batch_decode", 1),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"invalid node config: {exc!r}") from exc
        if config.event_loop not in EVENT_LOOPS:
            raise ValueError(f"invalid node config: event_loop {config.event_loop!r} is none of "
                             f"{', '.join(EVENT_LOOPS)}")
        try:
            check_batch_decode(config.batch_decode)
        except ValueError as exc:
            raise ValueError(f"invalid node config: {exc}") from None
        if not config.key_file and len(config.key_hex) < 64:
            raise ValueError("invalid node config: key_hex must hold at least 32 bytes (64 hex digits), "
                             "or key_file name a file that does")
        return config

    @classmethod
    def load(cls, path: Path | str) -> "NodeConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class UserConfig:
    """The end-user node's config: its own NodeConfig plus the placement it routes over and the policy."""

    node: NodeConfig
    placement: Placement
    policy: Policy = Policy.SKIP
    on_slow: OnSlow = OnSlow.WAIT  # what a straggler gets (payload/stragglers.py)
    prefill_chunk: int = 0  # positions per frame of a long step's input, pipelined along the chain (0: one frame)

    @classmethod
    def load(cls, path: Path | str) -> "UserConfig":
        data = json.loads(Path(path).read_text())
        return cls(NodeConfig.from_dict(data["node"]), Placement.from_dict(data["placement"]),
                   Policy(data.get("policy", "skip")), OnSlow(data.get("on_slow", "wait")),
                   int(data.get("prefill_chunk", 0)))

    def to_json(self) -> str:
        return json.dumps({"node": json.loads(self.node.to_json()), "placement": self.placement.to_dict(),
                           "policy": self.policy.value, "on_slow": self.on_slow.value,
                           "prefill_chunk": self.prefill_chunk})


def compute_threads() -> int:
    """Torch threads a node computes with (``JARVIS_TORCH_THREADS``, default 1).

    Float sums depend on the thread count, so anything that must reproduce a
    node's numbers bit for bit (the consistency oracle) uses the same count.
    """
    return int(os.environ.get("JARVIS_TORCH_THREADS", "1"))
