"""The layer node's cache rules on plain data: every combination of epoch and position against a cache."""

from __future__ import annotations

import pytest

from payload.cache_rules import Action, admit, decide


class TestDecide:
    def test_an_older_epoch_is_stale_whatever_its_position(self):
        for pos_start, cached in ((0, None), (5, 5), (3, 5), (9, 5)):
            decision = decide(epoch=3, pos_start=pos_start, session_epoch=4, cached=cached)
            assert decision.action == Action.DROP_STALE and "older" in decision.reason

    def test_the_same_or_a_newer_epoch_is_served(self):
        assert decide(epoch=4, pos_start=5, session_epoch=4, cached=5).action == Action.EXTEND
        assert decide(epoch=9, pos_start=5, session_epoch=4, cached=5).action == Action.EXTEND

    @pytest.mark.parametrize("cached", [None, 0, 7])
    def test_position_zero_starts_afresh(self, cached):
        assert decide(epoch=1, pos_start=0, session_epoch=0, cached=cached).action == Action.START

    def test_a_resent_step_rolls_back_to_its_first_position(self):
        decision = decide(epoch=6, pos_start=7, session_epoch=5, cached=9)
        assert decision.action == Action.ROLLBACK and decision.rollback == 2

    def test_a_step_beyond_the_cache_is_a_gap(self):
        decision = decide(epoch=2, pos_start=8, session_epoch=1, cached=7)
        assert decision.action == Action.REFUSE_GAP and "cache has 7 positions, step starts at 8" in decision.reason

    def test_a_later_position_without_a_cache_is_a_gap(self):
        decision = decide(epoch=2, pos_start=8, session_epoch=1, cached=None)
        assert decision.action == Action.REFUSE_GAP and "no cache" in decision.reason


class TestAdmit:
    def test_a_later_step_of_a_session_without_a_cache_is_refused_before_acking(self):
        assert "unknown session" in admit(5, has_cache=False)

    def test_prefill_and_known_sessions_are_admitted(self):
        assert admit(0, has_cache=False) is None and admit(5, has_cache=True) is None
