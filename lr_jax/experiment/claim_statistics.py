"""Seed-level tests of the paper's claims: calibrated one-sided p-values and the intervals that invert them.

Seeds are the independent replicates of a training run. Inputs are
trajectories ``[S, E]``: one row per seed, one column per evaluated epoch (a
category's mean ``C``, mean radius, ...). A claimed effect is *held* when its
one-sided p-value is at most ``ALPHA = 0.025``; every test comes with the
two-sided 95 % interval obtained by inverting the test (for the turning
points, the test on the values), so "held" implies "the interval excludes
zero in the claimed direction" (for the sign-flip tests also conversely).

Two tests, each exact under a stated null hypothesis:

**Sign-flip test** (:func:`sign_flip`, used by :func:`growth`,
:func:`paired_difference`, :func:`clearer_trend`). One number ``x_s`` per seed,
computed from seed ``s`` alone, so the ``x_s`` are independent. H0: each
``x_s`` is symmetric about 0. Statistic: ``T = mean_s x_s``. Under H0 flipping
any set of signs leaves the joint distribution unchanged, so with ``N`` sign
patterns ``eps`` (all ``2^S`` when ``S <= 16``: exact and free of randomness;
else the identity and ``2^16 - 1`` patterns drawn with a fixed key)

    p = #{eps : mean_s eps_s x_s >= T} / N.

Shifting by ``mu`` (H0: ``x_s - mu`` symmetric), ``mean eps (x - mu) >=
mean (x - mu)`` holds exactly when the flipped seeds ``F = {s : eps_s = -1}``
are empty or have ``mean_{s in F} x_s <= mu``. So ``p(mu)`` is the fraction of
patterns whose flipped-subset mean is ``<= mu`` (the empty subset counting as
``-inf``), increasing in ``mu``, and the lower end of the interval is the
``(k + 1)``-th smallest of these subset means, ``k = floor(ALPHA N)``; the
upper end mirrors it (Hartigan 1969, "Using subsample values as typical
values"). ``low > 0`` exactly when ``p <= ALPHA``.

**Within-seed permutation test** (:func:`within_seed_permutation`, used by
:func:`dip_then_rise`, :func:`rise_then_dip`). On the mean trajectory over
seeds ``m(e) = mean_s v_s(e)``,

    T_fall = m(0) - min_e m(e),        T_rise = m(E-1) - min_e m(e).

Both are positive for pure noise (a minimum of noisy values lies below their
mean); the test accounts for that bias instead of removing it. H0: within
each seed the ``E`` values are exchangeable (no trend: noise around the
seed's own level). Permuting every seed's epochs independently ``B`` times
(a fixed key) and recomputing ``T`` gives null values ``z_b``, and

    p = (1 + #{b : z_b >= T}) / (B + 1),

valid for any ``B``. The interval ``[T - z_(k largest), T - z_(k smallest)]``,
``k = floor(ALPHA (B + 1))``, inverts the test under a shift model (an
effect moves ``T`` without changing its null distribution). The estimate is
``T - median_b z_b``, the shift at which ``p`` is one half: the fall (rise)
minus what noise alone gives. Under an effect the permuted data carry the
trend too, which widens the null, so estimate and interval lean towards zero.

*Rank guard.* Noise correlated within a seed (lag-1 correlation 0.5, AR(1))
is not exchangeable, and the test above then says "held" too often: an
end epoch deviates from its seed's mean more than a permuted epoch does
(its variance about the seed mean is ``0.88`` against ``0.76`` on average
for 11 epochs), so ``T`` outgrows its permutation null (2.9 % false held at
the nominal 2.5 %, up to 3.5 % for one statistic, in 2,000 simulated data
sets of 10 seeds x 11 epochs per statistic).
The turning-point tests therefore also run the same permutation test on
each seed's within-seed ranks (``scipy.stats.rankdata``; same statistic,
same permutations) and report ``p = max(p_values, p_ranks)``: each is exact
under H0, so the larger is a valid p-value, and "held" needs both. The
ranks bound how far one epoch can stand out, and the guarded test holds
its level under AR(1) 0.5 (measured in :mod:`lr_jax.experiment.calibration`)
at some cost in power. The estimate and interval are those of the values'
test: "held" implies the interval excludes zero in the claimed direction,
not conversely (the ranks may not reject). The earlier statistic,
cross-fitted per-seed drops with a bootstrap over seeds, gave 10-12 % at a
nominal 2.5 %: the per-seed terms shared the other seeds' data.

Multiple testing: :func:`holm` (family-wise error) and
:func:`benjamini_hochberg` (false-discovery rate) adjust a family's p-values.
Pure functions of NumPy arrays; every random draw comes from an explicit seed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats
from scipy.stats import rankdata

ALPHA = 0.025  # one-sided level of every test
CONFIDENCE = 1 - 2 * ALPHA  # the two-sided interval that inverts it
PERMUTATIONS = 9999  # within-seed permutations of a turning-point test
EXACT_SIGN_FLIP_SEEDS = 16  # up to this many seeds the sign-flip test enumerates all 2^S patterns
SIGN_PATTERNS = 2**16 - 1  # random sign patterns beyond it (plus the identity)


class Estimate(NamedTuple):
    """A claimed effect: a statistic over seeds, its 95 % interval, its one-sided p-value and verdict.

    Attributes:
      mean: the estimate (the field keeps its old name): the mean over seeds of
        the per-seed values (sign-flip tests), or the statistic minus the
        median of its permutation null (turning-point tests).
      low: lower end of the 95 % interval (the test inverted).
      high: upper end.
      n_seeds: seeds with a finite statistic (those the test used).
      direction: +1 when the claim says the statistic is positive, -1 negative.
      held: ``p_value <= ALPHA``; then the interval excludes zero in the claimed
        direction (for the sign-flip tests also conversely; the rank-guarded
        turning-point tests can exclude zero and not hold).
      p_value: one-sided p-value in the claimed direction (NaN when the test is undefined).
    """

    mean: float
    low: float
    high: float
    n_seeds: int
    direction: int
    held: bool
    p_value: float = float("nan")


def _undefined(mean: float, n: int, direction: int) -> Estimate:
    return Estimate(mean, float("nan"), float("nan"), n, direction, False, float("nan"))


def _sign_patterns(n: int, seed: int) -> np.ndarray:
    """Boolean ``[N, n]``: which seeds are flipped. Row 0 is the identity (none flipped).

    All ``2^n`` patterns when ``n <= EXACT_SIGN_FLIP_SEEDS``, else the identity
    and ``SIGN_PATTERNS`` uniform random patterns drawn from ``seed``.
    """
    if n <= EXACT_SIGN_FLIP_SEEDS:
        codes = np.arange(2**n, dtype=np.int64)
        return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)
    rng = np.random.default_rng(seed)
    return np.concatenate([np.zeros((1, n), bool), rng.random((SIGN_PATTERNS, n)) < 0.5])


def sign_flip(per_seed, direction: int = 1, *, seed: int = 0) -> Estimate:
    """Sign-flip test and interval for the mean of independent per-seed values ``[S]`` (module docstring).

    Args:
      per_seed: one value per seed; non-finite values are dropped.
      direction: +1 when the claim says the mean is positive, -1 negative.
      seed: key of the random sign patterns (used only with more than
        ``EXACT_SIGN_FLIP_SEEDS`` seeds; below that the test is exact).

    Returns:
      The mean, the 95 % interval ``[low, high]`` that inverts the test, the
      one-sided p-value ``#{eps : mean(eps x) >= mean x} / N`` in the claimed
      direction, and ``held = p <= ALPHA``. With fewer than two seeds the
      interval and p-value are NaN and the claim does not hold. Five seeds
      (``2^5 = 32`` patterns) are the fewest with which ``p <= 0.025`` is possible.
    """
    x = np.asarray(per_seed, np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n < 2:
        return _undefined(float(x.mean()) if n else float("nan"), n, direction)
    mean = float(x.mean())
    flipped = _sign_patterns(n, seed)
    size = flipped.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        subset_mean = np.where(size > 0, (flipped @ x) / np.maximum(size, 1), -np.inf)
    m = np.sort(subset_mean)  # the identity's -inf first
    total = m.size
    k = math.floor(ALPHA * total)
    low = float(m[k])
    up = np.sort(np.where(size > 0, subset_mean, np.inf))[::-1]  # mirrored: the empty subset as +inf
    high = float(up[k])
    # p-value in the claimed direction: patterns whose signed statistic is at least the observed one.
    d = direction * x
    signed = np.where(flipped, -d, d).sum(axis=1)
    observed = d.sum()
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))  # sums of the same floats in another order
    p = float(np.mean(signed >= observed - tol))
    return Estimate(mean, low, high, n, direction, bool(p <= ALPHA), p)


def _finite_rows(values) -> np.ndarray:
    v = np.asarray(values, np.float64)
    return v[np.all(np.isfinite(v), axis=1)]


def _permutation_p(t: float, z: np.ndarray, direction: int) -> float:
    """``(1 + #{z_b >= T}) / (B + 1)`` for the signed statistic (module docstring)."""
    signed = direction * t
    tol = 1e-12 * max(1.0, abs(signed))
    return (1 + int(np.sum(direction * np.asarray(z, np.float64) >= signed - tol))) / (z.size + 1)


def within_seed_permutation(values, statistic, direction: int = 1, *, seed: int = 0,
                            n_resamples: int = PERMUTATIONS, rank_guard: bool = False) -> list[Estimate]:
    """Within-seed permutation test of statistics of trajectories ``[S, E]`` (module docstring).

    Args:
      values: ``[S, E]``; seeds (rows) with a non-finite value are dropped.
      statistic: maps ``[..., S, E]`` to a tuple of arrays ``[...]``, each a
        statistic over seeds (all are tested with the same permutations).
      direction: +1 when the claims say the statistics are positive.
      seed: key of the permutations.
      n_resamples: ``B``, the number of permuted data sets.
      rank_guard: also test the statistic on each seed's within-seed ranks
        with the same permutations and report the larger p-value (module
        docstring, "Rank guard").

    Returns:
      One :class:`Estimate` per statistic: the estimate ``T - median z``,
      the interval ``[T - z_(k largest), T - z_(k smallest)]``, ``p = (1 +
      #{z_b >= T}) / (B + 1)`` in the claimed direction (with the rank guard,
      the larger of the values' and the ranks' p) and ``held = p <= ALPHA``.
    """
    v = _finite_rows(values)
    n = int(v.shape[0])
    if n < 2 or v.shape[1] < 2:
        n_stats = len(statistic(np.zeros((2, 2))))
        return [_undefined(float("nan"), n, direction) for _ in range(n_stats)]
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.broadcast_to(np.arange(v.shape[1]), (n_resamples, *v.shape)), axis=-1)

    def permuted(a):
        return np.take_along_axis(np.broadcast_to(a, order.shape), order, axis=-1)

    observed = statistic(v)
    rank_p = [float("-inf")] * len(observed)
    if rank_guard:
        ranks = rankdata(v, axis=-1)
        rank_p = [_permutation_p(float(t), z, direction) for t, z in zip(statistic(ranks), statistic(permuted(ranks)))]
    out = []
    k = math.floor(ALPHA * (n_resamples + 1))
    for t, z, p_rank in zip(observed, statistic(permuted(v)), rank_p):
        t = float(t)
        p = max(_permutation_p(t, z, direction), p_rank)
        z = np.sort(direction * np.asarray(z, np.float64))  # null of the signed statistic, ascending
        signed = direction * t
        if k < 1:
            low = high = float("nan")
        else:
            a, b = signed - z[n_resamples - k], signed - z[k - 1]  # interval of the signed effect
            low, high = (a, b) if direction > 0 else (-b, -a)
        estimate = direction * (signed - float(np.median(z)))
        out.append(Estimate(estimate, float(low), float(high), n, direction, bool(p <= ALPHA), float(p)))
    return out


