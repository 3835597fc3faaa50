"""Routing is pure: placements and route plans tested on plain data."""

import pytest

from payload.frames import HopFlag
from payload.routing import Policy, RouteError, even_placement, explicit_placement, memory_weighted_placement, plan_route


class TestPlacement:
    def test_even_split_covers_every_layer_once(self):
        p = even_placement(18, 7)
        layers = [i for n in p.nodes for i in range(*p.slices[n])]
        assert layers == list(range(18))
        assert {b - a for a, b in p.slices.values()} == {2, 3}

    def test_replicas_give_each_slice_k_plus_one_holders(self):
        p = even_placement(6, 3, replicas=1)
        for owner in p.nodes:
            assert len(p.holders_of(owner)) == 1

    def test_explicit_ranges_must_be_contiguous(self):
        with pytest.raises(ValueError, match="contiguous"):
            explicit_placement(6, [(0, 2), (3, 6)])

    def test_memory_weighted_gives_bigger_nodes_more_layers(self):
        p = memory_weighted_placement(12, {1: 1000, 2: 3000})
        assert p.slices[1] == (0, 3) and p.slices[2] == (3, 12)

    def test_first_and_last_nodes_are_critical(self):
        p = even_placement(9, 3)
        assert [p.critical(n) for n in p.nodes] == [True, False, True]


class TestPlanRoute:
    def test_skips_consecutive_failed_nodes(self):
        plan = plan_route(even_placement(8, 4), {2, 3})
        assert [h.node for h in plan.hops] == [1, 4]
        assert plan.skipped_layers == (2, 3, 4, 5) and not plan.critical

    def test_failed_first_node_is_flagged_critical(self):
        assert plan_route(even_placement(8, 4), {1}).critical

    def test_replica_takes_over_with_replay(self):
        p = even_placement(6, 3, replicas=1)
        plan = plan_route(p, {2}, policy=Policy.REPLICA, warm={(1, 0), (3, 4)}, positions=5)
        assert [(h.node, h.first) for h in plan.hops] == [(1, 0), (3, 2), (3, 4)]
        assert plan.hops[1].flags & HopFlag.REPLAY and not plan.hops[2].flags & HopFlag.REPLAY

    def test_replica_policy_without_live_replica_is_an_error(self):
        with pytest.raises(RouteError, match="no live replica"):
            plan_route(even_placement(6, 3), {2}, policy=Policy.REPLICA)

    def test_replica_then_skip_falls_back_to_skip(self):
        plan = plan_route(even_placement(6, 3), {2}, policy=Policy.REPLICA_THEN_SKIP)
        assert plan.skipped_nodes == (2,)

    def test_all_nodes_failed(self):
        with pytest.raises(RouteError):
            plan_route(even_placement(4, 2), {1, 2})


class TestBridgeRoutes:
    """Under ``bridge`` every gap is one span, bridged by the hop before it (or the user node, at the start)."""

    def test_a_middle_gap_is_bridged_by_the_hop_before_it(self):
        plan = plan_route(even_placement(8, 4), {2, 3}, policy=Policy.BRIDGE)
        assert [(h.node, bool(h.flags & HopFlag.BRIDGE)) for h in plan.hops] == [(1, True), (4, False)]
        assert plan.bridges == ((2, 6),) and plan.lead_bridge is None
        assert plan.skipped_layers == (2, 3, 4, 5) and plan.layers == (0, 1, 6, 7)

    def test_gaps_at_both_ends_are_spans_too(self):
        plan = plan_route(even_placement(8, 4), {1, 4}, policy=Policy.BRIDGE)
        assert plan.bridges == ((0, 2), (6, 8)) and plan.lead_bridge == (0, 2)
        assert [bool(h.flags & HopFlag.BRIDGE) for h in plan.hops] == [False, True]

    def test_no_gap_no_bridge(self):
        plan = plan_route(even_placement(8, 4), set(), policy=Policy.BRIDGE)
        assert plan.bridges == () and not any(h.flags & HopFlag.BRIDGE for h in plan.hops)

    def test_replica_then_bridge_prefers_a_live_replica(self):
        placement = even_placement(6, 3, replicas=1)
        served = plan_route(placement, {2}, policy=Policy.REPLICA_THEN_BRIDGE)
        assert served.bridges == () and [h.node for h in served.hops] == [1, 3, 3]
        bridged = plan_route(placement, {2, 3}, policy=Policy.REPLICA_THEN_BRIDGE)  # 3 held 2's replica
        assert bridged.bridges == ((2, 4),) and [h.node for h in bridged.hops] == [1, 1]

    def test_replay_and_bridge_flags_combine(self):
        plan = plan_route(even_placement(6, 3), {3}, policy=Policy.BRIDGE, warm={(1, 0)}, positions=4)
        assert plan.hops[1].flags == HopFlag.REPLAY | HopFlag.BRIDGE and plan.bridges == ((4, 6),)
