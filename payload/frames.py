"""Sans-IO wire codec for JARVIS frames: no sockets, no torch, no pickle.

Every frame on the wire is::

    u32 length | fixed header | header tag (16) | route entries | payload | HMAC-SHA256 (32 bytes)

``length`` counts everything after itself.  The header names its sender, the
sender's boot (its start time) and a sequence number that sender never
repeats, plus the route and payload lengths.  The header tag (a truncated
HMAC under the deployment's key, over the length prefix and the header) is
checked as soon as those ~120 bytes are in, so a connection without the key
cannot make a node buffer a body at all; the trailing HMAC covers the whole
frame and is computed incrementally as the body arrives (no second pass over
a large frame on the event loop).  A frame that was truncated, corrupted or
forged is rejected before any field is trusted.  The decoder refuses a length
above its cap (derived from the model: the largest legitimate frame) before
buffering it.

Freshness is the receiver's: :class:`ReplayWindow` accepts each (sender, boot,
sequence) once, so a captured frame replayed later is refused.  With
``encrypt`` the payload is sealed with ChaCha20-Poly1305 (the header and route
as associated data, a nonce derived from sender, boot and sequence), so
hidden states do not travel in clear.

Errors are split by blame (after h11): :class:`PeerFrameError` means the peer
sent something invalid (close that connection, keep serving others);
:class:`LocalFrameError` means this process tried to encode nonsense (a bug).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

VERSION = 2
MAGIC = b"JV"
MAC_BYTES = 32
HEADER_TAG_BYTES = 16
AEAD_TAG_BYTES = 16
MIN_KEY_BYTES = 32
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
MAX_ROUTE = 255

_PREFIX = struct.Struct("!I")
# magic, version, type, flags, session, step, epoch, pos_start, n_pos, replay_len,
# hidden, dtype, hop, route_len, src, dst, t_a, t_b, payload_len, boot, seq
_HEADER = struct.Struct("!2sBBH16sIIIIIIBBBHHQQIQQ")
_HOP = struct.Struct("!HHHBx")
_HEAD = _PREFIX.size + _HEADER.size + HEADER_TAG_BYTES  # what must be in before anything else is trusted
# Everything of a frame but its payload, at the longest route and sealed: payload + this is the largest frame.
MAX_OVERHEAD = _HEAD + MAX_ROUTE * _HOP.size + AEAD_TAG_BYTES + MAC_BYTES


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
    BYE = 8  # the receiver closes an idle connection: not a failure, reconnect when needed


class FrameFlag(enum.IntFlag):
    NONE = 0
    SEALED = 1  # the payload is ChaCha20-Poly1305 ciphertext with its 16-byte tag
    MORE = 2  # more frames of this step follow (a chunked prefill): the receiver need not hold the session for it
    BATCH = 4  # more rows of the batch this decode step was computed in follow to the same receiver (batch_decode)


class WireDtype(enum.IntEnum):
    """How hidden states travel.  INT8 and FP8_E4M3 are compressed (:mod:`payload.tensors`): per position, the
    codes of its values, a float32 scale, and its largest-magnitude values (outliers) kept in bfloat16."""

    NONE = 0
    FLOAT32 = 1
    BFLOAT16 = 2
    FLOAT16 = 3
    INT8 = 4
    FP8_E4M3 = 5

    @property
    def itemsize(self) -> int:
        return {0: 1, 1: 4, 2: 2, 3: 2, 4: 1, 5: 1}[int(self)]

    @property
    def scaled(self) -> bool:
        """Whether each position carries a scale and outliers (the compressed dtypes)."""
        return self in (WireDtype.INT8, WireDtype.FP8_E4M3)

    def outliers(self, hidden: int) -> int:
        """How many of a position's ``hidden`` values travel in bfloat16 beside the codes (0 if not compressed)."""
        share = OUTLIER_SHARE.get(self)
        return max(1, hidden // share) if share else 0

    def position_bytes(self, hidden: int) -> int:
        """Payload bytes of one position of ``hidden`` values: codes, then scale and outliers when compressed."""
        if not self.scaled:
            return hidden * self.itemsize
        return hidden * self.itemsize + SCALE_BYTES + self.outliers(hidden) * OUTLIER_BYTES

    @classmethod
    def from_name(cls, name: str) -> "WireDtype":
        try:
            return WIRE_NAMES[name]
        except KeyError:
            raise LocalFrameError(f"unknown wire dtype {name!r}; choose one of {sorted(WIRE_NAMES)}") from None


SCALE_BYTES = 4  # a compressed position's float32 scale
OUTLIER_BYTES = 4  # an outlier: its int16 index (hidden sizes up to 32,768) and its bfloat16 value
# One value in this many travels as an outlier.  Measured (benchmarks/wire_quality.py): residual streams carry a
# few values hundreds of times the median (Gemma 3: 37,000 against 234), which a per-position int8 scale cannot
# span (KL 4.9 nats/token on Gemma 3 270M with none); int8 needs about 1 in 16, e4m3 (its own exponent) far fewer.
OUTLIER_SHARE = {WireDtype.INT8: 16, WireDtype.FP8_E4M3: 128}
WIRE_NAMES = {"float32": WireDtype.FLOAT32, "bfloat16": WireDtype.BFLOAT16, "float16": WireDtype.FLOAT16,
              "int8": WireDtype.INT8, "fp8": WireDtype.FP8_E4M3}


class HopFlag(enum.IntFlag):
    NONE = 0
    REPLAY = 1  # the sender must prepend its history so this hop can rebuild its cache
    BRIDGE = 2  # this hop bridges the lost layers between its end and the next hop's first (or the model's end)


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
    boot: int = 0  # the sender's boot (set by the sender's FrameSigner, read back by the decoder)
    seq: int = 0  # the sender's sequence number, never repeated within one boot

    def expected_payload_bytes(self) -> int:
        return self.n_pos * self.dtype.position_bytes(self.hidden)

    def reply(self, type_: FrameType, payload: bytes = b"", **changes) -> "Frame":
        """A control frame about this one (ACK/ERROR), addressed back to its sender; it names the frame's first
        position too, which tells apart the chunks of one step (same session, step and epoch)."""
        return Frame(
            type=type_, session=self.session, step=self.step, epoch=self.epoch, pos_start=self.pos_start,
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


def check_key(key: bytes) -> bytes:
    """A deployment key must hold at least 256 bits: an empty or short key would sign frames anyone can forge."""
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise LocalFrameError(f"a frame key needs at least {MIN_KEY_BYTES} bytes, got "
                              f"{len(key) if isinstance(key, bytes) else type(key).__name__}")
    return key


class Sealing:
    """Authenticated encryption of payloads (ChaCha20-Poly1305), keyed by a key derived from the deployment's."""

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # only when sealing is on

        self._aead = ChaCha20Poly1305(hmac.digest(check_key(key), b"jarvis frame sealing v1", "sha256"))

    @staticmethod
    def nonce(src: int, boot: int, seq: int) -> bytes:
        """Unique per (sender, boot, sequence): a sender never repeats a sequence number within a boot."""
        return hashlib.blake2s(struct.pack("!HQQ", src, boot, seq), digest_size=12).digest()

    def seal(self, nonce: bytes, payload: bytes, associated: bytes) -> bytes:
        return self._aead.encrypt(nonce, payload, associated)

    def open(self, nonce: bytes, sealed: bytes, associated: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(nonce, sealed, associated)
        except InvalidTag:
            raise PeerFrameError("sealed payload failed authentication") from None


def _header_tag(key: bytes, prefix_and_header: bytes) -> bytes:
    """The tag that authenticates a frame's length prefix and header before its body is read."""
    return hmac.digest(key, prefix_and_header, "sha256")[:HEADER_TAG_BYTES]


def encode(frame: Frame, key: bytes, *, boot: int | None = None, seq: int | None = None,
           sealing: Sealing | None = None) -> bytes:
    """Serialise and authenticate ``frame`` (sealing its payload with ``sealing``); LocalFrameError if invalid.

    ``boot`` and ``seq`` default to the frame's own; senders use :class:`FrameSigner`, which numbers them.
    """
    check_key(key)
    if len(frame.route) > MAX_ROUTE:
        raise LocalFrameError(f"route of {len(frame.route)} hops exceeds {MAX_ROUTE}")
    if frame.type == FrameType.DATA and len(frame.payload) != frame.expected_payload_bytes():
        raise LocalFrameError(
            f"DATA payload is {len(frame.payload)} bytes, expected {frame.expected_payload_bytes()} "
            f"for {frame.n_pos} positions x {frame.hidden} x {frame.dtype.name}"
        )
    boot = frame.boot if boot is None else boot
    seq = frame.seq if seq is None else seq
    flags = frame.flags | (FrameFlag.SEALED if sealing is not None and frame.payload else 0)
    payload_len = len(frame.payload) + (AEAD_TAG_BYTES if flags & FrameFlag.SEALED else 0)
    header = _HEADER.pack(
        MAGIC, VERSION, int(frame.type), _u(int(flags), 16, "flags"), frame.session.bytes,
        _u(frame.step, 32, "step"), _u(frame.epoch, 32, "epoch"), _u(frame.pos_start, 32, "pos_start"),
        _u(frame.n_pos, 32, "n_pos"), _u(frame.replay_len, 32, "replay_len"), _u(frame.hidden, 32, "hidden"),
        int(frame.dtype), _u(frame.hop, 8, "hop"), len(frame.route), _u(frame.src, 16, "src"),
        _u(frame.dst, 16, "dst"), _u(frame.t_a, 64, "t_a"), _u(frame.t_b, 64, "t_b"), _u(payload_len, 32, "payload"),
        _u(boot, 64, "boot"), _u(seq, 64, "seq"),
    )
    route = _route_bytes(frame.route)
    body_len = len(header) + HEADER_TAG_BYTES + len(route) + payload_len + MAC_BYTES
    prefix = _PREFIX.pack(body_len)
    tag = _header_tag(key, prefix + header)
    payload = frame.payload
    if flags & FrameFlag.SEALED:
        payload = sealing.seal(Sealing.nonce(frame.src, boot, seq), payload, prefix + header + route)
    signed = b"".join((prefix, header, tag, route, payload))
    return signed + hmac.digest(key, signed, "sha256")


class FrameSigner:
    """A sending process's frames: its boot (its start time, so a restart orders after the last boot) and a
    sequence number it never repeats.  One per process, shared by all its connections."""

    def __init__(self, key: bytes, *, sealing: Sealing | None = None, boot: int | None = None):
        self.key = check_key(key)
        self.sealing = sealing
        self.boot = time.time_ns() if boot is None else boot
        self._seq = 0

    def encode(self, frame: Frame) -> bytes:
        self._seq += 1
        return encode(frame, self.key, boot=self.boot, seq=self._seq, sealing=self.sealing)


class ReplayWindow:
    """Which (sender, boot, sequence) a receiving process has accepted: each is accepted once.

    A later boot of a sender replaces its earlier one (the process restarted);
    within a boot, a sequence number is fresh if it was not seen and lies
    within ``window`` of the highest seen (frames of one sender reach a
    receiver over two connections, its own and the receiver's, so they may
    interleave a little).  Everything else is a replay.
    """

    def __init__(self, window: int = 4096):
        self.window = window
        self._senders: dict[int, tuple[int, int, set[int]]] = {}  # src -> (boot, highest seq, seen seqs)

    def fresh(self, src: int, boot: int, seq: int) -> bool:
        """Whether (src, boot, seq) is new; records it if so."""
        known = self._senders.get(src)
        if known is None or boot > known[0]:
            self._senders[src] = (boot, seq, {seq})
            return True
        last_boot, highest, seen = known
        if boot < last_boot or seq <= highest - self.window or seq in seen:
            return False
        seen.add(seq)
        if seq > highest:
            self._senders[src] = (boot, seq, seen)
            if len(seen) > 2 * self.window:
                seen.difference_update([s for s in seen if s <= seq - self.window])
        return True


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
_SKIPPED = object()  # a frame refused at its header and dropped


class Decoder:
    """Incremental decoder: ``feed`` bytes, then call ``next_frame`` until it returns NEED_DATA.

    After a PeerFrameError the byte stream has lost its framing; the caller must
    drop the connection (the decoder refuses further use).  ``authenticated``
    tells whether a header under the key has been seen on this stream (a peer
    without the key never gets that far).  ``fresh`` is asked about each
    authentic header's sender, boot and sequence: a frame it refuses (a
    replay) is dropped without its body being hashed or parsed, and counted in
    ``replays``.
    """

    def __init__(self, key: bytes, *, max_frame: int = DEFAULT_MAX_FRAME, sealing: Sealing | None = None,
                 require_sealed: bool = False, fresh: Callable[[int, int, int, int], bool] | None = None):
        self._key = check_key(key)
        self._fresh = fresh  # (src, boot, seq, type) -> whether to accept: asked once the header is authentic
        self._skip = 0
        self._max = max_frame
        self._sealing = sealing
        self._require_sealed = require_sealed
        self._buf = bytearray()
        self._broken: PeerFrameError | None = None
        self._mac = None  # running HMAC of the frame being received, once its header is authentic
        self._hashed = 0  # bytes of the current frame fed into _mac
        self.authenticated = False
        self.replays = 0

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
        while True:
            frame = self._next()
            if frame is not _SKIPPED:
                return frame

    def _next(self) -> Frame | _NeedData | object:
        if self._broken:
            raise self._broken
        if self._skip:  # the rest of a frame refused at its header (a replay): dropped unread
            dropped = min(self._skip, len(self._buf))
            del self._buf[:dropped]
            self._skip -= dropped
            return _SKIPPED if not self._skip else NEED_DATA
        if len(self._buf) < _PREFIX.size:
            return NEED_DATA
        (body_len,) = _PREFIX.unpack_from(self._buf)
        if body_len > self._max:
            raise self._fail(f"frame length {body_len} exceeds the {self._max}-byte cap")
        if body_len < _HEADER.size + HEADER_TAG_BYTES + MAC_BYTES:
            raise self._fail(f"frame length {body_len} is shorter than a header")
        total = _PREFIX.size + body_len
        if self._mac is None:
            if len(self._buf) < _HEAD:
                return NEED_DATA
            head = bytes(self._buf[:_HEAD])
            if not hmac.compare_digest(head[-HEADER_TAG_BYTES:], _header_tag(self._key, head[:-HEADER_TAG_BYTES])):
                raise self._fail("frame authentication failed (wrong key or corrupted header)")
            self.authenticated = True
            if self._fresh is not None:
                fields = _HEADER.unpack_from(head, _PREFIX.size)
                if not self._fresh(fields[14], fields[19], fields[20], fields[2]):  # src, boot, seq, type
                    self._skip = total
                    self.replays += 1
                    return _SKIPPED
            if len(self._buf) >= total:  # the whole frame is in: one pass
                raw = bytes(self._buf[:total])
                del self._buf[:total]
                return self._finish(raw, hmac.digest(self._key, raw[:-MAC_BYTES], "sha256"))
            self._mac = hmac.new(self._key, head, "sha256")
            self._hashed = _HEAD
        upto = min(len(self._buf), total - MAC_BYTES)
        if upto > self._hashed:  # hash what has arrived, a chunk at a time, as it arrives
            self._mac.update(memoryview(self._buf)[self._hashed:upto])
            self._hashed = upto
        if len(self._buf) < total:
            return NEED_DATA
        raw = bytes(self._buf[:total])
        del self._buf[:total]
        digest, self._mac, self._hashed = self._mac.digest(), None, 0
        return self._finish(raw, digest)

    def _finish(self, raw: bytes, digest: bytes) -> Frame:
        if not hmac.compare_digest(raw[-MAC_BYTES:], digest):
            raise self._fail("frame authentication failed (wrong key or corrupted bytes)")
        return self._parse(raw[:-MAC_BYTES])

    def _parse_route(self, raw: bytes) -> tuple[Hop, ...]:
        route = []
        for node, first, end, hop_flags in _HOP.iter_unpack(raw):
            if end < first:
                raise self._fail(f"route hop for node {node} has end {end} < first {first}")
            route.append(Hop(node, first, end, HopFlag(hop_flags & int(HopFlag.REPLAY | HopFlag.BRIDGE))))
        return tuple(route)

    def _parse(self, signed: bytes) -> Frame:
        (magic, version, type_, flags, session, step, epoch, pos_start, n_pos, replay_len, hidden, dtype, hop,
         route_len, src, dst, t_a, t_b, payload_len, boot, seq) = _HEADER.unpack_from(signed, _PREFIX.size)
        if magic != MAGIC:
            raise self._fail(f"bad magic {magic!r}")
        if version != VERSION:
            raise self._fail(f"unsupported frame version {version} (this node speaks {VERSION})")
        try:
            ftype, wdtype = FrameType(type_), WireDtype(dtype)
        except ValueError as exc:
            raise self._fail(f"invalid field: {exc}") from None
        offset = _HEAD
        if len(signed) != offset + route_len * _HOP.size + payload_len:
            raise self._fail("frame length does not match its header's route and payload lengths")
        raw_route = signed[offset:offset + route_len * _HOP.size]
        route = _parsed_routes.get(raw_route)
        if route is None:
            route = self._parse_route(raw_route)
            if len(_parsed_routes) >= _ROUTE_CACHE_MAX:
                _parsed_routes.clear()
            _parsed_routes[raw_route] = route
        offset += len(raw_route)
        if route and hop >= len(route):
            raise self._fail(f"hop index {hop} outside a {len(route)}-hop route")
        payload = signed[offset:]
        if flags & FrameFlag.SEALED:
            if self._sealing is None:
                raise self._fail("sealed payload, but this node was not given frame sealing")
            payload = self._sealing.open(Sealing.nonce(src, boot, seq), payload, signed[:_PREFIX.size + _HEADER.size]
                                         + raw_route)
            flags &= ~FrameFlag.SEALED
        elif self._require_sealed and payload:
            raise self._fail("payload in clear, but this deployment seals every payload")
        frame = Frame(
            type=ftype, session=uuid.UUID(bytes=session), step=step, epoch=epoch, pos_start=pos_start,
            n_pos=n_pos, replay_len=replay_len, hidden=hidden, dtype=wdtype, hop=hop, route=route,
            src=src, dst=dst, t_a=t_a, t_b=t_b, flags=flags, payload=payload, boot=boot, seq=seq,
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
