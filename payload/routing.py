"""Pure routing: placement of layer slices, and the route a step takes.  No I/O.

The end-user node (index 0) is the single authority for routes: it plans each
step's source route from the placement and what it knows of node health, and
stamps the step with a new epoch whenever it re-sends.  Nodes only follow the
route in the frame.  One authority is what makes the consistency oracle hold:
two nodes can never reroute the same step concurrently into diverging caches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from payload.errors import JarvisError
from payload.frames import Hop, HopFlag
from payload.stragglers import OnSlow

USER_NODE = 0  # the end-user node: tokenizer, embeddings, head; the single authority for routes


class RouteError(JarvisError, RuntimeError):
    """No route can serve the model under the current policy (e.g. no live replica)."""


class PlacementError(JarvisError, ValueError):
    """A placement does not cover the model's layers in order, or names a replica it cannot hold."""


class Policy(str, enum.Enum):
    """What a step does about a node that is out: skip its layers, send them to a replica, or bridge them
    (an affine map fitted offline stands in for them: :mod:`payload.bridges`); the ``replica-then-`` forms
    fall back when no replica is live."""

    SKIP = "skip"
    REPLICA = "replica"
    REPLICA_THEN_SKIP = "replica-then-skip"
    BRIDGE = "bridge"
    REPLICA_THEN_BRIDGE = "replica-then-bridge"

    @property
    def uses_replicas(self) -> bool:
        return self in (Policy.REPLICA, Policy.REPLICA_THEN_SKIP, Policy.REPLICA_THEN_BRIDGE)

    @property
    def bridges(self) -> bool:
        """The deployment needs the placement's bridges (every node holds them)."""
        return self in (Policy.BRIDGE, Policy.REPLICA_THEN_BRIDGE)


