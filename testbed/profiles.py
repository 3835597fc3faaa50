"""Link profiles: the shipped data file, user files, inline dicts, and the ``--links`` spec.

Every testbed speaks of links by profile (emu shapes them, Colosseum and the Pis
check that the scenario's profiles match the real radios), so they live in the
shared toolkit.  A profile is data with a citation (``source``), never a
constant in code, so a reader can check every number against where it came from
and a user can calibrate their own from ``ping``/``iperf3``.  The flat fields
of a :class:`LinkProfile` describe the uplink (node -> network);
:class:`DuplexProfile` adds a separate downlink because Wi-Fi and cellular
links are asymmetric.

``--links SPEC`` assigns a profile to each node's access link.  SPEC is a
comma-separated list of items, applied left to right:

* ``NAME``: the profile of every node not named by an index item
  (default ``wifi``);
* ``I=NAME``: node ``I`` (0 is the user node, 1..N the layer nodes);
* ``A-B=NAME``: nodes ``A`` to ``B`` inclusive.

Examples: ``wifi`` (all Wi-Fi), ``1=wifi,2=cellular,3-5=server`` (user node
gets the default ``wifi``), ``server,0=cellular`` (a cellular user in front of
wired servers).  NAME is a shipped profile (``wifi``, ``cellular``,
``server``, ``ideal``; see ``testbed/profiles.yaml`` with the source of every
number) or one from the user's profile file (same format).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from payload.errors import JarvisError
from testbed.traces import TraceError, read_trace, resolve_trace

SHIPPED = Path(__file__).with_name("profiles.yaml")
DISTRIBUTIONS = ("normal", "uniform")
DEFAULT_PROFILE = "wifi"
_DIRECTION_KEYS = ("delay_ms", "jitter_ms", "distribution", "loss_pct", "rate_mbit", "queue_pkts", "trace")
_PROFILE_KEYS = (*_DIRECTION_KEYS, "source", "uplink", "downlink")


class ProfileError(JarvisError, ValueError):
    """A profile, profile file or ``--links`` spec given by the user is invalid."""


@dataclass(frozen=True)
class LinkProfile:
    """One direction-aware access-link profile.  Units: ms, percent, Mbit/s, packets."""

    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "normal"
    loss_pct: float = 0.0
    rate_mbit: float | None = None
    queue_pkts: int = 1000
    source: str = ""
    trace: str | None = None  # a Mahimahi delivery trace (testbed/traces.py), resolved to its file; replaces rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DuplexProfile(LinkProfile):
    """A LinkProfile whose own fields are the uplink, plus a different downlink."""

    downlink: LinkProfile | None = None


def directions(profile: LinkProfile) -> tuple[LinkProfile, LinkProfile]:
    """(uplink, downlink) of any profile; a plain LinkProfile is the same both ways."""
    up = LinkProfile(**{f.name: getattr(profile, f.name) for f in dataclasses.fields(LinkProfile)})
    down = getattr(profile, "downlink", None)
    return up, (down if down is not None else up)


def _number(name: str, key: str, value: object, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bound = f"between {low} and {high}" if high != math.inf else f">= {low}"
        raise ProfileError(f"profile {name!r}: {key} must be a number {bound}, got {value!r}")
    return float(value)


def _direction(name: str, fields: Mapping[str, object], source: str) -> LinkProfile:
    rate = fields.get("rate_mbit")
    queue = fields.get("queue_pkts", 1000)
    if isinstance(queue, bool) or not isinstance(queue, int) or queue < 1:
        raise ProfileError(f"profile {name!r}: queue_pkts must be an integer >= 1, got {queue!r}")
    distribution = fields.get("distribution", "normal")
    if distribution not in DISTRIBUTIONS:
        raise ProfileError(f"profile {name!r}: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if rate is not None and _number(name, "rate_mbit", rate, low=0.0) == 0:
        raise ProfileError(f"profile {name!r}: rate_mbit must be > 0 (omit it or use null for unlimited)")
    trace = fields.get("trace")
    if trace is not None:
        if not isinstance(trace, str) or not trace:
            raise ProfileError(f"profile {name!r}: trace must name a trace file, got {trace!r}")
        if rate is not None:
            raise ProfileError(f"profile {name!r}: a trace sets the rate; drop rate_mbit where trace is given")
        try:
            trace = str(resolve_trace(trace))
            read_trace(trace)
        except TraceError as exc:
            raise ProfileError(f"profile {name!r}: {exc}") from None
    return LinkProfile(
        name=name,
        delay_ms=_number(name, "delay_ms", fields.get("delay_ms", 0.0), low=0.0, high=60_000.0),
        jitter_ms=_number(name, "jitter_ms", fields.get("jitter_ms", 0.0), low=0.0, high=60_000.0),
        distribution=str(distribution),
        loss_pct=_number(name, "loss_pct", fields.get("loss_pct", 0.0), low=0.0, high=100.0),
        rate_mbit=None if rate is None else float(rate),
        queue_pkts=queue,
        source=source,
        trace=trace,
    )


def profile_from_dict(name: str, data: Mapping[str, object]) -> LinkProfile:
    """Validate one profile given as a mapping (YAML entry or inline dict) and build it.

    Flat keys apply to both directions; ``uplink``/``downlink`` mappings override
    them per direction.  The result is a plain LinkProfile when both directions
    agree, otherwise a :class:`DuplexProfile`.
    """
    if not isinstance(data, Mapping):
        raise ProfileError(f"profile {name!r} must be a mapping of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_PROFILE_KEYS) - {"name"})
    if unknown:
        raise ProfileError(f"profile {name!r}: unknown keys {unknown}; allowed: {list(_PROFILE_KEYS)}")
    source = str(data.get("source", "") or "")
    flat = {k: data[k] for k in _DIRECTION_KEYS if k in data}
    per_dir = {}
    for key in ("uplink", "downlink"):
        override = data.get(key) or {}
        if not isinstance(override, Mapping):
            raise ProfileError(f"profile {name!r}: {key} must be a mapping, got {override!r}")
        bad = sorted(set(override) - set(_DIRECTION_KEYS))
        if bad:
            raise ProfileError(f"profile {name!r}: unknown {key} keys {bad}; allowed: {list(_DIRECTION_KEYS)}")
        per_dir[key] = _direction(name, {**flat, **override}, source)
    up, down = per_dir["uplink"], per_dir["downlink"]
    if up == down:
        return up
    return DuplexProfile(**dataclasses.asdict(up), downlink=down)


def profile_to_dict(profile: LinkProfile) -> dict:
    """The inverse of :func:`profile_from_dict` (explicit uplink and downlink), for manifests and configs."""
    up, down = directions(profile)
    strip = ("name", "source")
    return {"name": profile.name, "source": profile.source,
            "uplink": {k: v for k, v in up.to_dict().items() if k not in strip},
            "downlink": {k: v for k, v in down.to_dict().items() if k not in strip}}


def load_profiles(path: Path | str | None = None) -> dict[str, LinkProfile]:
    """The shipped profiles, plus (overriding by name) those in the user's YAML file ``path``."""
    profiles = _load_file(SHIPPED)
    if path is not None:
        profiles.update(_load_file(Path(path)))
    return profiles