def fall_and_rise(values) -> tuple[np.ndarray, np.ndarray]:
    """``m(0) - min_e m(e)`` and ``m(E-1) - min_e m(e)`` of the mean trajectory ``m`` over seeds.

    Args:
      values: ``[..., S, E]``.

    Returns:
      Two arrays ``[...]``.
    """
    m = np.mean(np.asarray(values, np.float64), axis=-2)
    low = m.min(axis=-1)
    return m[..., 0] - low, m[..., -1] - low


def dip_then_rise(values, *, seed: int = 0, n_resamples: int = PERMUTATIONS) -> tuple[Estimate, Estimate]:
    """"Falls, then rises": the fall of the mean trajectory to its minimum and the rise after it, each tested.

    Args:
      values: ``[S, E]`` per-seed trajectories.
      seed: key of the within-seed permutations.
      n_resamples: their number.

    Returns:
      ``(fall, rise)`` of :func:`fall_and_rise`, both claimed positive, each
      with its within-seed permutation p-value (rank-guarded: the larger of
      the values' and the within-seed ranks' p), interval and estimate (the
      statistic minus the median of its permutation null).
    """
    fall, rise = within_seed_permutation(values, fall_and_rise, 1, seed=seed, n_resamples=n_resamples,
                                         rank_guard=True)
    return fall, rise