@dataclass(frozen=True)
class Placement:
    """Which node holds which layers.

    ``slices[k] = (first, end)`` is node k's primary slice (k = 1..N, contiguous
    and covering every layer in order); ``replicas[k]`` lists the nodes whose
    slices node k also holds.
    """

    num_layers: int
    slices: dict[int, tuple[int, int]]
    replicas: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = 0
        for node in sorted(self.slices):
            first, end = self.slices[node]
            if first != expected or end <= first:
                raise PlacementError(
                    f"node {node} holds layers [{first}, {end}) but the next uncovered layer is {expected}: "
                    "slices must be contiguous, non-empty and in node order"
                )
            expected = end
        if expected != self.num_layers:
            raise PlacementError(f"slices cover layers [0, {expected}) of a {self.num_layers}-layer model")
        for holder, owners in self.replicas.items():
            for owner in owners:
                if owner not in self.slices or owner == holder:
                    raise PlacementError(f"node {holder} cannot hold a replica of node {owner}")

    @property
    def nodes(self) -> list[int]:
        return sorted(self.slices)

    def to_dict(self) -> dict:
        """JSON form (node configs, deployment.json); :meth:`from_dict` reads it back."""
        return {"num_layers": self.num_layers,
                "slices": {str(k): list(v) for k, v in self.slices.items()},
                "replicas": {str(k): list(v) for k, v in self.replicas.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Placement":
        """The placement :meth:`to_dict` wrote (keys are node indices as strings, as JSON has them)."""
        try:
            return cls(int(data["num_layers"]), {int(k): (int(v[0]), int(v[1])) for k, v in data["slices"].items()},
                       {int(k): tuple(int(x) for x in v) for k, v in data.get("replicas", {}).items()})
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, PlacementError):
                raise
            raise PlacementError(f"invalid placement {data!r}: {exc!r}") from None

    def ranges_of(self, node: int) -> list[tuple[int, int]]:
        """Every layer range node ``node`` holds: its own slice, then its replicas."""
        own = [self.slices[node]] if node in self.slices else []
        return own + [self.slices[o] for o in self.replicas.get(node, ())]

    def holders_of(self, owner: int) -> list[int]:
        """Nodes holding a replica of ``owner``'s slice, in node order."""
        return sorted(h for h, owners in self.replicas.items() if owner in owners)

    def critical(self, node: int) -> bool:
        """First and last layers matter most (the original study): flag their nodes."""
        first, end = self.slices[node]
        return first == 0 or end == self.num_layers


def even_placement(num_layers: int, nodes: int, replicas: int = 0) -> Placement:
    """Split ``num_layers`` into ``nodes`` contiguous slices whose sizes differ by at most one.

    With ``replicas=K`` each slice is also held by the K following nodes
    (cyclically), so every slice lives on K+1 nodes.
    """
    if nodes < 1 or nodes > num_layers:
        raise PlacementError(f"cannot split {num_layers} layers over {nodes} nodes")
    if not 0 <= replicas < nodes:
        raise PlacementError(f"replicas={replicas} needs at least {replicas + 1} nodes")
    base, extra = divmod(num_layers, nodes)
    slices, start = {}, 0
    for k in range(1, nodes + 1):
        size = base + (1 if k <= extra else 0)
        slices[k] = (start, start + size)
        start += size
    return Placement(num_layers, slices, _cyclic_replicas(nodes, replicas))


def _cyclic_replicas(nodes: int, replicas: int) -> dict[int, tuple[int, ...]]:
    held: dict[int, list[int]] = {}
    for owner in range(1, nodes + 1):
        for j in range(1, replicas + 1):
            holder = (owner - 1 + j) % nodes + 1
            held.setdefault(holder, []).append(owner)
    return {h: tuple(o) for h, o in held.items()}


def explicit_placement(num_layers: int, ranges: list[tuple[int, int]], replicas: int = 0) -> Placement:
    """Placement from an explicit list of ``(first, end)`` per node 1..N."""
    slices = {k + 1: (int(a), int(b)) for k, (a, b) in enumerate(ranges)}
    return Placement(num_layers, slices, _cyclic_replicas(len(slices), replicas))


def memory_weighted_placement(num_layers: int, memory: dict[int, int], replicas: int = 0) -> Placement:
    """Give each node a share of layers proportional to its reported free memory (at least one)."""
    nodes = sorted(memory)
    total = sum(memory.values())
    if total <= 0:
        raise PlacementError("nodes reported no memory")
    sizes = [max(1, round(num_layers * memory[n] / total)) for n in nodes]
    while sum(sizes) > num_layers:
        sizes[sizes.index(max(sizes))] -= 1
    while sum(sizes) < num_layers:
        sizes[sizes.index(min(sizes))] += 1
    ranges, start = [], 0
    for size in sizes:
        ranges.append((start, start + size))
        start += size
    return explicit_placement(num_layers, ranges, replicas)


@dataclass(frozen=True)
class RoutePlan:
    """A step's route plus what it means for the user: the nodes routed around, their layers (skipped or
    bridged), and the bridged spans ``(first, end)``.  A bridge between two hops is applied by the hop before
    it (flagged BRIDGE); one before the first hop, by the user node (:attr:`lead_bridge`)."""

    hops: tuple[Hop, ...]
    skipped_nodes: tuple[int, ...]
    skipped_layers: tuple[int, ...]
    critical: bool
    bridges: tuple[tuple[int, int], ...] = ()

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(i for h in self.hops for i in h.layers)

    @property
    def lead_bridge(self) -> tuple[int, int] | None:
        """The span the user node bridges before the first hop, if the first slices are lost."""
        return self.bridges[0] if self.bridges and self.bridges[0][0] == 0 else None


def plan_route(
    placement: Placement,
    dead: frozenset[int] | set[int],
    *,
    policy: Policy = Policy.SKIP,
    warm: frozenset[tuple[int, int]] | set[tuple[int, int]] = frozenset(),
    positions: int = 0,
    slow: frozenset[int] | set[int] = frozenset(),
    on_slow: OnSlow = OnSlow.WAIT,
) -> RoutePlan:
    """Route a step through the live nodes.

    ``warm`` holds ``(node, first_layer)`` pairs whose caches cover every
    position so far; a hop that is not warm gets the REPLAY flag when
    ``positions > 0``, so its predecessor sends history and it rebuilds.
    ``slow`` nodes (stragglers: payload/stragglers.py) are routed around as
    ``on_slow`` says: skipped (bridged under a bridge policy), served by a live
    replica that is not slow itself (else kept), or kept (``wait``).
    """
    avoid = set(dead) | (set(slow) if on_slow != OnSlow.WAIT else set())
    hops: list[Hop] = []
    skipped_nodes: list[int] = []
    skipped_layers: list[int] = []
    critical = False
    for owner in placement.nodes:
        first, end = placement.slices[owner]
        server = owner if owner not in avoid else None
        if server is None and owner not in dead:  # a straggler: skipped, or to a replica (none: keep waiting)
            if on_slow == OnSlow.REPLICA:
                server = next((h for h in placement.holders_of(owner) if h not in avoid), owner)
        elif server is None and policy.uses_replicas:
            server = next((h for h in placement.holders_of(owner) if h not in avoid), None)
            if server is None and policy == Policy.REPLICA:
                raise RouteError(f"node {owner} (layers {first}-{end - 1}) failed and no live replica holds them")
        if server is None:
            skipped_nodes.append(owner)
            skipped_layers.extend(range(first, end))
            critical = critical or placement.critical(owner)
            continue
        replay = positions > 0 and (server, first) not in warm
        hops.append(Hop(server, first, end, HopFlag.REPLAY if replay else HopFlag.NONE))
    if not hops:
        raise RouteError("every layer node has failed")
    bridges: tuple[tuple[int, int], ...] = ()
    if policy.bridges:
        hops, bridges = _bridged(hops, placement.num_layers)
    return RoutePlan(tuple(hops), tuple(skipped_nodes), tuple(skipped_layers), critical, bridges)


def _bridged(hops: list[Hop], num_layers: int) -> tuple[list[Hop], tuple[tuple[int, int], ...]]:
    """Every gap of lost layers as a bridged span, and each hop before a gap flagged to bridge it."""
    spans = [(0, hops[0].first)] if hops[0].first > 0 else []
    flagged = []
    for index, hop in enumerate(hops):
        follows = hops[index + 1].first if index + 1 < len(hops) else num_layers
        if follows > hop.end:
            spans.append((hop.end, follows))
            hop = Hop(hop.node, hop.first, hop.end, hop.flags | HopFlag.BRIDGE)
        flagged.append(hop)
    return flagged, tuple(spans)
