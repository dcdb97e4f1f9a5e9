"""Tests of the tighter bound (lr_jax.bounds.tight_bound): sound, never above the paper."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax import local_bounds
from lr_jax.bounds.exact_count import count_regions
from lr_jax import tight_bounds
from lr_jax.bounds.tight_bound import _log2_binomial_prefix
from tests.helpers import preactivations, random_mlp, sample_ball
from tests.test_sandwich import NUM_POINTS, RADII, pad_hidden_widths, random_small_net


def _net(*hidden):
    pairs = [(np.asarray(W, float), np.asarray(b, float)) for W, b in hidden]
    width = pairs[-1][0].shape[1]
    return pairs + [(np.ones((width, 1)), np.zeros(1))]


def test_sound_by_sampling_and_never_above_paper():
    # Same shapes as test_sandwich's (4, 3) configuration: one compiled program.
    rng = np.random.default_rng(11)
    improved = 0
    with jax.enable_x64(True):
        for _ in range(6):
            layers = random_small_net(rng, 4, 3)
            widths = [W.shape[1] for W, _ in layers[:-1]]
            xs = rng.normal(size=(NUM_POINTS, 4))
            padded = pad_hidden_widths(layers)
            tight = tight_bounds(padded, xs, RADII)
            paper = local_bounds(padded, xs, RADII)
            assert np.all(np.asarray(tight.unstable) <= np.asarray(paper.unstable))
            assert np.all(np.asarray(tight.log2_bound) <= np.asarray(tight.num_unstable))
            assert np.all(np.asarray(tight.num_unstable) <= np.asarray(paper.num_unstable))
            np.testing.assert_array_equal(tight.changed, paper.changed)
            np.testing.assert_array_equal(tight.deviation, paper.deviation)
            improved += int(np.sum(paper.num_unstable) - np.sum(tight.num_unstable))
            for n, x in enumerate(xs):
                centre = preactivations(layers, x[None])
                for k, r in enumerate(RADII):
                    points = preactivations(layers, sample_ball(rng, x, r, 2000))
                    for h, w in enumerate(widths):
                        stable = ~np.asarray(tight.unstable[n, k, h, :w])
                        # A certified-stable neuron keeps its strict sign on the ball.
                        signs = np.sign(points[h][:, stable])
                        assert np.all(signs == np.sign(centre[h][:, stable]))
                        assert np.all(signs != 0)
                        assert not np.asarray(tight.unstable[n, k, h, w:]).any()
    assert improved > 0  # the bound propagation certifies neurons Algorithm 1 cannot


@pytest.mark.parametrize("n", range(0, 9))
def test_log2_binomial_prefix(n):
    for k in range(0, 11):
        expected = math.log2(sum(math.comb(n, j) for j in range(min(k, n) + 1)))
        got = float(_log2_binomial_prefix(jnp.int32(n), jnp.int32(k), 8))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_binomial_counting_for_lines_in_the_plane():
    # Eight lines through points near the origin at angles j pi / 8, disk of
    # radius 5: all lines and all 28 crossings lie inside, so exactly
    # 1 + 8 + 28 = 37 regions, which the binomial bound attains (2^8 = 256).
    angles = np.arange(8) * np.pi / 8
    W = np.stack([np.cos(angles), np.sin(angles)])
    b = 0.05 * np.arange(1, 9) * (-1.0) ** np.arange(8)
    layers = _net((W, b))
    with jax.enable_x64(True):
        tight = tight_bounds(layers, np.zeros((1, 2)), [5.0])
    assert int(tight.num_unstable[0, 0]) == 8
    assert float(tight.log2_bound[0, 0]) == pytest.approx(math.log2(37))
    assert count_regions(layers, np.zeros(2), 5.0).count == 37


def test_rank_of_earlier_layers_limits_the_count():
    # d = 3 but layer 1 has 2 neurons (h1 = x1, h2 = x2): layer 2 sees a
    # 2-dimensional image, so its 4 unstable neurons cut each layer-1 region
    # into at most 1 + 4 + 6 = 11 pieces, not 2^4: bound 2^2 * 11 = 44.
    layers = _net(
        ([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.0]),
        ([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, -1.0]], [-0.3, -0.3, -0.5, 0.1]),
    )
    with jax.enable_x64(True):
        tight = tight_bounds(layers, np.zeros((1, 3)), [1.0])
    assert int(tight.num_unstable[0, 0]) == 6
    assert float(tight.log2_bound[0, 0]) == pytest.approx(math.log2(44))
    assert count_regions(layers, np.zeros(3), 1.0).count <= 44


def test_hyperplane_at_exactly_distance_r_is_unstable():
    # h = x1 - 1 touches the closed unit ball at (1, 0): zero somewhere, so unstable.
    layers = _net(([[1.0], [0.0]], [-1.0]))
    with jax.enable_x64(True):
        tight = tight_bounds(layers, np.zeros((1, 2)), [1.0, 0.999])
    np.testing.assert_array_equal(tight.unstable[0, :, 0, 0], [True, False])


def test_shapes_and_padding():
    rng = np.random.default_rng(4)
    layers = random_mlp(rng, 3, [5, 2])
    out = tight_bounds(layers, rng.normal(size=(2, 3)), 0.5)
    assert out.num_unstable.shape == (2, 1) and out.num_unstable.dtype == jnp.int32
    assert out.unstable.shape == (2, 1, 2, 5)
    assert not np.asarray(out.unstable[:, :, 1, 2:]).any()


@pytest.mark.parametrize(
    "xs, radii",
    [
        (np.zeros(3), [0.1]),
        (np.zeros((2, 4)), [0.1]),
        (np.zeros((2, 3)), [-0.1]),
        (np.full((2, 3), np.nan), [0.1]),
    ],
)
def test_rejects_bad_input_like_the_kernel(xs, radii):
    layers = random_mlp(np.random.default_rng(0), 3, [4])
    with pytest.raises(ValueError) as ours:
        tight_bounds(layers, xs, radii)
    with pytest.raises(ValueError) as kernel:
        local_bounds(layers, xs, radii)
    assert str(ours.value) == str(kernel.value)


def test_a_hyperplane_within_rounding_of_the_sphere_is_not_certified_stable():
    # A trained net of the Figure-3 sweep (lr 0.02, depth 2, seed 9, epoch 8) and the random2 point
    # where a layer-2 hyperplane enters the ball by 2.0e-6 of r = 0.4: the exact (float64) count is 3
    # regions. Without a rounding guard the float32 tight bound certified that neuron stable and
    # returned 2^1 < 3.
    from pathlib import Path

    import lr_jax

    with np.load(Path(__file__).parent / "data" / "near_tangent_net.npz") as z:
        layers = [(z[f"W{i}"], z[f"b{i}"]) for i in range(3)]
        x = z["x"]
    exact = lr_jax.count_regions(layers, x, 0.4)
    assert exact.complete and exact.count == 3
    tight = float(lr_jax.local_bounds(layers, x[None], [0.4], method="tight").log2_bound[0, 0])
    paper = float(lr_jax.local_bounds(layers, x[None], [0.4]).log2_bound[0, 0])
    assert np.log2(exact.count) <= tight <= paper
