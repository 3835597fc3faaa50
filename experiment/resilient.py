"""``placement: resilient``: slice boundaries and replica placement chosen by how much each layer matters and
how likely each node is to fail.

The cost model is the one a skip study measures: what losing layers ``[first, end)`` costs in next-token KL
(plain skip, or bridged, to match the failure policy).  Measured on the fly, every contiguous span a slice can
be (up to the memory cap) is measured as itself (:class:`SliceCosts`): losing layers together is not the sum of
losing each (a campaign measured a plan made from single-layer sums at 17 % below even placement where the sums
promised 52 %).  From a skip study's file only single skips are read, and a span costs the sum of its layers'.
Nodes fail independently, node ``k`` with probability ``p[k]``; a slice is lost when its owner and every
holder of its replica are down, so::

    E[KL] = sum over slices s of  P(owner down) * prod P(holder down) * cost(s)

(one slice lost at a time: losses of two slices at once are counted as the sum of each, and ``fab campaign``
checks the result on the real chain).

With a budget of ``replicas`` slice copies (each copy on a node other than the owner), and each node holding
at most ``capacity`` layers (default: the most that even placement with the same budget puts on one node, so
the plan never needs more memory than even placement), every split of the layers into contiguous slices is
tried, and for each the copies go, one after another, where they lower E[KL] most (the best single copy is
exact; more copies are placed greedily).  Even placement is scored the same way with the same budget placed
the same way, so the two figures printed side by side are comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pandas as pd

from payload.routing import Placement, PlacementError, even_placement

DEFAULT_FAILURE_P = 0.1


class SliceCosts:
    """What losing layers ``[first, end)`` costs: the span's own measured KL where it was measured, else the
    sum of its layers' single-loss costs."""

    def __init__(self, layers: list[float], spans: dict[tuple[int, int], float] | None = None):
        self.layers = list(layers)
        self.spans = dict(spans or {})
        bad = [span for span in self.spans if not 0 <= span[0] < span[1] <= len(self.layers)]
        if bad:
            raise PlacementError(f"span costs for layers outside 0..{len(self.layers)}: {bad}")

    def __len__(self) -> int:
        return len(self.layers)

    def of(self, first: int, end: int) -> float:
        measured = self.spans.get((first, end))
        return measured if measured is not None else sum(self.layers[first:end])


def slice_costs(costs: list[float] | SliceCosts) -> SliceCosts:
    return costs if isinstance(costs, SliceCosts) else SliceCosts(costs)


@dataclass(frozen=True)
class Plan:
    """A placement with its modelled expected KL, beside even placement's with the same budget."""

    placement: Placement
    expected_kl: float
    even: Placement
    even_expected_kl: float
    basis: str = "additive single-layer costs"  # what the expected KLs are computed from

    def describe(self) -> str:
        def ranges(p: Placement) -> str:
            parts = []
            for node in p.nodes:
                first, end = p.slices[node]
                held = "".join(f" +replica of {o}" for o in p.replicas.get(node, ()))
                parts.append(f"{node}: {first}-{end - 1}{held}")
            return "; ".join(parts)

        gain = 1 - self.expected_kl / self.even_expected_kl if self.even_expected_kl else 0.0
        return (f"resilient placement: {ranges(self.placement)}; expected KL {self.expected_kl:.3f} nats/token\n"
                f"even placement:      {ranges(self.even)}; expected KL {self.even_expected_kl:.3f} nats/token\n"
                f"modelled: {gain:.0%} lower ({self.basis}; check with fab campaign)")


def study_costs(results_csv: Path | str, *, method: str = "skip") -> list[float]:
    """Per-layer costs from a skip study's results.csv: the mean KL of each single skip under ``method``."""
    table = pd.read_csv(results_csv)
    if "method" not in table:
        table["method"] = "skip"
    rows = table[(table.metric == "kl") & (table.n_skipped == 1) & (table.method == method)]
    if rows.empty:
        raise PlacementError(f"{results_csv} has no single-skip KL rows for method {method!r}: run "
                             f"`fab skip-study --single --metrics kl{'' if method == 'skip' else ' --methods ' + method}`")
    costs = dict(zip(rows.skip_set.astype(int), rows.value.astype(float)))
    missing = [k for k in range(max(costs) + 1) if k not in costs]
    if missing:
        raise PlacementError(f"{results_csv} lacks single skips of layers {missing}")
    return [costs[k] for k in range(len(costs))]


def expected_kl(placement: Placement, costs: list[float] | SliceCosts, p: dict[int, float]) -> float:
    costs = slice_costs(costs)
    total = 0.0
    for owner in placement.nodes:
        first, end = placement.slices[owner]
        lost = p[owner] * math.prod(p[h] for h in placement.holders_of(owner))
        total += lost * costs.of(first, end)
    return total