def rise_then_dip(values, *, seed: int = 0, n_resamples: int = PERMUTATIONS) -> tuple[Estimate, Estimate]:
    """"Rises, then falls" (the distance to the boundary): the rise of the mean trajectory to its maximum and the fall after it.

    Returns:
      ``(rise, fall)``, both claimed positive: ``max_e m(e) - m(0)`` and
      ``max_e m(e) - m(E-1)`` (:func:`dip_then_rise` of ``-values``).
    """
    return dip_then_rise(-np.asarray(values, np.float64), seed=seed, n_resamples=n_resamples)


def relative_fall(values) -> np.ndarray:
    """Per seed, the mean relative fall after epoch 0, ``1 - mean_{e >= 1} v_s(e) / v_s(0)``, ``[S]``.

    Computed from seed ``s`` alone (no turning point), so the values of
    different seeds are independent. NaN where ``v_s(0) = 0``.
    """
    v = np.asarray(values, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v[:, 0] != 0, 1 - np.mean(v[:, 1:], axis=1) / v[:, 0], np.nan)


def clearer_trend(values, reference, *, seed: int = 0) -> Estimate:
    """"The trend is clearer on these points than on the reference ones": paired relative falls.

    Per seed, :func:`relative_fall` of ``values`` minus that of ``reference``
    (both ``[S, E]``, the same seeds), claimed positive; sign-flip test.
    """
    return sign_flip(relative_fall(values) - relative_fall(reference), 1, seed=seed)


