"""Intervals and paired tests give textbook values."""

import numpy as np
import pytest
from scipy.stats import binomtest

from quality.stats import RESAMPLES, BlockBootstrap, bootstrap_p, holm, paired_accuracy, percentile_interval, wilson


def test_wilson_matches_the_textbook_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)


class TestPairedAccuracy:
    def test_counts_discordant_questions_and_runs_exact_mcnemar(self):
        full = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0], dtype=bool)
        skipped = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 0], dtype=bool)
        result = paired_accuracy(full, skipped)
        assert (result.lost, result.gained) == (4, 1)
        assert result.delta == pytest.approx(-0.3)
        assert result.p_value == pytest.approx(binomtest(1, 5, 0.5).pvalue)
        half = 1.959963984540054 * np.sqrt((5 / 10 - 0.09) / 10)
        assert (result.low, result.high) == pytest.approx((-0.3 - half, -0.3 + half))

    def test_identical_answers_mean_no_difference(self):
        same = np.array([1, 0, 1], dtype=bool)
        result = paired_accuracy(same, same)
        assert (result.delta, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)

    def test_mismatched_arrays_are_refused(self):
        with pytest.raises(ValueError, match="equal-length"):
            paired_accuracy(np.ones(3, bool), np.ones(4, bool))


class TestBlockBootstrap:
    blocks = np.repeat(np.arange(8), 4)

    def test_same_seed_same_resamples_and_means_are_centred(self):
        values = np.random.default_rng(1).normal(size=(2, 32))
        a, b = BlockBootstrap(self.blocks).means(values), BlockBootstrap(self.blocks).means(values)
        assert a.shape == (2, RESAMPLES) and np.array_equal(a, b)
        np.testing.assert_allclose(a.mean(axis=1), values.mean(axis=1), atol=0.02)

    def test_pairing_cancels_shared_noise(self):
        noise = np.random.default_rng(2).normal(size=32)
        boot = BlockBootstrap(self.blocks)
        diff = boot.means(np.vstack([noise + 0.5]) - noise)
        low, high = percentile_interval(diff)
        assert low[0] == pytest.approx(0.5) and high[0] == pytest.approx(0.5)
        assert bootstrap_p(diff)[0] == pytest.approx(2 / (RESAMPLES + 1))

    def test_a_difference_centred_on_zero_is_not_significant(self):
        boot = BlockBootstrap(self.blocks)
        diff = boot.means(np.tile([1.0, -1.0], 16))
        assert bootstrap_p(diff)[0] > 0.5

    def test_one_block_is_refused(self):
        with pytest.raises(ValueError, match="at least 2 blocks"):
            BlockBootstrap(np.zeros(10, int))


def test_holm_matches_a_worked_example_and_skips_nans():
    adjusted = holm(np.array([0.01, 0.04, np.nan, 0.03, 0.005]))
    np.testing.assert_allclose(adjusted, [0.03, 0.06, np.nan, 0.06, 0.02])
    assert holm(np.array([0.5, 0.9])).tolist() == [1.0, 1.0]
