"""Claim statistics on synthetic trajectories with a known effect and with none."""

from __future__ import annotations

import numpy as np

from lr_jax.experiment import claim_statistics as cs

EPOCHS = np.arange(11)


def _u_shape(rng, seeds=10, noise=0.05):
    """Falls from 3.0 to 2.5 at epoch 5, rises back to 2.8 by epoch 10, plus seed noise."""
    mean = np.where(EPOCHS <= 5, 3.0 - 0.1 * EPOCHS, 2.5 + 0.06 * (EPOCHS - 5))
    return mean + noise * rng.normal(size=(seeds, EPOCHS.size))


def _flat(rng, seeds=10, noise=0.05):
    return 3.0 + noise * rng.normal(size=(seeds, EPOCHS.size))


def test_known_dip_and_rise_are_held():
    drop, rise = cs.dip_then_rise(_u_shape(np.random.default_rng(0)))
    assert drop.held and rise.held
    assert 0.4 < drop.mean < 0.6 and 0.2 < rise.mean < 0.4  # the planted effect: 0.5 and 0.3
    assert drop.low > 0 and rise.low > 0


def test_no_effect_is_not_held():
    drop, rise = cs.dip_then_rise(_flat(np.random.default_rng(1)))
    assert not drop.held and not rise.held
    assert drop.low < 0 < drop.high and rise.low < 0 < rise.high


def test_cross_fitting_removes_the_minimum_bias():
    """With no trend, the naive drop to each seed's own minimum is always positive; ours averages ~0."""
    rng = np.random.default_rng(2)
    naive, fitted = [], []
    for _ in range(200):
        v = _flat(rng, seeds=6)
        naive.append(np.mean(v[:, 0] - v.min(axis=1)))
        fitted.append(np.mean(cs.dip_then_rise(v)[0].mean))
    assert np.mean(naive) > 0.05  # the bias the cross-fitting avoids
    assert abs(np.mean(fitted)) < 0.01


def test_false_positive_rate_is_near_the_nominal_level():
    rng = np.random.default_rng(3)
    held = [cs.dip_then_rise(_flat(rng))[0].held for _ in range(100)]
    assert np.mean(held) <= 0.12  # one-sided test at 2.5 %, with room for the bootstrap's slack


def test_rise_then_dip_mirrors():
    rise, fall = cs.rise_then_dip(-_u_shape(np.random.default_rng(4)))
    assert rise.held and fall.held


def test_paired_difference_and_growth():
    rng = np.random.default_rng(5)
    train = 3.0 + 0.05 * rng.normal(size=(10, 11))
    random = train - 0.5 + 0.05 * rng.normal(size=(10, 11))
    more = cs.paired_difference(train, random)
    assert more.held and abs(more.mean - 0.5) < 0.05
    assert not cs.paired_difference(train, train + 0.05 * rng.normal(size=(10, 11))).held
    grows = cs.growth(np.cumsum(np.ones((10, 11)), axis=1) + rng.normal(size=(10, 11)))
    assert grows.held
    assert not cs.growth(_flat(rng)).held


def test_clearer_trend_compares_relative_drops():
    rng = np.random.default_rng(6)
    strong = _u_shape(rng)
    weak = 3.0 + 0.3 * (_u_shape(rng) - 3.0)  # the same shape at 30 % of the amplitude
    assert cs.clearer_trend(strong, weak).held
    assert not cs.clearer_trend(weak, strong).held


def test_degenerate_inputs():
    one = cs.seed_interval([1.0])
    assert one.n_seeds == 1 and not one.held and np.isnan(one.low)
    same = cs.seed_interval([0.2, 0.2, 0.2])
    assert same.low == same.high == same.mean and abs(same.mean - 0.2) < 1e-12 and same.held
    with_nan = cs.seed_interval([np.nan, 1.0, 1.1, 0.9])
    assert with_nan.n_seeds == 3
    assert "held" in cs.format_estimate(same)


def test_interval_text_prints_rounding_noise_as_zero():
    from lr_jax.experiment.claim_statistics import interval_text

    assert interval_text(-2.22e-17, -0.01, 0.0118) == "+0 [-0.01, 0.0118]"
    assert interval_text(0.0516, -0.0298, 0.162) == "+0.0516 [-0.0298, 0.162]"
