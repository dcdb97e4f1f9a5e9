"""The distance to the nearest region boundary: closed form against a reference, bisection, samples."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import lr_jax
from tests.graph_nets import make_net
from tests.helpers import preactivations, random_mlp, sample_ball
from tests.reference_graph import dense_segments, graph_patterns


def _numpy_distance(layers, x):
    """``min_j |A_j| / ||grad z_j||`` with the gradients under x's own pattern (float64)."""
    x = np.asarray(x, np.float64)
    h, G = x, np.eye(x.size)  # G: d(h)/dx, [d, width]
    best = np.inf
    for W, b in layers[:-1]:
        W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
        a = h @ W + b
        g = G @ W  # [d, width]: gradients of this layer's pre-activations
        norms = np.linalg.norm(g, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(norms > 0, np.abs(a) / norms, np.where(a == 0, 0.0, np.inf))
        best = min(best, ratio.min())
        on = a > 0
        h, G = np.where(on, a, 0.0), g * on
    return best


def _pattern(layers, pts):
    return np.concatenate([(a > 0) for a in preactivations(layers, pts)], axis=1)


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    return random_mlp(rng, 5, [8, 6, 7]), rng.normal(size=(6, 5))


def test_matches_numpy_reference(mlp):
    layers, xs = mlp
    with jax.enable_x64(True):
        got = np.asarray(lr_jax.single_region_radius(layers, xs).radius)
    np.testing.assert_allclose(got, [_numpy_distance(layers, x) for x in xs], rtol=1e-10)


def test_agrees_with_bisection_within_its_tolerance(mlp):
    layers, xs = mlp
    r_max, grid, bisect = 3.0, 16, 12
    with jax.enable_x64(True):
        exact = lr_jax.single_region_radius(layers, xs, r_max)
        search = lr_jax.single_region_radius(layers, xs, r_max, grid, bisect, method="bisection")
    tol = r_max / (grid * 2**bisect)
    gap = np.asarray(exact.radius) - np.asarray(search.radius)
    assert (gap >= -1e-12).all() and (gap <= tol + 1e-12).all()
    np.testing.assert_array_equal(np.asarray(exact.capped), np.asarray(search.capped))


def test_no_region_change_inside_and_one_just_beyond(mlp):
    layers, xs = mlp
    rng = np.random.default_rng(1)
    rad = np.asarray(lr_jax.single_region_radius(layers, xs).radius, np.float64)
    for x, r in zip(xs, rad):
        centre = _pattern(layers, x[None])[0]
        inside = sample_ball(rng, x, 0.999 * r, 2000)
        assert (_pattern(layers, inside) == centre).all()
        # Along the minimising direction: the nearest hyperplane, crossed just beyond r.
        h, G, best = x, np.eye(x.size), (np.inf, None)
        for W, b in layers[:-1]:
            a, g = h @ W + b, G @ W
            norms = np.linalg.norm(g, axis=0)
            j = int(np.argmin(np.abs(a) / norms))
            if np.abs(a[j]) / norms[j] < best[0]:
                best = (np.abs(a[j]) / norms[j], -np.sign(a[j]) * g[:, j] / norms[j])
            h, G = np.maximum(a, 0.0), g * (a > 0)
        beyond = x + 1.001 * r * best[1]
        assert not (_pattern(layers, beyond[None])[0] == centre).all()


def test_r_max_caps_and_marks_capped(mlp):
    layers, xs = mlp
    full = np.asarray(lr_jax.single_region_radius(layers, xs).radius)
    cap = float(np.median(full))
    capped = lr_jax.single_region_radius(layers, xs, cap)
    np.testing.assert_allclose(np.asarray(capped.radius), np.minimum(full, cap), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(capped.capped), full >= cap)
    with pytest.raises(ValueError, match="r_max"):
        lr_jax.single_region_radius(layers, xs, method="bisection")


@pytest.mark.slow
def test_on_a_cnn_no_region_change_inside():
    module, variables, example, segments, shapes = make_net("cnn_pool", 8)
    net = lr_jax.network_from_linen(module, variables, example)
    dense = dense_segments(segments, shapes)
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(3,) + example.shape)
    rad = np.asarray(lr_jax.single_region_radius(net, xs).radius, np.float64)
    for x, r in zip(xs, rad):
        centre = graph_patterns(dense, x.reshape(1, -1))[0]
        inside = sample_ball(rng, x.reshape(-1), 0.999 * r, 500)
        assert (graph_patterns(dense, inside) == centre).all()
        assert int(lr_jax.local_bound(net, x, r * (1 + 1e-4)).num_unstable) > 0
