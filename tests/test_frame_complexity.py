"""The cross-polytope estimate (lr_jax.frame_complexity): a lower estimate of the certified unstable set."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lr_jax
from tests.graph_nets import make_net
from tests.helpers import random_mlp

RADII = np.array([0.0, 0.1, 0.5, 2.0])


def test_hand_computed_plane():
    # z1 = x1, z2 = x2 - 0.5 around x = 0. Any orthonormal frame of R^2 has a vertex with x1 > 0 and one
    # with x1 < 0 (r > 0), and reaches |x2| >= r / sqrt(2): z2 changes sign at r = 1 but not at r = 0.4.
    layers = [(np.eye(2), np.array([0.0, -0.5])), (np.ones((2, 1)), np.zeros(1))]
    for seed in range(5):
        out = lr_jax.frame_complexity(layers, np.zeros((1, 2)), [0.0, 0.4, 1.0], key=jax.random.key(seed), num_vertices=4)
        assert np.asarray(out.num_crossed).tolist() == [[0, 1, 2]]
        assert np.asarray(out.crossed)[0, 2, 0].tolist() == [True, True]
        assert np.asarray(out.crossed)[0, 1, 0].tolist() == [True, False]


def _assert_subset(crossed, unstable):
    for c, u in zip(jax.tree.leaves(crossed), jax.tree.leaves(unstable)):
        c, u = np.asarray(c), np.asarray(u)
        assert c.shape == u.shape
        assert not np.any(c & ~u)


def test_crossed_is_inside_both_certified_unstable_sets_on_random_mlps():
    rng = np.random.default_rng(0)
    for _ in range(3):
        layers = random_mlp(rng, 6, [8, 8, 8])
        xs = rng.normal(size=(5, 6))
        out = lr_jax.frame_complexity(layers, xs, RADII, key=jax.random.key(1), num_vertices=12)
        paper = lr_jax.local_bounds(layers, xs, RADII)
        tight = lr_jax.local_bounds(layers, xs, RADII, method="tight")
        _assert_subset(out.crossed, paper.unstable)
        _assert_subset(out.crossed, tight.unstable)
        assert np.all(np.asarray(out.num_crossed) <= np.asarray(tight.num_unstable))
        assert np.all(np.asarray(out.num_crossed)[:, 0] == 0)
        assert np.asarray(out.num_crossed)[:, -1].sum() > 0


@pytest.mark.parametrize("kind", ["cnn_pool", pytest.param("res_cnn", marks=pytest.mark.slow)])
def test_crossed_is_inside_both_certified_unstable_sets_on_cnns(kind):
    module, variables, example, _, _ = make_net(kind, 0)
    net = lr_jax.network_from_linen(module, variables, example)
    xs = np.random.default_rng(2).uniform(size=(3,) + example.shape).astype(np.float32)
    out = lr_jax.frame_complexity(net, xs, RADII, key=jax.random.key(3), num_vertices=50)
    paper = lr_jax.local_bounds(net, xs, RADII)
    tight = lr_jax.local_bounds(net, xs, RADII, method="tight")
    assert [u.shape for u in out.crossed] == [u.shape for u in paper.unstable]
    _assert_subset(out.crossed, paper.unstable)
    _assert_subset(out.crossed, tight.unstable)
    assert np.asarray(out.num_crossed)[:, -1].sum() > 0


def test_jit_padding_and_empty_batches():
    rng = np.random.default_rng(4)
    layers = random_mlp(rng, 5, [6, 6])
    xs = rng.normal(size=(5, 5))
    key = jax.random.key(7)
    full = lr_jax.frame_complexity(layers, xs, RADII, key=key, num_vertices=6)
    # A point's result does not depend on the batch it is in (its key is fold_in(key, n)).
    head = lr_jax.frame_complexity(layers, xs[:3], RADII, key=key, num_vertices=6)
    np.testing.assert_array_equal(head.num_crossed, np.asarray(full.num_crossed)[:3])
    inside = jax.jit(lambda x: lr_jax.frame_complexity(layers, x, RADII, key=key, num_vertices=6).num_crossed)(xs)
    np.testing.assert_array_equal(inside, full.num_crossed)
    assert lr_jax.frame_complexity(layers, xs[:0], RADII, key=key, num_vertices=6).num_crossed.shape == (0, 4)
    assert lr_jax.frame_complexity(layers, xs, np.zeros(0), key=key, num_vertices=6).num_crossed.shape == (5, 0)
    with pytest.raises(ValueError, match="num_vertices"):
        lr_jax.frame_complexity(layers, xs, RADII, key=key, num_vertices=7)
    with pytest.raises(ValueError, match="num_vertices"):
        lr_jax.frame_complexity(layers, xs, RADII, key=key, num_vertices=12)  # 2P > 2d = 10


def test_frame_directions_are_orthonormal_without_lapack():
    """The P directions are orthonormal to float32 rounding, and the function lowers with no LAPACK custom call."""
    from lr_jax.bounds.frame_complexity import _frame

    u = np.asarray(_frame(jax.random.PRNGKey(0), 784, 25, jnp.float32))
    np.testing.assert_allclose(u @ u.T, np.eye(25), atol=2e-6)
    hlo = jax.jit(lambda k: _frame(k, 50, 7, jnp.float32)).lower(jax.random.PRNGKey(1)).as_text()
    assert "lapack" not in hlo.lower() and "custom_call" not in hlo