def _load_file(path: Path) -> dict[str, LinkProfile]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping) or not data:
        raise ProfileError(f"profile file {path} must map profile names to their fields")
    return {str(name): profile_from_dict(str(name), fields) for name, fields in data.items()}


def resolve(spec: str | Mapping[str, object] | LinkProfile, profiles: Mapping[str, LinkProfile] | None = None
            ) -> LinkProfile:
    """A profile from its name, an inline dict (with a ``name`` key) or an existing LinkProfile."""
    if isinstance(spec, LinkProfile):
        return spec
    if isinstance(spec, Mapping):
        return profile_from_dict(str(spec.get("name", "inline")), spec)
    known = load_profiles() if profiles is None else profiles
    if spec not in known:
        raise ProfileError(f"unknown link profile {spec!r}; known: {sorted(known)}")
    return known[spec]


_ITEM = re.compile(r"^(?:(\d+)(?:-(\d+))?=)?([A-Za-z0-9_.-]+)$")


def parse_links_spec(spec: str | None, nodes: int, profiles: Mapping[str, LinkProfile] | None = None
                     ) -> dict[int, LinkProfile]:
    """Profiles for nodes 0..``nodes`` from a ``--links`` spec (format in this module's docstring)."""
    known = load_profiles() if profiles is None else profiles
    default = DEFAULT_PROFILE
    chosen: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        match = _ITEM.match(item)
        if match is None:
            raise ProfileError(f"bad --links item {item!r}: expected NAME, I=NAME or A-B=NAME")
        first, last, name = match.groups()
        if first is None:
            default = name
            continue
        lo, hi = int(first), int(last if last is not None else first)
        if lo > hi or hi > nodes:
            raise ProfileError(f"--links item {item!r}: node indices must lie in 0..{nodes} (low <= high)")
        chosen.update({i: name for i in range(lo, hi + 1)})
    return {i: resolve(chosen.get(i, default), known) for i in range(nodes + 1)}
