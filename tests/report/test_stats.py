"""egoqa.report.stats alone: Wilson intervals, the clip bootstrap and McNemar's exact test, against
numbers computed by hand here (never by the code under test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from egoqa.report import stats


def test_wilson_interval_matches_the_formula_worked_by_hand():
    # 5 of 10: centre 0.5; half-width z·sqrt(0.025 + z²/400) / (1 + z²/10)
    z = 1.959963984540054
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)
    assert half == pytest.approx(0.26340, abs=1e-5)
    assert stats.wilson(5, 10) == pytest.approx((0.5 - half, 0.5 + half))
    assert stats.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # textbook table
    # 0 of 10: [0, z²/(n + z²)], never below zero
    assert stats.wilson(0, 10) == pytest.approx((0.0, z * z / (10 + z * z)))
    assert stats.wilson(10, 10)[1] == pytest.approx(1.0)
    assert stats.wilson(0, 0) is None


def test_mcnemar_exact_p_values_are_binomial_tails_worked_by_hand():
    # 2 discordant pairs one way, 8 the other: 2·(C(10,0)+C(10,1)+C(10,2))/2¹⁰ = 2·56/1024
    assert stats.mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    assert stats.mcnemar_exact(8, 2) == stats.mcnemar_exact(2, 8)
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(3, 3) == 1.0  # the tail passes one half: capped at 1
    assert stats.mcnemar_exact(0, 0) == 1.0
    # a large count stays exact: 0 against 60 is 2·2⁻⁶⁰
    assert stats.mcnemar_exact(0, 60) == pytest.approx(2.0**-59, rel=1e-12)


def test_identical_runs_differ_by_zero_with_p_one():
    rng = np.random.default_rng(7)
    scores = np.column_stack([rng.random(300) < 0.3, rng.random(300)]).astype(float)
    groups = np.repeat(np.arange(30), 10)
    out = stats.paired(scores, scores.copy(), groups)
    assert out.diff.tolist() == [0.0, 0.0]
    assert out.low.tolist() == [0.0, 0.0] and out.high.tolist() == [0.0, 0.0]
    assert out.p_value == 1.0 and out.only_a == out.only_b == 0
    assert out.both + out.neither == 300 and out.n == 300 and out.clips == 30


def test_vectorised_bootstrap_equals_resampling_clips_one_by_one():
    rng = np.random.default_rng(3)
    groups = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4])
    values = rng.random((len(groups), 2))
    weights = stats.resample_weights(5, resamples=50, seed=11)
    assert (weights.sum(axis=1) == 5).all()
    fast = stats.bootstrap_means(values, groups, resamples=50, seed=11)
    for row, counts in zip(fast, weights, strict=True):
        drawn = np.concatenate(
            [values[groups == g] for g in range(5) for _ in range(int(counts[g]))]
        )
        assert row == pytest.approx(drawn.mean(axis=0))


def _planted(seed: int, clips: int = 150, per_clip: int = 11):
    """Two runs' hits where run A is right 10 points more often than run B, by construction,
    with a clip effect: some clips are easy for both runs, some hard."""
    rng = np.random.default_rng(seed)
    easy = np.repeat(rng.random(clips) < 0.5, per_clip)
    base = np.where(easy, 0.55, 0.15)
    b = rng.random(len(base)) < base
    a = rng.random(len(base)) < base + 0.10
    return a.astype(float)[:, None], b.astype(float)[:, None], np.repeat(np.arange(clips), per_clip)


def test_paired_clip_bootstrap_interval_contains_the_planted_difference():
    a, b, groups = _planted(seed=5)
    out = stats.paired(a, b, groups)
    low, high = out.low[0], out.high[0]
    assert low < 0.10 < high  # the true difference
    assert low > 0  # and 1,650 queries are enough to tell it from none
    assert 0.02 < high - low < 0.10
    assert out.p_value < 0.01
    assert out.only_a - out.only_b == round(out.diff[0] * out.n)


def test_bootstrap_is_seeded_and_clips_are_the_unit():
    a, b, groups = _planted(seed=9)
    first = stats.paired(a, b, groups)
    again = stats.paired(a, b, groups)
    assert (first.low == again.low).all() and (first.high == again.high).all()
    # the rates carry a clip effect: resampling single queries would understate the spread
    rates = np.column_stack([a[:, 0], b[:, 0]])
    by_clip = np.diff(stats.bootstrap_interval(rates, groups), axis=0)[0]
    by_query = np.diff(stats.bootstrap_interval(rates, np.arange(len(groups))), axis=0)[0]
    assert (by_clip > 1.2 * by_query).all()


def test_paired_refuses_arrays_of_different_queries():
    with pytest.raises(ValueError):
        stats.paired(np.zeros((3, 1)), np.zeros((4, 1)), np.arange(3))
    with pytest.raises(ValueError):
        stats.paired(np.zeros((0, 1)), np.zeros((0, 1)), np.arange(0))
