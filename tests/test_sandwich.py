"""The certified sandwich on random small nets (issue 5).

    sample_regions  <=  count_regions  <=  2 ** tight_bounds  <=  2 ** C (Remark 2)

Everything runs in float64 (``jax.enable_x64``) so that the float64 exact count
is compared with bounds computed at the same precision.

To keep compile time low, each random net's hidden widths (drawn in 2..8) are
padded to 8 for the JAX calls with neurons that are dead everywhere (zero
incoming and outgoing weights, bias -1). Such neurons change no region, and
Algorithm 1, the bound propagation and the sampler all classify them dead, so
the results equal those of the unpadded net while every net of one
``(d, depth)`` shares one compiled program. The exact count sees the unpadded
net.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lr_jax import local_bounds
from lr_jax.bounds.exact_count import count_regions
from lr_jax.bounds.sampled_regions import sample_regions
from lr_jax import tight_bounds
from tests.helpers import random_mlp

PAD_WIDTH = 8
RADII = np.array([0.0, 0.1, 0.4, 1.0])
NUM_POINTS = 2
# (input dimension, depth): a spread of d in 2..6 and 1..3 hidden layers; the
# slow sweep covers every combination.
CONFIGS = [(2, 2)]  # (6, 1), (4, 3) and the rest run in the slow sweep below
ALL_CONFIGS = [(d, depth) for d in range(2, 7) for depth in (1, 2, 3)]
SAMPLER = dict(num_samples=128, num_chords=4, max_breakpoints=32)


def sampler_key(seed: int):
    """A key for the sampler. The lower bound holds for any key and any PRNG;
    ``unsafe_rbg`` compiles several times faster than threefry on CPU, which
    is most of this file's run time (vmap/loop equality, which needs
    threefry's vmap semantics, is tested in test_sampled_regions.py)."""
    return jax.random.key(seed, impl="unsafe_rbg")


def pad_hidden_widths(layers, width: int = PAD_WIDTH):
    """The same function with every hidden layer padded to ``width`` dead neurons."""
    padded, extra_in = [], 0
    for k, (W, b) in enumerate(layers):
        W = np.pad(np.asarray(W, np.float64), ((0, extra_in), (0, 0)))
        b = np.asarray(b, np.float64)
        if k < len(layers) - 1:
            extra_out = width - W.shape[1]
            W = np.pad(W, ((0, 0), (0, extra_out)))
            b = np.pad(b, (0, extra_out), constant_values=-1.0)
            extra_in = extra_out
        padded.append((W, b))
    return padded


def random_small_net(rng, d: int, depth: int):
    widths = [int(w) for w in rng.integers(2, PAD_WIDTH + 1, size=depth)]
    return random_mlp(rng, d, widths)


def _sandwich(layers, xs, key):
    padded = pad_hidden_widths(layers)
    paper = np.asarray(local_bounds(padded, xs, RADII).log2_bound)
    tight = tight_bounds(padded, xs, RADII)
    sampled = np.asarray(sample_regions(padded, xs, RADII, key, **SAMPLER))
    exact = np.zeros_like(sampled)
    for n, x in enumerate(xs):
        for k, r in enumerate(RADII):
            result = count_regions(layers, x, float(r))
            assert result.complete
            exact[n, k] = result.count
    return sampled, exact, np.asarray(tight.log2_bound), np.asarray(tight.num_unstable), paper


def test_padding_changes_nothing():
    rng = np.random.default_rng(5)
    layers = random_mlp(rng, 3, [3, 6])
    x = rng.normal(size=3)
    assert count_regions(pad_hidden_widths(layers), x, 0.7).count == count_regions(layers, x, 0.7).count
    with jax.enable_x64(True):
        a = tight_bounds(layers, x[None], RADII)
        b = tight_bounds(pad_hidden_widths(layers), x[None], RADII)
    np.testing.assert_array_equal(a.log2_bound, b.log2_bound)


def _check_sandwich(d, depth, num_nets):
    rng = np.random.default_rng(100 * d + depth)
    key = sampler_key(d * 10 + depth)
    with jax.enable_x64(True):
        for trial in range(num_nets):
            layers = random_small_net(rng, d, depth)
            xs = rng.normal(size=(NUM_POINTS, d))
            sampled, exact, tight, tight_c, paper = _sandwich(layers, xs, jax.random.fold_in(key, trial))
            assert np.all(sampled >= 1)
            assert np.all(sampled <= exact), (sampled, exact)
            # 2^tight >= exact, compared in log2 with float slack only.
            assert np.all(np.log2(exact) <= tight + 1e-9), (exact, tight)
            assert np.all(tight <= tight_c)
            assert np.all(tight <= paper)
            # r = 0: the centre's own region (random centres avoid boundaries).
            np.testing.assert_array_equal(exact[:, 0], 1)
            np.testing.assert_array_equal(sampled[:, 0], 1)


@pytest.mark.parametrize("d, depth", CONFIGS)
def test_sandwich_on_random_nets(d, depth):
    _check_sandwich(d, depth, num_nets=3)


@pytest.mark.slow
@pytest.mark.parametrize("d, depth", ALL_CONFIGS)
def test_sandwich_sweep(d, depth):
    _check_sandwich(d, depth, num_nets=10)
