"""Tests of the exact region count (lr_jax.bounds.exact_count) against independent counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lr_jax.bounds.exact_count import RegionCount, count_regions, count_regions_with_stats
from tests.helpers import preactivations, random_mlp, sample_ball


def _patterns(layers, points) -> set:
    bits = np.concatenate([a > 0 for a in preactivations(layers, points)], axis=1)
    return {row.tobytes() for row in bits}


def _net(hidden_W, hidden_b, *more_hidden):
    """``layers`` from explicit hidden layers and a 1-output linear head."""
    pairs = [(np.asarray(hidden_W, float), np.asarray(hidden_b, float))]
    pairs += [(np.asarray(W, float), np.asarray(b, float)) for W, b in more_hidden]
    width = pairs[-1][0].shape[1]
    return pairs + [(np.ones((width, 1)), np.zeros(1))]


# ---- hand-made 2-D net ---------------------------------------------------------
#
# Layer 1: h1 = x1, h2 = x2, h3 = x1 + x2 - 1.   Layer 2: g = relu(h1) + relu(h2) - 0.6.
# g's zero set bends at the axes: x1 + x2 = 0.6 in quadrant I, x2 = 0.6 in
# quadrant II, x1 = 0.6 in quadrant IV, nowhere in quadrant III (g = -0.6).
#
#            x2
#             |  \  x1+x2=1 (h3)
#   x2=0.6 ---+\  \
#     (g)     | \  \          disk of radius 0.9 about 0:
#             |  \  \           I:   3 pieces (x1+x2 < 0.6, < 1, > 1)
#  -----------+---+------ x1    II:  2 (x2 < 0.6, > 0.6)
#             |   | x1=0.6      III: 1
#             |   | (g)         IV:  2 (x1 < 0.6, > 0.6)
#                               total 8
#
# The chord of x1 + x2 = 1 inside the disk has x1 in (0.106, 0.894): quadrant I
# only. Radius 0.5: x1 + x2 = 0.6 (distance 0.42) splits quadrant I, nothing
# else enters (x2 = 0.6, x1 = 0.6 and x1 + x2 = 1 are all farther than 0.5):
# 2 + 1 + 1 + 1 = 5.
HAND_NET = _net(
    [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
    [0.0, 0.0, -1.0],
    ([[1.0], [1.0], [0.0]], [-0.6]),
)


@pytest.mark.parametrize(
    "centre, radius, expected",
    [
        ((0.0, 0.0), 0.9, 8),  # centre on two boundaries: the search seeds elsewhere
        ((0.05, 0.02), 0.9, 8),
        ((0.0, 0.0), 0.5, 5),
        ((-0.5, -0.5), 0.3, 1),  # inside quadrant III, away from every line
    ],
)
def test_hand_made_net(centre, radius, expected):
    result = count_regions(HAND_NET, np.array(centre), radius)
    assert result.complete
    assert result.count == expected
    rng = np.random.default_rng(0)
    assert _patterns(HAND_NET, sample_ball(rng, centre, radius, 20_000)) == {
        p.tobytes() for p in result.patterns
    }


# ---- one hidden layer: regions of a hyperplane arrangement ---------------------


def _arrangement_regions_in_ball(W, b, x0, r) -> int:
    """Regions of the arrangement ``{x : x W_j + b_j = 0}`` meeting the open ball.

    For hyperplanes in general position meeting a convex open set, the number
    of regions is ``sum_k`` (number of ``k``-wise intersections, flats of
    codimension ``k``, that meet the set), ``k = 0 .. d`` (Zaslavsky's formula
    for arrangements in general position; ``1 + lines + points`` for ``d = 2``).
    A flat ``{x : A x = c}`` meets the ball iff its distance to ``x0`` is
    ``< r``: the least-norm solution of ``A (x - x0) = c - A x0``.
    """
    d, m = W.shape
    total = 0
    for k in range(min(d, m) + 1):
        for subset in itertools.combinations(range(m), k):
            if k == 0:
                total += 1
                continue
            A = W[:, subset].T
            rhs = -b[list(subset)] - A @ x0
            step = A.T @ np.linalg.solve(A @ A.T, rhs)
            total += np.linalg.norm(step) < r
    return int(total)


@pytest.mark.parametrize("d", [2, 3])
def test_one_hidden_layer_matches_arrangement_formula(d):
    rng = np.random.default_rng(d)
    for _ in range(12):
        m = int(rng.integers(2, 9))
        layers = random_mlp(rng, d, [m])
        x0 = rng.normal(size=d) * 0.3
        r = float(rng.choice([0.2, 0.6, 1.5]))
        W, b = layers[0]
        result = count_regions(layers, x0, r)
        assert result.complete
        assert result.count == _arrangement_regions_in_ball(W, b, x0, r)


def test_one_hidden_layer_formula_by_hand():
    # Three lines x1 = 0, x2 = 0, x1 + x2 = 0.1 near the origin, disk radius 1:
    # 3 lines, 3 crossing points (0,0), (0,0.1), (0.1,0): 1 + 3 + 3 = 7.
    layers = _net([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [0.0, 0.0, -0.1])
    assert _arrangement_regions_in_ball(layers[0][0], layers[0][1], np.array([0.3, 0.2]), 1.0) == 7
    assert count_regions(layers, np.array([0.3, 0.2]), 1.0).count == 7


# ---- d = 2 random nets against a dense grid -------------------------------------


def test_two_dimensional_nets_match_dense_grid():
    rng = np.random.default_rng(1)
    for _ in range(10):
        widths = [int(w) for w in rng.integers(2, 7, size=int(rng.integers(2, 4)))]
        layers = random_mlp(rng, 2, widths)
        x0 = rng.normal(size=2)
        r = float(rng.choice([0.3, 0.8]))
        result = count_regions(layers, x0, r)
        g = np.linspace(-r, r, 301)
        grid = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
        grid = x0 + grid[np.sum(grid**2, axis=1) <= r * r]
        found = {p.tobytes() for p in result.patterns}
        on_grid = _patterns(layers, grid)
        # Every grid pattern is a region the search found; the grid may only
        # miss slivers thinner than its spacing.
        assert on_grid <= found
        assert result.count - len(on_grid) <= 2


def test_sampled_patterns_are_found_in_higher_dimensions():
    rng = np.random.default_rng(2)
    for d in (3, 5):
        layers = random_mlp(rng, d, [6, 6, 5])
        x0 = rng.normal(size=d)
        result = count_regions(layers, x0, 1.5)
        assert result.complete and result.count > 20
        assert _patterns(layers, sample_ball(rng, x0, 1.5, 5000)) <= {p.tobytes() for p in result.patterns}


# ---- degenerate and edge cases --------------------------------------------------


def test_zero_radius_is_one_region_at_a_generic_point():
    rng = np.random.default_rng(3)
    layers = random_mlp(rng, 4, [6, 6])
    result = count_regions(layers, rng.normal(size=4), 0.0)
    assert (result.count, result.complete) == (1, True)


def test_zero_radius_on_a_boundary_meets_no_open_region():
    layers = _net([[1.0], [0.0]], [0.0])
    assert count_regions(layers, np.zeros(2), 0.0).count == 0


def test_single_line_through_the_centre_gives_two_regions():
    layers = _net([[1.0], [0.0]], [0.0])
    result = count_regions(layers, np.array([0.0, 0.3]), 0.5)
    assert result.count == 2
    assert sorted(result.patterns[:, 0].tolist()) == [False, True]


def test_all_neurons_dead_is_one_region():
    layers = _net(-np.ones((3, 4)), -10 * np.ones(4), (np.ones((4, 3)), np.zeros(3)))
    result = count_regions(layers, np.zeros(3), 1.0)
    assert result.count == 1
    assert not result.patterns.any()


def test_constant_rows_keep_their_sign():
    # Layer 2 neuron relu(h1) + 0.2 is a constant 0.2 > 0 where h1 < 0: it must
    # stay on there, and the count is 2 (h1's two sides), not 3 or 4.
    layers = _net([[1.0], [0.0]], [0.0], ([[1.0]], [0.2]))
    result = count_regions(layers, np.zeros(2), 1.0)
    assert result.count == 2
    np.testing.assert_array_equal(result.patterns[:, 1], [True, True])


def test_max_regions_stops_the_search():
    rng = np.random.default_rng(4)
    layers = random_mlp(rng, 3, [8, 8])
    x0 = rng.normal(size=3)
    full = count_regions(layers, x0, 1.0)
    assert full.complete and full.count > 5
    cut = count_regions(layers, x0, 1.0, max_regions=3)
    assert isinstance(cut, RegionCount)
    assert (cut.count, cut.complete) == (3, False)
    assert cut.patterns.shape == (3, 16)
    exactly = count_regions(layers, x0, 1.0, max_regions=full.count)
    assert (exactly.count, exactly.complete) == (full.count, True)


def test_patterns_are_distinct_and_shaped():
    rng = np.random.default_rng(5)
    layers = random_mlp(rng, 3, [4, 7])
    result = count_regions(layers, rng.normal(size=3), 0.7)
    assert result.patterns.dtype == bool
    assert result.patterns.shape == (result.count, 11)
    assert len({p.tobytes() for p in result.patterns}) == result.count


def test_stats_count_programs():
    rng = np.random.default_rng(6)
    layers = random_mlp(rng, 3, [6, 6])
    result, programs = count_regions_with_stats(layers, rng.normal(size=3), 0.8)
    assert programs >= result.count - 1 >= 0


@pytest.mark.parametrize(
    "x, radius, kwargs, match",
    [
        (np.zeros(3), 0.5, {}, "dimension"),
        (np.zeros((1, 2)), 0.5, {}, "1-D"),
        (np.zeros(2), -0.1, {}, "radius"),
        (np.array([np.nan, 0.0]), 0.5, {}, "NaN"),
        (np.zeros(2), 0.5, {"max_regions": 0}, "max_regions"),
    ],
)
def test_rejects_bad_input(x, radius, kwargs, match):
    with pytest.raises(ValueError, match=match):
        count_regions(HAND_NET, x, radius, **kwargs)
