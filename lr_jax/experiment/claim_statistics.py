"""Seed-level statistics for the paper's claims, each with a 95 % confidence interval.

Every claim is reduced to one number per seed (seeds are the independent
replicates of a training run), and the claim is judged on the mean of those
numbers with a bootstrap confidence interval over seeds (BCa, ``scipy.stats.
bootstrap``). A claim *held* only when the interval excludes zero in the
claimed direction. Inputs are trajectories ``[S, E]``: one row per seed, one
column per evaluated epoch (a category's mean ``C``, mean radius, ...).

Turning points are located without bias. "Falls, then rises" measured as
``v(0) - min_e v(e)`` is positive for pure noise (a minimum of noisy values is
below their mean), so its interval would exclude zero with no effect at all.
We cross-fit instead: seed ``s``'s turning epoch ``e_s`` is the arg-min of the
mean trajectory of the *other* seeds, so it does not depend on seed ``s``'s own
noise, and

    drop_s = v_s(0) - v_s(e_s),        rise_s = v_s(E - 1) - v_s(e_s)

have mean zero when the trajectories have no trend (exchangeable seeds).
Pure functions of NumPy arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
_RESAMPLES = 9999


class Estimate(NamedTuple):
    """A claimed effect: the mean over seeds of a per-seed statistic, with its interval.

    Attributes:
      mean: mean over seeds.
      low: lower end of the confidence interval.
      high: upper end.
      n_seeds: seeds with a finite statistic.
      direction: +1 when the claim says the statistic is positive, -1 negative.
      held: the interval excludes zero in the claimed direction.
    """

    mean: float
    low: float
    high: float
    n_seeds: int
    direction: int
    held: bool


def seed_interval(per_seed, direction: int = 1, *, confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """The mean of ``per_seed`` ``[S]`` with a bootstrap (BCa) interval over seeds.

    Seeds with a non-finite value are dropped. With fewer than two seeds the
    interval is undefined (NaN) and the claim does not hold; when every seed
    has the same value the interval is that value.
    """
    v = np.asarray(per_seed, np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n < 2:
        mean = float(v.mean()) if n else float("nan")
        return Estimate(mean, float("nan"), float("nan"), n, direction, False)
    mean = float(v.mean())
    if np.all(v == v[0]):
        low = high = mean
    else:
        res = stats.bootstrap(
            (v,), np.mean, confidence_level=confidence, n_resamples=_RESAMPLES, method="BCa",
            random_state=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerates on tiny samples
            res = stats.bootstrap(
                (v,), np.mean, confidence_level=confidence, n_resamples=_RESAMPLES, method="percentile",
                random_state=np.random.default_rng(seed),
            )
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    held = low > 0 if direction > 0 else high < 0
    return Estimate(mean, low, high, n, direction, bool(held))


def cross_fitted_argmin(values) -> np.ndarray:
    """For each seed, the epoch index of the minimum of the other seeds' mean trajectory, ``[S]``."""
    v = np.asarray(values, np.float64)
    s = v.shape[0]
    if s < 2:
        return np.array([int(np.nanargmin(v[0]))] * s)
    total = np.nansum(v, axis=0)
    counts = np.sum(np.isfinite(v), axis=0)
    out = []
    for k in range(s):
        others = (total - np.nan_to_num(v[k])) / np.maximum(counts - np.isfinite(v[k]), 1)
        out.append(int(np.nanargmin(others)))
    return np.array(out)


def dip_then_rise(values) -> tuple[Estimate, Estimate]:
    """"Falls, then rises": the drop to the cross-fitted minimum and the rise after it.

    Args:
      values: ``[S, E]`` per-seed trajectories.

    Returns:
      ``(drop, rise)``: ``drop_s = v_s(0) - v_s(e_s)`` and
      ``rise_s = v_s(E-1) - v_s(e_s)``, both claimed positive.
    """
    v = np.asarray(values, np.float64)
    e = cross_fitted_argmin(v)
    rows = np.arange(v.shape[0])
    at_min = v[rows, e]
    return seed_interval(v[:, 0] - at_min, 1), seed_interval(v[:, -1] - at_min, 1)


def rise_then_dip(values) -> tuple[Estimate, Estimate]:
    """"Rises, then falls" (the distance to the boundary): the rise to the cross-fitted maximum and the fall after it.

    Returns:
      ``(rise, fall)``, both claimed positive: ``v_s(e_s) - v_s(0)`` and ``v_s(e_s) - v_s(E-1)``.
    """
    return dip_then_rise(-np.asarray(values, np.float64))


def relative_drop(values) -> np.ndarray:
    """Per seed, ``(v_s(0) - v_s(e_s)) / v_s(0)`` at the cross-fitted minimum, ``[S]``."""
    v = np.asarray(values, np.float64)
    at_min = v[np.arange(v.shape[0]), cross_fitted_argmin(v)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v[:, 0] != 0, (v[:, 0] - at_min) / v[:, 0], np.nan)


def clearer_trend(values, reference) -> Estimate:
    """"The trend is clearer on these points than on the reference ones": paired relative drops.

    Per seed, the relative drop of ``values`` minus that of ``reference``
    (both ``[S, E]``, the same seeds), claimed positive.
    """
    return seed_interval(relative_drop(values) - relative_drop(reference), 1)


def paired_difference(values, reference) -> Estimate:
    """"More regions around these points than around the reference ones": per seed, the mean over
    epochs of ``values - reference`` (both ``[S, E]``), claimed positive."""
    d = np.asarray(values, np.float64) - np.asarray(reference, np.float64)
    return seed_interval(np.nanmean(d, axis=1), 1)


def growth(values) -> Estimate:
    """"Grows with training": per seed ``v_s(E-1) - v_s(0)``, claimed positive."""
    v = np.asarray(values, np.float64)
    return seed_interval(v[:, -1] - v[:, 0], 1)


def interval_text(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``+0.123 [0.045, 0.201]``; values within 1e-12 of zero (a sum of equal floats) print as 0."""

    def num(x, sign=""):
        return f"{0.0 if abs(x) < 1e-12 else x:{sign}.{digits}g}"

    return f"{num(mean, '+')} [{num(low)}, {num(high)}]"


def format_estimate(e: Estimate, digits: int = 3) -> str:
    """``held: +0.123 [0.045, 0.201]`` as a table cell."""
    verdict = "held" if e.held else "not held"
    return f"{verdict}: {interval_text(e.mean, e.low, e.high, digits)} (n={e.n_seeds})"
