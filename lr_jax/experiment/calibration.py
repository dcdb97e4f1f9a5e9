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
deterministic function of its arguments. Pure; nothing is printed or read.
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
