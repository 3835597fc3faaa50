"""``placement: resilient`` on plain data: where the replica goes, what unreliable nodes get, the memory cap,
and the modelled expected KL against a hand computation."""

from __future__ import annotations

import pandas as pd
import pytest

from experiment.resilient import SliceCosts, expected_kl, resilient_placement, study_costs
from payload.routing import Placement, PlacementError

EQUAL = {k: 0.1 for k in range(1, 7)}


def test_the_one_replica_goes_to_a_slice_grown_around_the_critical_layers():
    costs = [1.0, 11.0, 2.0, 6.0, 1.0, 12.5] + [0.5] * 12  # Gemma 3 270M-like: layers 1, 3, 5 critical
    plan = resilient_placement(18, 6, costs, EQUAL, replicas=1)
    (holder, (owner,)), = plan.placement.replicas.items()
    first, end = plan.placement.slices[owner]
    assert first <= 1 and end >= 6, "the copied slice holds every critical layer"
    loads = {n: b - a for n, (a, b) in plan.placement.slices.items()}
    assert loads[holder] + (end - first) <= 6, "within even placement's memory (3 own + 3 copied)"
    assert plan.expected_kl == pytest.approx(expected_kl(plan.placement, costs, EQUAL))
    assert plan.expected_kl < 0.7 * plan.even_expected_kl
    # even placement with the same copy put on its costliest slice (layers 3-5), by hand:
    total = sum(costs)
    assert plan.even_expected_kl == pytest.approx(0.1 * total - (0.1 - 0.01) * (6.0 + 1.0 + 12.5))


def test_without_replicas_costly_layers_go_to_reliable_nodes():
    plan = resilient_placement(4, 2, [10.0, 1.0, 1.0, 1.0], {1: 0.5, 2: 0.01}, replicas=0, capacity=3)
    assert plan.placement.slices == {1: (0, 1), 2: (1, 4)}
    assert plan.expected_kl == pytest.approx(0.5 * 10 + 0.01 * 3)
    capped = resilient_placement(4, 2, [10.0, 1.0, 1.0, 1.0], {1: 0.5, 2: 0.01}, replicas=0)
    assert capped.placement.slices == {1: (0, 2), 2: (2, 4)}, "by default no node holds more than even's 2"


def test_equal_costs_and_odds_leave_nothing_to_gain():
    plan = resilient_placement(12, 4, [1.0] * 12, {k: 0.2 for k in range(1, 5)}, replicas=0)
    assert plan.expected_kl == pytest.approx(plan.even_expected_kl) == pytest.approx(0.2 * 12)


def test_the_memory_cap_is_kept_and_inputs_are_checked():
    plan = resilient_placement(8, 4, [5.0] * 4 + [0.1] * 4, {k: 0.1 for k in range(1, 5)}, replicas=1, capacity=3)
    held = {n: b - a for n, (a, b) in plan.placement.slices.items()}
    for holder, owners in plan.placement.replicas.items():
        held[holder] += sum(plan.placement.slices[o][1] - plan.placement.slices[o][0] for o in owners)
    assert max(held.values()) <= 3
    with pytest.raises(PlacementError, match="7 layer costs"):
        resilient_placement(8, 4, [1.0] * 7, EQUAL)
    with pytest.raises(PlacementError, match="no failure probability for nodes \\[4\\]"):
        resilient_placement(8, 4, [1.0] * 8, {1: 0.1, 2: 0.1, 3: 0.1})


def test_a_replica_halves_nothing_when_its_holder_is_as_likely_to_fail_as_always():
    placement = Placement(4, {1: (0, 2), 2: (2, 4)}, {2: (1,)})
    assert expected_kl(placement, [1.0, 2.0, 3.0, 4.0], {1: 1.0, 2: 1.0}) == pytest.approx(10.0)
    assert expected_kl(placement, [1.0, 2.0, 3.0, 4.0], {1: 0.5, 2: 0.5}) == pytest.approx(0.25 * 3 + 0.5 * 7)


def test_costs_come_from_a_skip_studys_single_skips(tmp_path):
    rows = [{"skip_set": "none", "n_skipped": 0, "metric": "kl", "value": 0.0, "method": "skip"}]
    rows += [{"skip_set": str(k), "n_skipped": 1, "metric": "kl", "value": 1.0 + k, "method": m}
             for k in range(3) for m in ("skip", "bridge")]
    rows += [{"skip_set": "0+1", "n_skipped": 2, "metric": "kl", "value": 9.0, "method": "skip"}]
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert study_costs(path) == [1.0, 2.0, 3.0]
    with pytest.raises(PlacementError, match="no single-skip KL rows for method 'repeat'"):
        study_costs(path, method="repeat")


def test_measured_span_costs_override_the_sum_and_steer_the_split():
    """Losing layers 0 and 1 together costs far more than each alone (10 against 1 + 1): with span costs the
    plan keeps them on different nodes, where summed single costs see every split alike and keep even's."""
    singles = [1.0, 1.0, 1.0, 1.0]
    spans = {(0, 2): 10.0, (2, 4): 1.0, (1, 4): 2.0, (0, 3): 12.0}
    p = {1: 0.1, 2: 0.1}
    additive = resilient_placement(4, 2, singles, p, replicas=0, capacity=3)
    assert additive.placement.slices == additive.even.slices == {1: (0, 2), 2: (2, 4)}
    assert additive.expected_kl == pytest.approx(0.4) and additive.basis == "additive single-layer costs"
    costs = SliceCosts(singles, spans)
    assert costs.of(0, 2) == 10.0 and costs.of(1, 2) == 1.0 and costs.of(1, 3) == 2.0, "unmeasured: the sum"
    plan = resilient_placement(4, 2, costs, p, replicas=0, capacity=3)
    assert plan.placement.slices == {1: (0, 1), 2: (1, 4)}
    assert plan.expected_kl == pytest.approx(0.1 * 1 + 0.1 * 2) and plan.even_expected_kl == pytest.approx(1.1)
    assert plan.basis == "measured span costs" and "measured span costs" in plan.describe()
    with pytest.raises(PlacementError, match="outside 0..4"):
        SliceCosts(singles, {(2, 5): 1.0})