def paired_difference(values, reference, *, seed: int = 0) -> Estimate:
    """"More regions around these points than around the reference ones": per seed, the mean over
    epochs of ``values - reference`` (both ``[S, E]``), claimed positive; sign-flip test."""
    d = np.asarray(values, np.float64) - np.asarray(reference, np.float64)
    return sign_flip(np.nanmean(d, axis=1), 1, seed=seed)


def growth(values, *, seed: int = 0) -> Estimate:
    """"Grows with training": per seed ``v_s(E-1) - v_s(0)``, claimed positive; sign-flip test."""
    v = np.asarray(values, np.float64)
    return sign_flip(v[:, -1] - v[:, 0], 1, seed=seed)


# ---------------------------------------------------------------------------
# Multiple testing


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate), in the input order.

    With ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where it is at most
    ``alpha`` controls the chance of any false rejection in the family at
    ``alpha``. NaN p-values stay NaN and do not count in ``m``.
    """
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false-discovery rate, ``scipy.stats.false_discovery_control``).

    NaN p-values stay NaN and do not count in the family.
    """
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


# ---------------------------------------------------------------------------
# Text


def interval_text(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``+0.123 [0.045, 0.201]``; values within 1e-12 of zero (a sum of equal floats) print as 0."""

    def num(x, sign=""):
        return f"{0.0 if abs(x) < 1e-12 else x:{sign}.{digits}g}"

    return f"{num(mean, '+')} [{num(low)}, {num(high)}]"


def p_text(p: float) -> str:
    """A p-value as a table cell: ``p=0.0123``, ``p<0.001`` below 0.001, ``p=n/a`` when undefined."""
    if not np.isfinite(p):
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


def format_estimate(e: Estimate, digits: int = 3) -> str:
    """``held: +0.123 [0.045, 0.201] (p=0.001, n=10)`` as a table cell."""
    verdict = "held" if e.held else "not held"
    return f"{verdict}: {interval_text(e.mean, e.low, e.high, digits)} ({p_text(e.p_value)}, n={e.n_seeds})"
