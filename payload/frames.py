"""Sans-IO wire codec for JARVIS frames: no sockets, no torch, no pickle.

Every frame on the wire is::

    u32 length | fixed header | route entries | payload | HMAC-SHA256 (32 bytes)

``length`` counts everything after itself.  The HMAC (under the deployment's
key) covers the length prefix, header, route and payload, so a frame that was
truncated, corrupted or forged is rejected before any field is trusted.  The
decoder refuses a length above its cap *before* buffering it, so a hostile
length prefix cannot make a node allocate gigabytes.

Errors are split by blame (after h11): :class:`PeerFrameError` means the peer
sent something invalid (close that connection, keep serving others);
:class:`LocalFrameError` means this process tried to encode nonsense (a bug).
"""

from __future__ import annotations

import enum
import hmac
import struct
import uuid
from dataclasses import dataclass, field

VERSION = 1
MAGIC = b"JV"
MAC_BYTES = 32
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
MAX_ROUTE = 255

_PREFIX = struct.Struct("!I")
# magic, version, type, flags, session, step, epoch, pos_start, n_pos, replay_len,
# hidden, dtype, hop, route_len, src, dst, t_a, t_b, payload_len
_HEADER = struct.Struct("!2sBBH16sIIIIIIBBBHHQQI")
_HOP = struct.Struct("!HHHBx")


class FrameError(Exception):
    """Base class of frame errors."""


class PeerFrameError(FrameError):
    """The peer sent bytes that are not a valid, authentic frame."""


class LocalFrameError(FrameError):
    """This process asked to encode an invalid frame (a bug on our side)."""


class FrameType(enum.IntEnum):
    DATA = 1  # hidden states for a step, travelling along the route
    ACK = 2  # receipt of a DATA frame: carries T2 (receive) and T3 (ack send)
    ERROR = 3  # the receiver rejected a frame; payload is a UTF-8 reason
    FAIL = 4  # to the user node: a peer failed (payload: JSON)
    HEARTBEAT = 5  # node -> user node: alive (payload: JSON status)
    END = 6  # the user node ends a session: free its caches and history
    RESUME = 7  # user -> node: re-forward your output of this step along a new route, under a new epoch


class WireDtype(enum.IntEnum):
    NONE = 0
    FLOAT32 = 1
    BFLOAT16 = 2
    FLOAT16 = 3

    @property
    def itemsize(self) -> int:
        return {0: 1, 1: 4, 2: 2, 3: 2}[int(self)]

    @classmethod
    def from_name(cls, name: str) -> "WireDtype":
        names = {"float32": cls.FLOAT32, "bfloat16": cls.BFLOAT16, "float16": cls.FLOAT16}
        try:
            return names[name]
        except KeyError:
            raise LocalFrameError(f"unknown wire dtype {name!r}; choose one of {sorted(names)}") from None


class HopFlag(enum.IntFlag):
    NONE = 0
    REPLAY = 1  # the sender must prepend its history so this hop can rebuild its cache


@dataclass(frozen=True)
class Hop:
    """One hop of a source route: node ``node`` applies layers ``[first, end)``."""

    node: int
    first: int
    end: int
    flags: HopFlag = HopFlag.NONE

    @property
    def layers(self) -> range:
        return range(self.first, self.end)


@dataclass(frozen=True)
class Frame:
    """A decoded (or to-be-encoded) frame.  ``payload`` holds raw tensor bytes or UTF-8/JSON text."""

    type: FrameType
    session: uuid.UUID
    step: int = 0
    epoch: int = 0
    pos_start: int = 0
    n_pos: int = 0
    replay_len: int = 0
    hidden: int = 0
    dtype: WireDtype = WireDtype.NONE
    hop: int = 0
    route: tuple[Hop, ...] = ()
    src: int = 0
    dst: int = 0
    t_a: int = 0
    t_b: int = 0
    flags: int = 0
    payload: bytes = field(default=b"", repr=False)

    def expected_payload_bytes(self) -> int:
        return self.n_pos * self.hidden * self.dtype.itemsize

    def reply(self, type_: FrameType, payload: bytes = b"", **changes) -> "Frame":
        """A control frame about this one (ACK/ERROR), addressed back to its sender."""
        return Frame(
            type=type_, session=self.session, step=self.step, epoch=self.epoch,
            src=self.dst, dst=self.src, payload=payload, **changes,
        )


def _u(value: int, bits: int, name: str) -> int:
    if not isinstance(value, int) or value < 0 or value >= 1 << bits:
        raise LocalFrameError(f"{name}={value!r} does not fit in an unsigned {bits}-bit field")
    return value


# A chain re-sends the same route with every step, and packing or parsing 18 hops
# costs more than the rest of a decode frame; routes change only on failures, so
# both directions are memoised (bounded: cleared when full).
_ROUTE_CACHE_MAX = 256
_packed_routes: dict[int, tuple[tuple[Hop, ...], bytes]] = {}  # id(route) -> (route kept alive, bytes)
_parsed_routes: dict[bytes, tuple[Hop, ...]] = {}


def _route_bytes(route: tuple[Hop, ...]) -> bytes:
    cached = _packed_routes.get(id(route))
    if cached is not None and cached[0] is route:
        return cached[1]
    packed = b"".join(
        _HOP.pack(_u(h.node, 16, "hop.node"), _u(h.first, 16, "hop.first"), _u(h.end, 16, "hop.end"), int(h.flags))
        for h in route
    )
    if len(_packed_routes) >= _ROUTE_CACHE_MAX:
        _packed_routes.clear()
    _packed_routes[id(route)] = (route, packed)
    return packed


