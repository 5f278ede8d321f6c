"""Statistics of scores: Wilson intervals, a clip bootstrap and McNemar's exact test.

Pure arithmetic on arrays (numpy only): no database, no printing. NLQ's queries are not
independent (about eleven share a clip), so the bootstrap resamples clips, never single queries.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
RESAMPLES = 10_000
SEED = 0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials (None when n is 0)."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def group_codes(labels: Sequence) -> np.ndarray:
    """Each label's group number (0, 1, ... in order of first appearance)."""
    numbers: dict = {}
    return np.array([numbers.setdefault(label, len(numbers)) for label in labels], dtype=np.intp)


@functools.lru_cache(maxsize=4)
def resample_weights(groups: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """How often each group is drawn in each bootstrap resample: (resamples, groups) counts,
    each row summing to `groups` (draws with replacement, seeded). Read-only and cached: the
    pairs of one report mostly share their clips, so they share one set of resamples."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, groups, size=(resamples, groups))
    flat = drawn + groups * np.arange(resamples)[:, None]  # one bin per (resample, group)
    counts = np.bincount(flat.ravel(), minlength=resamples * groups).reshape(resamples, groups)
    weights = counts.astype(float)
    weights.flags.writeable = False
    return weights


def bootstrap_means(
    values: np.ndarray, groups: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """The mean of each column of `values` (queries × metrics) in every resample of the groups
    (clips): a (resamples, metrics) array. Clip sums and sizes times the resample counts, so
    10,000 resamples of thousands of queries are two matrix products."""
    values = np.asarray(values, dtype=float).reshape(len(groups), -1)
    n_groups = int(groups.max()) + 1
    sums = np.stack([np.bincount(groups, v, n_groups) for v in values.T], axis=1)
    sizes = np.bincount(groups, minlength=n_groups).astype(float)
    weights = resample_weights(n_groups, resamples, seed)
    return (weights @ sums) / (weights @ sizes)[:, None]


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> np.ndarray:
    """(2, columns): the lower and upper percentile of each column of bootstrap draws."""
    tail = 100 * (1 - level) / 2
    return np.percentile(draws, [tail, 100 - tail], axis=0)


def bootstrap_interval(
    values: np.ndarray, groups: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """(2, metrics): the 95 % clip-bootstrap interval of each column's mean."""
    return percentile_interval(bootstrap_means(values, groups, resamples, seed))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: twice the binomial(n, 1/2)
    tail at the smaller count, capped at 1 (exact integer arithmetic)."""
    n = only_a + only_b
    term = tail = 1  # C(n, 0)
    for i in range(1, min(only_a, only_b) + 1):
        term = term * (n - i + 1) // i  # C(n, i), exactly
        tail += term
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Paired:
    """Run A against run B over the same queries: each metric's difference (A − B) with its
    95 % clip-bootstrap interval, and McNemar's exact test on one hit column."""

    n: int
    clips: int
    diff: np.ndarray  # (metrics,)
    low: np.ndarray
    high: np.ndarray
    both: int
    only_a: int
    only_b: int
    neither: int
    p_value: float


def paired(
    a: np.ndarray,
    b: np.ndarray,
    groups: np.ndarray,
    hit_column: int = 0,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Paired:
    """Compare two (queries × metrics) score arrays whose rows are the same queries; the
    bootstrap resamples clips (`groups`), McNemar reads column `hit_column` as hit / miss."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or a.shape != b.shape:
        raise ValueError("paired needs the same queries, at least one, in both arrays")
    delta = a - b
    low, high = bootstrap_interval(delta, groups, resamples, seed)
    hit_a, hit_b = a[:, hit_column] > 0, b[:, hit_column] > 0
    only_a, only_b = int(np.sum(hit_a & ~hit_b)), int(np.sum(hit_b & ~hit_a))
    return Paired(
        n=len(a),
        clips=int(groups.max()) + 1,
        diff=delta.mean(axis=0),
        low=low,
        high=high,
        both=int(np.sum(hit_a & hit_b)),
        only_a=only_a,
        only_b=only_b,
        neither=int(np.sum(~hit_a & ~hit_b)),
        p_value=mcnemar_exact(only_a, only_b),
    )