def _with_copies(slices: dict[int, tuple[int, int]], num_layers: int, costs: SliceCosts, p: dict[int, float],
                 copies: int, capacity: int) -> tuple[Placement, float]:
    """``slices`` with ``copies`` replicas placed greedily where each lowers E[KL] most, within ``capacity``."""
    held: dict[int, list[int]] = {}
    load = {n: b - a for n, (a, b) in slices.items()}
    placement = Placement(num_layers, slices)
    best_e = expected_kl(placement, costs, p)
    for _ in range(copies):
        choice = None
        for owner, (first, end) in slices.items():
            for holder in slices:
                if holder == owner or owner in held.get(holder, ()) or load[holder] + end - first > capacity:
                    continue
                trial = Placement(num_layers, slices, {h: tuple(o) for h, o in
                                                       {**held, holder: [*held.get(holder, []), owner]}.items()})
                e = expected_kl(trial, costs, p)
                if e < best_e - 1e-15:
                    best_e, choice = e, (holder, owner, trial)
        if choice is None:
            break
        holder, owner, placement = choice
        held.setdefault(holder, []).append(owner)
        load[holder] += slices[owner][1] - slices[owner][0]
    return placement, best_e


def default_capacity(num_layers: int, nodes: int, replicas: int) -> int:
    """Layers a node may hold: what even placement with the same copies needs on its fullest node."""
    sizes = sorted((b - a for a, b in even_placement(num_layers, nodes).slices.values()), reverse=True)
    return sizes[0] + sum(sizes[:min(replicas, max(nodes - 1, 0))])


def resilient_placement(num_layers: int, nodes: int, costs: list[float] | SliceCosts, p: dict[int, float], *,
                        replicas: int = 1, capacity: int | None = None) -> Plan:
    """The split and replica copies minimising the modelled E[KL]; with even placement's figure beside it."""
    costs = slice_costs(costs)
    if len(costs) != num_layers:
        raise PlacementError(f"{len(costs)} layer costs for a {num_layers}-layer model")
    if not 1 <= nodes <= num_layers:
        raise PlacementError(f"cannot split {num_layers} layers over {nodes} nodes")
    missing = [k for k in range(1, nodes + 1) if k not in p]
    if missing:
        raise PlacementError(f"no failure probability for nodes {missing}")
    even_slices = even_placement(num_layers, nodes).slices
    if capacity is None:
        capacity = default_capacity(num_layers, nodes, replicas)
    even, even_e = _with_copies(even_slices, num_layers, costs, p, replicas, capacity)
    best, best_e = even, even_e
    for cuts in combinations(range(1, num_layers), nodes - 1):
        bounds = (0, *cuts, num_layers)
        slices = {k + 1: (bounds[k], bounds[k + 1]) for k in range(nodes)}
        if max(b - a for a, b in slices.values()) > capacity:
            continue
        placement, e = _with_copies(slices, num_layers, costs, p, replicas, capacity)
        if e < best_e - 1e-12:
            best, best_e = placement, e
    basis = "measured span costs" if costs.spans else "additive single-layer costs"
    return Plan(best, best_e, even, even_e, basis)


def measured_costs(prepared: Path, *, method: str = "skip", tokens: int = 512, max_span: int = 1,
                   log=print) -> SliceCosts:
    """Costs measured now: the mean KL of losing each contiguous span of up to ``max_span`` layers, on ``tokens``
    tokens of the bundled corpus (``method`` bridge: each layer bridged alone, a span by its layers' bridges
    composed; the bridges are fitted past those tokens)."""
    from quality.corpus import read_corpus, windows
    from quality.model import SkipModel, load_tokenizer
    from quality.progress import bars
    from quality.proxies import evaluate_proxies, proxy_work
    from quality.standins import layer_bridges

    model, tokenizer = SkipModel(prepared), load_tokenizer(prepared)
    bos = tokenizer.bos_token_id if model.adds_bos else None
    stream = tokenizer.encode(read_corpus(None), add_special_tokens=False)
    window = min(512, tokens)
    cut = windows(stream, tokens=tokens, window=window, bos=bos)
    layers = model.num_layers
    spans = [(a, a + n) for n in range(1, max(1, min(max_span, layers)) + 1) for a in range(layers - n + 1)]
    sets = [()] + [tuple(range(a, b)) for a, b in spans]
    stand_in = layer_bridges(model, stream, bos=bos, evaluated=tokens, window=window, log=log) \
        if method == "bridge" else None
    log(f"[placement] measuring the cost of losing each of {len(spans)} spans of 1-{spans[-1][1] - spans[-1][0]} "
        f"of {layers} layers ({method}) on {tokens} tokens")
    with bars(True) as display:
        scores = evaluate_proxies(model, cut, sets, display.bar("layer costs", proxy_work(model, cut, sets)), stand_in)
    kl = {(a, b): float(scores.kl[scores.row(tuple(range(a, b)))].mean()) for a, b in spans}
    singles = [kl.pop((k, k + 1)) for k in range(layers)]
    return SliceCosts(singles, kl)