def encode(frame: Frame, key: bytes) -> bytes:
    """Serialise and authenticate ``frame``; raise LocalFrameError on an invalid frame."""
    if len(frame.route) > MAX_ROUTE:
        raise LocalFrameError(f"route of {len(frame.route)} hops exceeds {MAX_ROUTE}")
    if frame.type == FrameType.DATA and len(frame.payload) != frame.expected_payload_bytes():
        raise LocalFrameError(
            f"DATA payload is {len(frame.payload)} bytes, expected {frame.expected_payload_bytes()} "
            f"for {frame.n_pos} positions x {frame.hidden} x {frame.dtype.name}"
        )
    header = _HEADER.pack(
        MAGIC, VERSION, int(frame.type), _u(frame.flags, 16, "flags"), frame.session.bytes,
        _u(frame.step, 32, "step"), _u(frame.epoch, 32, "epoch"), _u(frame.pos_start, 32, "pos_start"),
        _u(frame.n_pos, 32, "n_pos"), _u(frame.replay_len, 32, "replay_len"), _u(frame.hidden, 32, "hidden"),
        int(frame.dtype), _u(frame.hop, 8, "hop"), len(frame.route), _u(frame.src, 16, "src"),
        _u(frame.dst, 16, "dst"), _u(frame.t_a, 64, "t_a"), _u(frame.t_b, 64, "t_b"), len(frame.payload),
    )
    route = _route_bytes(frame.route)
    body_len = len(header) + len(route) + len(frame.payload) + MAC_BYTES
    prefix = _PREFIX.pack(body_len)
    mac = hmac.digest(key, prefix + header + route + frame.payload, "sha256")
    return b"".join((prefix, header, route, frame.payload, mac))


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class Decoder:
    """Incremental decoder: ``feed`` bytes, then call ``next_frame`` until it returns NEED_DATA.

    After a PeerFrameError the byte stream has lost its framing; the caller must
    drop the connection (the decoder refuses further use).
    """

    def __init__(self, key: bytes, *, max_frame: int = DEFAULT_MAX_FRAME):
        self._key = key
        self._max = max_frame
        self._buf = bytearray()
        self._broken: PeerFrameError | None = None

    def feed(self, data: bytes) -> None:
        if self._broken:
            raise self._broken
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fail(self, message: str) -> PeerFrameError:
        self._broken = PeerFrameError(message)
        self._buf.clear()
        return self._broken

    def next_frame(self) -> Frame | _NeedData:
        if self._broken:
            raise self._broken
        if len(self._buf) < _PREFIX.size:
            return NEED_DATA
        (body_len,) = _PREFIX.unpack_from(self._buf)
        if body_len > self._max:
            raise self._fail(f"frame length {body_len} exceeds the {self._max}-byte cap")
        if body_len < _HEADER.size + MAC_BYTES:
            raise self._fail(f"frame length {body_len} is shorter than a header")
        total = _PREFIX.size + body_len
        if len(self._buf) < total:
            return NEED_DATA
        raw = bytes(self._buf[:total])
        del self._buf[:total]
        signed, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, hmac.digest(self._key, signed, "sha256")):
            raise self._fail("frame authentication failed (wrong key or corrupted bytes)")
        return self._parse(signed[_PREFIX.size:])

    def _parse_route(self, raw: bytes) -> tuple[Hop, ...]:
        route = []
        for node, first, end, hop_flags in _HOP.iter_unpack(raw):
            if end < first:
                raise self._fail(f"route hop for node {node} has end {end} < first {first}")
            route.append(Hop(node, first, end, HopFlag(hop_flags & int(HopFlag.REPLAY))))
        return tuple(route)

    def _parse(self, body: bytes) -> Frame:
        (magic, version, type_, flags, session, step, epoch, pos_start, n_pos, replay_len, hidden, dtype, hop,
         route_len, src, dst, t_a, t_b, payload_len) = _HEADER.unpack_from(body)
        if magic != MAGIC:
            raise self._fail(f"bad magic {magic!r}")
        if version != VERSION:
            raise self._fail(f"unsupported frame version {version} (this node speaks {VERSION})")
        try:
            ftype, wdtype = FrameType(type_), WireDtype(dtype)
        except ValueError as exc:
            raise self._fail(f"invalid field: {exc}") from None
        offset = _HEADER.size
        if len(body) != offset + route_len * _HOP.size + payload_len:
            raise self._fail("frame length does not match its header's route and payload lengths")
        raw_route = body[offset:offset + route_len * _HOP.size]
        route = _parsed_routes.get(raw_route)
        if route is None:
            route = self._parse_route(raw_route)
            if len(_parsed_routes) >= _ROUTE_CACHE_MAX:
                _parsed_routes.clear()
            _parsed_routes[raw_route] = route
        offset += len(raw_route)
        if route and hop >= len(route):
            raise self._fail(f"hop index {hop} outside a {len(route)}-hop route")
        frame = Frame(
            type=ftype, session=uuid.UUID(bytes=session), step=step, epoch=epoch, pos_start=pos_start,
            n_pos=n_pos, replay_len=replay_len, hidden=hidden, dtype=wdtype, hop=hop, route=route,
            src=src, dst=dst, t_a=t_a, t_b=t_b, flags=flags, payload=body[offset:],
        )
        if ftype == FrameType.DATA:
            if len(frame.payload) != frame.expected_payload_bytes():
                raise self._fail(
                    f"DATA payload is {len(frame.payload)} bytes but its header says "
                    f"{n_pos} x {hidden} x {wdtype.name}"
                )
            if replay_len > n_pos:
                raise self._fail(f"replay_len {replay_len} exceeds n_pos {n_pos}")
        return frame
