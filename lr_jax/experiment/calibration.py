"""How often each claim test says "held" when there is no effect, and how often when there is one.

A statistical test is trusted only after a simulation shows its false-positive
rate and its power. This module simulates per-seed trajectories ``[S, E]``
(``S`` seeds, ``E`` evaluated epochs) as ``trend(e) + noise``, where the noise
of one cell has standard deviation 1 within a seed (the unit of every effect
size below), in three noise models:

* ``iid``: independent ``N(0, 1)`` per cell;
* ``AR(1) 0.5``: within a seed ``n(e) = 0.5 n(e-1) + sqrt(0.75) w(e)``,
  stationary with ``n(0) ~ N(0, 1)`` (lag-1 correlation 0.5);
* ``seed offsets``: ``N(0, 1)`` per cell plus an ``N(0, 1)`` offset per seed
  (and per category), shared by all of the seed's epochs;

and applies every test of :mod:`lr_jax.experiment.claim_statistics` to data
with no trend (false "held" rate, to be at most ``ALPHA``) and with a planted
effect (power). The effects:

* fall-then-rise of ``effect`` SD: ``trend(e) = -effect (1 - |e - c| / c)``,
  ``c = (E - 1) / 2`` (falls by ``effect`` to the middle epoch, rises back);
  the mirrored rise-then-fall for :func:`rise_then_dip`;
* ``fall, no rise``: falls by ``effect`` to the middle epoch and stays (the
  null hypothesis of the "rise after the minimum" test);
* growth: a linear rise by ``effect`` from the first to the last epoch;
* paired difference: ``values = reference + 0.25`` SD at every epoch;
* clearer trend: the fall-then-rise on a level of 10 against a flat reference
  on the same level.

Every draw comes from ``numpy.random.default_rng([key, scenario, replicate])``
and each test's permutations from its replicate number: the table is a
deterministic function of its arguments.

How many seeds a sweep needs: :func:`resampled_power` (and
:func:`power_rows` for every claim test of a sweep) estimates a test's power
at ``K`` seeds at the effect a sweep measured, by resampling its seeds;
:func:`turn_power` the power of the turning-point test on simulated
fall-then-rise trajectories of a given size. Pure; nothing is printed or read.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from lr_jax.experiment import claim_statistics as cs

NOISES = ("iid", "AR(1) 0.5", "seed offsets")
LEVEL = 10.0  # level of the trajectories of the relative-fall test (claim 3), in noise SDs


class CalibrationRow(NamedTuple):
    """One test in one scenario: how often it said "held".

    Attributes:
      test: the claim test (``claim_statistics`` function and half).
      scenario: the noise model and what was planted.
      kind: ``false held`` (no effect in the claimed direction) or ``power``.
      held: replicates in which the test held.
      replicates: simulated data sets.
    """

    test: str
    scenario: str
    kind: str
    held: int
    replicates: int

    @property
    def rate(self) -> float:
        return self.held / self.replicates

    @property
    def mc_error(self) -> float:
        """Monte-Carlo standard error of :attr:`rate` (binomial)."""
        return math.sqrt(max(self.rate * (1 - self.rate), 1e-12) / self.replicates)


def noise(rng: np.random.Generator, kind: str, seeds: int, epochs: int) -> np.ndarray:
    """``[seeds, epochs]`` noise of one model of :data:`NOISES` (SD 1 per cell within a seed)."""
    if kind == "iid":
        return rng.normal(size=(seeds, epochs))
    if kind == "AR(1) 0.5":
        rho = 0.5
        w = rng.normal(size=(seeds, epochs))
        out = np.empty_like(w)
        out[:, 0] = w[:, 0]
        for e in range(1, epochs):
            out[:, e] = rho * out[:, e - 1] + math.sqrt(1 - rho**2) * w[:, e]
        return out
    if kind == "seed offsets":
        return rng.normal(size=(seeds, epochs)) + rng.normal(size=(seeds, 1))
    raise ValueError(f"unknown noise {kind!r}; one of {NOISES}")


def v_shape(epochs: int, effect: float) -> np.ndarray:
    """``[E]``: falls by ``effect`` from epoch 0 to the middle epoch, rises back by the last."""
    c = (epochs - 1) / 2
    e = np.arange(epochs)
    return -effect * (1 - np.abs(e - c) / c)


def fall_then_flat(epochs: int, effect: float) -> np.ndarray:
    """``[E]``: falls by ``effect`` from epoch 0 to the middle epoch and stays there."""
    c = (epochs - 1) / 2
    e = np.arange(epochs)
    return -effect * np.minimum(e / c, 1.0)


def _replicate(key: int, scenario: int, replicate: int, noise_kind: str, seeds: int, epochs: int,
               effect: float, n_resamples: int, planted: str) -> dict[str, bool]:
    """The verdict of every test on one simulated data set.

    ``planted``: ``none`` (no trend in any test's data), ``effect`` (each
    test's own alternative, module docstring) or ``fall, no rise``.
    """
    rng = np.random.default_rng([key, scenario, replicate])
    n = lambda: noise(rng, noise_kind, seeds, epochs)  # noqa: E731
    held = {}
    if planted == "fall, no rise":
        f, r = cs.dip_then_rise(fall_then_flat(epochs, effect) + n(), seed=replicate, n_resamples=n_resamples)
        return {"dip_then_rise: rise": r.held}
    vee = v_shape(epochs, effect) if planted == "effect" else np.zeros(epochs)
    f, r = cs.dip_then_rise(vee + n(), seed=replicate, n_resamples=n_resamples)
    held["dip_then_rise: fall"], held["dip_then_rise: rise"] = f.held, r.held
    held["dip_then_rise: both"] = f.held and r.held
    u, d = cs.rise_then_dip(-vee + n(), seed=replicate, n_resamples=n_resamples)
    held["rise_then_dip: rise"], held["rise_then_dip: fall"] = u.held, d.held
    ramp = effect * np.arange(epochs) / (epochs - 1) if planted == "effect" else np.zeros(epochs)
    held["growth"] = cs.growth(ramp + n()).held
    shift = 0.25 if planted == "effect" else 0.0
    held["paired_difference"] = cs.paired_difference(shift + n(), n()).held
    held["clearer_trend"] = cs.clearer_trend(LEVEL + vee + n(), LEVEL + n()).held
    return held


def simulate(replicates: int = 1000, *, seeds: int = 10, epochs: int = 11, effect: float = 1.6,
             n_resamples: int = 999, key: int = 0, noises: Sequence[str] = NOISES) -> list[CalibrationRow]:
    """False-held rate and power of every claim test, by simulation.

    Args:
      replicates: simulated data sets per scenario.
      seeds: ``S``, rows of each data set.
      epochs: ``E``, columns.
      effect: size of the planted fall-then-rise, growth and ``fall, no
        rise``, in noise SDs.
      n_resamples: permutations of each turning-point test (its p-value is
        valid for any number; more make it less noisy and a little more powerful).
      key: the simulation's seed.
      noises: noise models (:data:`NOISES`) of the no-trend scenarios.

    Returns:
      For each noise model, one ``false held`` row per test (no trend), then
      ``power`` rows (iid noise, the planted effects) and the ``false held``
      rate of the rise after a fall that does not rise (iid noise).
    """
    scenarios = [(f"{k}, no trend", k, "none", "false held") for k in noises]
    scenarios += [(f"iid, {effect:g}-SD effect", "iid", "effect", "power"),
                  (f"AR(1) 0.5, {effect:g}-SD effect", "AR(1) 0.5", "effect", "power"),
                  (f"iid, {effect:g}-SD fall, no rise", "iid", "fall, no rise", "false held")]
    rows = []
    for index, (name, noise_kind, planted, kind) in enumerate(scenarios):
        counts: dict[str, int] = {}
        for rep in range(replicates):
            for test, h in _replicate(key, index, rep, noise_kind, seeds, epochs, effect, n_resamples,
                                      planted).items():
                counts[test] = counts.get(test, 0) + int(h)
        rows += [CalibrationRow(t, name, kind, c, replicates) for t, c in counts.items()]
    return rows


def calibration_markdown(rows: Sequence[CalibrationRow], alpha: float = cs.ALPHA) -> str:
    """A markdown table: per test and scenario, the rate at which it held and its Monte-Carlo error."""
    lines = ["| test | scenario | measures | held | rate (MC s.e.) |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.test} | {r.scenario} | {r.kind} | {r.held}/{r.replicates} | "
                     f"{100 * r.rate:.1f} % ({100 * r.mc_error:.1f}) |")
    lines += ["", f"A false-held rate is to be at most {100 * alpha:g} % (the one-sided level of every test)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Power at measured effects: how many seeds a claim test needs


def resampled_power(arrays: Sequence[np.ndarray], test, seed_counts: Sequence[int] = (10, 20, 30),
                    replicates: int = 200, key: int = 0) -> dict[int, float]:
    """Power of a claim test at the effect a sweep measured, for several numbers of seeds, by resampling seeds.

    Each replicate draws ``K`` seeds with replacement from the sweep's ``S``
    seeds (the same seeds for every array, which keeps paired categories
    paired) and applies ``test``; the power at ``K`` is the share of
    replicates in which it held. This treats the measured seeds as the
    population: the power of a new sweep whose true effect is the measured
    one (a post-hoc estimate: an effect measured too large gives too high a power).

    Args:
      arrays: ``[S, E]`` trajectories of the same seeds (one, or a test's value and reference).
      test: ``test(*arrays, seed=...) -> Estimate`` (a :mod:`claim_statistics` function taking
        the permutation key as ``seed``) or a callable returning one Estimate.
      seed_counts: the ``K`` to try.
      replicates: resampled sweeps per ``K``.
      key: seed of the resampling.

    Returns:
      ``{K: power}``.
    """
    arrays = [np.asarray(a, np.float64) for a in arrays]
    s = arrays[0].shape[0]
    out = {}
    for k in seed_counts:
        rng = np.random.default_rng([key, k])
        held = 0
        for rep in range(replicates):
            idx = rng.integers(0, s, size=k)
            held += bool(test(*(a[idx] for a in arrays), seed=rep).held)
        out[k] = held / replicates
    return out


def seeds_for_power(power: dict[int, float], target: float = 0.8) -> int | None:
    """The smallest ``K`` of :func:`resampled_power`'s result reaching ``target`` (None if none does)."""
    reached = [k for k, p in sorted(power.items()) if p >= target]
    return reached[0] if reached else None


def turn_power(effect: float, *, seeds: int = 10, epochs: int = 11, replicates: int = 400,
               n_resamples: int = 999, key: int = 0, noise_kind: str = "iid") -> tuple[float, float]:
    """Power of :func:`~lr_jax.experiment.claim_statistics.dip_then_rise`'s two halves on the fall-then-rise of ``effect`` SD.

    Returns:
      ``(fall, rise)``: the shares of ``replicates`` simulated sweeps (:func:`v_shape`
      plus ``noise_kind`` noise) in which each half held.
    """
    fall = rise = 0
    for rep in range(replicates):
        rng = np.random.default_rng([key, 1000 + seeds, rep])
        f, r = cs.dip_then_rise(v_shape(epochs, effect) + noise(rng, noise_kind, seeds, epochs), seed=rep,
                                n_resamples=n_resamples)
        fall, rise = fall + f.held, rise + r.held
    return fall / replicates, rise / replicates


Z_80 = 0.8416  # standard normal quantile of the target power
Z_ALPHA = 1.9600  # and of the one-sided level


def power_rows(tests, seed_counts: Sequence[int] = (10, 20, 30), replicates: int = 100,
               n_resamples: int = 999, key: int = 0) -> list[dict]:
    """For each claim test of a sweep, its power at ``K`` seeds and its minimum detectable effect.

    Args:
      tests: :class:`lr_jax.experiment.claims.ClaimTest` items (``claim_tests(rows)``).
      seed_counts: the ``K`` of :func:`resampled_power`.
      replicates: resampled sweeps per ``K``.
      n_resamples: permutations of each turning-point test inside the simulation.
      key: seed of the resampling.

    Returns:
      One dict per test: its setting, claim, test, category, the sweep's
      estimate and interval (``mean``, ``low``, ``high``, ``n_seeds`` ``S``),
      ``power`` ``{K: share held}``, ``seeds_for_80`` (the smallest ``K``
      reaching 80 %, or None), and ``mde``: the effect a sweep of ``S``
      seeds detects with 80 % power, ``(z_0.975 + z_0.8) * (high - low) /
      (2 z_0.975)`` (the interval's half-width as 1.96 standard errors; a
      normal approximation).
    """
    out = []
    for t in tests:
        e = t.run()
        kwargs = {"n_resamples": n_resamples} if t.claim in (1, 2) else {}
        power = resampled_power(t.arrays, lambda *a, seed, _t=t: _t.fn(*a, seed=seed, **kwargs), seed_counts,
                                replicates, key)
        mde = (Z_ALPHA + Z_80) * (e.high - e.low) / (2 * Z_ALPHA)
        out.append({**t.setting, "claim": t.claim, "test": t.test, "category": t.category, "mean": e.mean,
                    "low": e.low, "high": e.high, "n_seeds": e.n_seeds, "held": e.held, "power": power,
                    "seeds_for_80": seeds_for_power(power), "mde": mde})
    return out


def power_markdown(rows: Sequence[dict]) -> str:
    """A markdown table of :func:`power_rows`."""
    if not rows:
        return ""
    ks = sorted(rows[0]["power"])
    head = ["claim", "lr", "depth", "test", "category", "estimate [95 % CI]",
            *(f"power, {k} seeds" for k in ks), "seeds for 80 %", "MDE (80 %)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        ci = cs.interval_text(r["mean"], r["low"], r["high"])
        need = r["seeds_for_80"] if r["seeds_for_80"] is not None else f"> {ks[-1]}"
        lines.append(f"| {r['claim']} | {r['lr']:g} | {r['depth']} | {r['test']} | {r['category']} | {ci} | "
                     + " | ".join(f"{100 * r['power'][k]:.0f} %" for k in ks) + f" | {need} | {r['mde']:.3g} |")
    return "\n".join(lines) + "\n"
