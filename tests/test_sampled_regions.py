"""Tests of the sampled lower bound (lr_jax.bounds.sampled_regions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.bounds.exact_count import count_regions
from lr_jax.bounds.sampled_regions import (
    _count_distinct,
    _pattern_hash,
    sample_region_count,
    sample_regions,
)
from tests.helpers import random_mlp

# One architecture and one sampler configuration for most tests, so that they
# share a single compiled program.
D, WIDTHS = 3, [5, 7]
RADII = np.array([0.0, 0.3, 1.0])
SAMPLER = dict(num_samples=64, num_chords=4, max_breakpoints=24)


@pytest.fixture(scope="module")
def net():
    rng = np.random.default_rng(0)
    return random_mlp(rng, D, WIDTHS), rng.normal(size=(3, D))


def test_vmap_matches_python_loop(net):
    layers, xs = net
    key = jax.random.key(7)
    batched = np.asarray(sample_regions(layers, xs, RADII, key, **SAMPLER))
    assert batched.shape == (3, 3) and batched.dtype == np.int32
    for n, x in enumerate(xs):
        for k, r in enumerate(RADII):
            ball_key = jax.random.fold_in(jax.random.fold_in(key, n), k)
            assert int(sample_region_count(layers, x, r, ball_key, **SAMPLER)) == batched[n, k]


def test_never_above_exact_and_deterministic(net):
    layers, xs = net
    key = jax.random.key(1)
    counts = np.asarray(sample_regions(layers, xs, RADII, key, **SAMPLER))
    np.testing.assert_array_equal(counts, sample_regions(layers, xs, RADII, key, **SAMPLER))
    np.testing.assert_array_equal(counts[:, 0], 1)  # r = 0: the centre's pattern
    for n, x in enumerate(xs):
        for k, r in enumerate(RADII):
            assert 1 <= counts[n, k] <= count_regions(layers, x, float(r)).count


def test_chords_find_every_region_in_one_dimension():
    # In d = 1 the ball is an interval and a diameter walks all of it: the
    # chord walk alone must recover the exact count.
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        for _ in range(5):
            layers = random_mlp(rng, 1, [6, 6])
            xs = rng.normal(size=(2, 1))
            counts = sample_regions(
                layers, xs, RADII, jax.random.key(0), num_samples=1, num_chords=1, max_breakpoints=64
            )
            exact = [[count_regions(layers, x, float(r)).count for r in RADII] for x in xs]
            np.testing.assert_array_equal(counts, exact)


def test_hash_is_a_function_of_the_pattern():
    weights = jax.random.bits(jax.random.key(0), (2, 6), jnp.uint32) | jnp.uint32(1)
    a = jnp.array([[0.5, -1.0, 0.0, 2.0, 0.1, -0.3]])  # pattern 100 110
    b = jnp.array([[0.1, -3.0, -2.0, 9.0, 0.2, -0.1]])  # same pattern
    c = a.at[0, 5].set(0.2)  # one bit differs
    ha, hb, hc = (_pattern_hash(p, weights) for p in (a, b, c))
    np.testing.assert_array_equal(ha, hb)
    # One flipped bit changes each hash by an odd weight: never a collision.
    assert np.all(np.asarray(ha) != np.asarray(hc))


def test_count_distinct_rows():
    h = jnp.array([[1, 2], [1, 3], [0, 2], [1, 2], [1, 3]], jnp.uint32)
    assert int(_count_distinct(h)) == 3
    assert int(_count_distinct(h[:1])) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_chords": -1}, "num_chords"),
        ({"max_breakpoints": 0}, "max_breakpoints"),
    ],
)
def test_rejects_bad_sizes(net, kwargs, match):
    layers, xs = net
    with pytest.raises(ValueError, match=match):
        sample_regions(layers, xs, RADII, jax.random.key(0), **kwargs)


def test_rejects_bad_input_like_the_kernel(net):
    layers, xs = net
    with pytest.raises(ValueError, match="2-D"):
        sample_regions(layers, xs[0], RADII, jax.random.key(0))
    with pytest.raises(ValueError, match="radius"):
        sample_regions(layers, xs, [-1.0], jax.random.key(0))


def test_points_beyond_the_first_chunk_keep_their_own_keys(net):
    from lr_jax.bounds.sampled_regions import _POINTS_PER_CHUNK

    layers, _ = net
    xs = np.random.default_rng(1).normal(size=(_POINTS_PER_CHUNK + 3, D))  # a second, padded chunk
    key = jax.random.key(3)
    batched = np.asarray(sample_regions(layers, xs, RADII[1:], key, **SAMPLER))
    for n in (0, _POINTS_PER_CHUNK, _POINTS_PER_CHUNK + 2):
        ball_key = jax.random.fold_in(jax.random.fold_in(key, n), 1)
        assert int(sample_region_count(layers, xs[n], RADII[2], ball_key, **SAMPLER)) == batched[n, 1]
