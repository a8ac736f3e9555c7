"""Statistics of the learning-parity study: IQM with bootstrap confidence intervals and tests between systems.

The interquartile mean (IQM) and its stratified bootstrap confidence interval follow Agarwal et al.,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice" (NeurIPS 2021), the method of the
``rliable`` package: the IQM is the mean of the middle 50% of the runs' scores; the interval is the
percentile interval of the IQM over bootstrap resamples that draw runs with replacement *within each
task* (stratified), so every task keeps its number of runs. Here one comparison covers one task, so
the strata are that task's runs. Between two systems on one task: the two-sided Mann-Whitney U test on
final returns (scipy) and the one-sided Fisher exact test of "system A succeeds less often than B" on
success counts (scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "fisher_less", "iqm", "mann_whitney", "median_or_none"]


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of ``scores`` (``scipy.stats.trim_mean(x, 0.25)``).

    Raises:
        ValueError: no scores.
    """
    from scipy.stats import trim_mean

    x = np.asarray(scores, np.float64)
    if x.size == 0:
        raise ValueError("iqm of no scores")
    return float(trim_mean(x, 0.25))


def bootstrap_ci(
    strata: Sequence[Sequence[float]], reps: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Stratified bootstrap percentile interval of the IQM over all strata's runs pooled.

    Args:
        strata: one sequence of run scores per task (resampled with replacement within itself).
        reps: bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the resampling generator (the interval is reproducible).

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: an empty stratum, or no strata.
    """
    from scipy.stats import trim_mean

    groups = [np.asarray(s, np.float64) for s in strata]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("bootstrap_ci needs at least one run in every stratum")
    rng = np.random.default_rng(seed)
    draws = [g[rng.integers(0, g.size, size=(reps, g.size))] for g in groups]
    stats = trim_mean(np.concatenate(draws, axis=1), 0.25, axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test of ``a`` vs ``b`` (1.0 when either side has no runs
    or every value is the same)."""
    from scipy.stats import mannwhitneyu

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.size == 0 or y.size == 0 or np.unique(np.concatenate([x, y])).size == 1:
        return 1.0
    return float(mannwhitneyu(x, y, alternative="two-sided").pvalue)


def fisher_less(success_a: int, n_a: int, success_b: int, n_b: int) -> float:
    """One-sided Fisher exact p-value that system A's success rate is below system B's."""
    from scipy.stats import fisher_exact

    if n_a == 0 or n_b == 0:
        return 1.0
    table = [[success_a, n_a - success_a], [success_b, n_b - success_b]]
    return float(fisher_exact(table, alternative="less").pvalue)


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None or NaN (None when none are left)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.median(kept)) if kept else None
