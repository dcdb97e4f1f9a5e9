"""Tests of Algorithm 1 (lr_jax.bounds.local_bound) against the paper's pseudocode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lr_jax
from lr_jax import local_bound, local_bounds
from lr_jax.bounds.local_bound import _bounds_jit as _local_bounds_jit
from tests.helpers import preactivations, random_architecture, random_mlp, sample_ball
from tests.reference_algorithm1 import algorithm1_loops, algorithm1_vectorised


def _assert_matches_reference(layers, xs, radii, out):
    widths = [np.shape(W)[1] for W, _ in layers[:-1]]
    for n, x in enumerate(xs):
        for k, r in enumerate(radii):
            C, S, P, U = algorithm1_loops(layers, x, float(r))
            assert int(out.num_unstable[n, k]) == C
            assert float(out.log2_bound[n, k]) == C
            for h, w in enumerate(widths):
                np.testing.assert_array_equal(np.asarray(out.unstable[n, k, h, :w]), S[h])
                np.testing.assert_array_equal(np.asarray(out.changed[n, k, h, :w]), P[h])
                np.testing.assert_allclose(np.asarray(out.deviation[n, k, h, :w]), U[h], rtol=1e-9, atol=1e-12)
                # Padding neurons are provably dead: never unstable, never changed, U = 0.
                assert not np.asarray(out.unstable[n, k, h, w:]).any()
                assert not np.asarray(out.changed[n, k, h, w:]).any()
                assert not np.asarray(out.deviation[n, k, h, w:]).any()


def test_matches_line_by_line_reference_on_random_mlps():
    rng = np.random.default_rng(0)
    radii = np.array([0.0, 0.02, 0.1, 0.3, 0.8, 2.0])
    with jax.enable_x64(True):
        for _ in range(6):  # each architecture compiles once: about a second each here
            d, widths = random_architecture(rng)
            layers = random_mlp(rng, d, widths)
            xs = rng.normal(size=(3, d))
            _assert_matches_reference(layers, xs, radii, local_bounds(layers, xs, radii))


def test_two_references_agree():
    rng = np.random.default_rng(1)
    for _ in range(20):
        d, widths = random_architecture(rng)
        layers = random_mlp(rng, d, widths)
        x = rng.normal(size=d)
        for r in (0.05, 0.5):
            a, b = algorithm1_loops(layers, x, r), algorithm1_vectorised(layers, x, r)
            assert a[0] == b[0]
            for s1, s2 in zip(a[1], b[1]):
                np.testing.assert_array_equal(s1, s2)


# ---- hand-computed cases -------------------------------------------------------

_IDENTITY_OUT = (np.ones((2, 1)), np.zeros(1))


def test_one_hidden_layer_by_hand():
    # Neurons x1 and x2; centre (0.5, -0.25), r = 0.375 (all exact in binary).
    # x1: A = 0.5 > U = r*||e1|| = 0.375 -> stable and linear (P = S = 0), U = 0.375.
    # x2: A = -0.25 < 0, U + A = 0.125 >= 0 -> unstable, P = S = 1, U = 0.375 - 0.25.
    layers = [(np.eye(2), np.zeros(2)), _IDENTITY_OUT]
    out = local_bound(layers, np.array([0.5, -0.25]), 0.375)
    assert int(out.num_unstable) == 1
    np.testing.assert_array_equal(out.unstable[0], [False, True])
    np.testing.assert_array_equal(out.changed[0], [False, True])
    np.testing.assert_allclose(out.deviation[0], [0.375, 0.125])


@pytest.mark.parametrize("a", [0.5, -0.5])
def test_hyperplane_at_exactly_distance_r_is_unstable(a):
    # The ball is closed: a hyperplane at distance exactly r touches it. The paper's
    # tests are strict (U + A < 0 for dead, U < A for stable), so the neuron is unstable.
    layers = [(np.array([[2.0], [0.0]]), np.array([0.0])), (np.ones((1, 1)), np.zeros(1))]
    x = np.array([a / 2.0, 3.0])  # A = 2 * x1 = a; ||w|| = 2; distance |a| / 2 = 0.25
    assert int(local_bound(layers, x, 0.25).num_unstable) == 1
    assert int(local_bound(layers, x, 0.25 * (1 - 2**-10)).num_unstable) == 0


def test_two_hidden_layers_by_hand():
    # Layer 1 = identity on centre (1, -0.25) with r = 0.5:
    #   n1: A = 1 > 0.5 -> linear, L = e1, U = 0.5.
    #   n2: A = -0.25, U + A = 0.25 >= 0 -> unstable, P = 1, U = 0.25.
    # Layer 2, one neuron with weights (1, 1), bias 0: A = 1,
    #   L = 1 * e1 (only P = 0 inputs), Usum = |1| * 0.25, U = 0.5 * 1 + 0.25 = 0.75 < 1,
    #   Usum != 0 -> P = 1, S = 0.
    # Weights (1, 2): Usum = 0.5, U = 1.0, not < A = 1 -> unstable.
    x = np.array([1.0, -0.25])
    for w2, s2, u2 in (([1.0, 1.0], False, 0.75), ([1.0, 2.0], True, 1.0)):
        layers = [(np.eye(2), np.zeros(2)), (np.array(w2)[:, None], np.zeros(1)), (np.ones((1, 1)), np.zeros(1))]
        out = local_bound(layers, x, 0.5)
        np.testing.assert_array_equal(np.asarray(out.unstable[0]), [False, True])
        assert bool(out.unstable[1, 0]) == s2
        assert bool(out.changed[1, 0])
        np.testing.assert_allclose(float(out.deviation[1, 0]), u2)
        assert int(out.num_unstable) == 1 + s2


def test_dead_neuron_blocks_propagation():
    # n2 dead (A = -1, U + A = -0.5 < 0): its U = 0 and L = 0, so layer 2 sees only n1.
    x = np.array([1.0, -1.0])
    layers = [(np.eye(2), np.zeros(2)), (np.array([[1.0], [5.0]]), np.array([-0.25])), (np.ones((1, 1)), np.zeros(1))]
    out = local_bound(layers, x, 0.5)
    np.testing.assert_array_equal(out.changed[0], [False, False])
    np.testing.assert_allclose(out.deviation[0], [0.5, 0.0])
    # Layer 2: A = 0.75, L = e1, Usum = 0, U = 0.5 < 0.75 -> linear and stable.
    assert not bool(out.unstable[1, 0]) and not bool(out.changed[1, 0])
    assert int(out.num_unstable) == 0


# ---- soundness by sampling -------------------------------------------------------


def _check_soundness(layers, x, r, rng, n_samples=400):
    out = local_bound(layers, x, r)
    widths = [np.shape(W)[1] for W, _ in layers[:-1]]
    samples = sample_ball(rng, x, r, n_samples)
    pre_c = preactivations(layers, x[None])
    pre_s = preactivations(layers, samples)
    patterns = np.concatenate([p > 0 for p in pre_s], axis=1)
    for h, w in enumerate(widths):
        S = np.asarray(out.unstable[h, :w])
        P = np.asarray(out.changed[h, :w])
        U = np.asarray(out.deviation[h, :w], np.float64)
        # S = 0: the sign never changes (strictly) in the ball.
        same_sign = np.sign(pre_s[h]) == np.sign(pre_c[h])
        assert same_sign[:, ~S].all()
        # U: |X'_j - X_j| <= U_j.
        moved = np.abs(np.maximum(pre_s[h], 0) - np.maximum(pre_c[h], 0))
        assert (moved <= U * (1 + 1e-5) + 1e-6).all()
        # P = 0: the same gradient (jax.jacobian) everywhere in the ball.
        if (~P).any():
            def neuron_values(z, h=h):
                a = z
                for Wk, bk in layers[: h + 1]:
                    pre = a @ jnp.asarray(Wk) + jnp.asarray(bk)
                    a = jax.nn.relu(pre)
                return a

            jac = jax.vmap(jax.jacobian(neuron_values))(jnp.asarray(np.vstack([x[None], samples[:50]])))
            jac = np.asarray(jac)[:, ~P, :]
            np.testing.assert_allclose(jac, np.broadcast_to(jac[:1], jac.shape), atol=1e-5)
    n_patterns = len({p.tobytes() for p in patterns})
    assert n_patterns <= 2 ** int(out.num_unstable)


def test_soundness_by_sampling_random_mlps():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        for _ in range(4):
            d, widths = random_architecture(rng)
            layers = random_mlp(rng, d, widths)
            x = rng.normal(size=d)
            for r in (0.05, 0.3, 1.0):
                _check_soundness(layers, x, r, rng)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), r=st.floats(0.0, 2.0))
def test_soundness_hypothesis(seed, r):
    rng = np.random.default_rng(seed)
    d, widths = random_architecture(rng)
    layers = random_mlp(rng, d, widths)
    with jax.enable_x64(True):
        _check_soundness(layers, rng.normal(size=d), r, rng, n_samples=200)


# ---- radius behaviour ------------------------------------------------------------


def test_monotone_in_radius_and_zero_at_r0():
    rng = np.random.default_rng(3)
    radii = np.linspace(0.0, 3.0, 31)
    for _ in range(4):
        d, widths = random_architecture(rng)
        layers = random_mlp(rng, d, widths)
        xs = rng.normal(size=(5, d))
        C = np.asarray(local_bounds(layers, xs, radii).num_unstable)
        assert (np.diff(C, axis=1) >= 0).all()
        assert (C[:, 0] == 0).all()


# ---- transformations ---------------------------------------------------------------


def _small_case(seed=4, n=4):
    rng = np.random.default_rng(seed)
    layers = random_mlp(rng, 5, [6, 3, 7])
    return layers, rng.normal(size=(n, 5)), np.array([0.1, 0.5, 1.0])


def test_jit_and_eager_agree():
    layers, xs, radii = _small_case()
    jitted = local_bounds(layers, xs, radii)
    with jax.disable_jit():  # one chunk: the eager path runs op by op
        eager = local_bounds(layers, xs, radii, chunk_size=64)
    for name in ("num_unstable", "log2_bound", "unstable", "changed"):
        np.testing.assert_array_equal(np.asarray(getattr(jitted, name)), np.asarray(getattr(eager, name)))
    # U is a float32 sum whose order XLA may change under jit: a few ulps apart.
    np.testing.assert_allclose(np.asarray(jitted.deviation), np.asarray(eager.deviation), rtol=1e-5, atol=1e-7)


def test_batched_equals_python_loop():
    layers, xs, radii = _small_case()
    batched = local_bounds(layers, xs, radii)
    for n, x in enumerate(xs):
        for k, r in enumerate(radii):
            single = local_bound(layers, x, r)
            for a, b in zip(single, batched):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b[n, k]), rtol=1e-6)


def test_no_recompile_on_repeat_calls():
    layers, xs, radii = _small_case(n=7)
    local_bounds(layers, xs, radii)
    size = _local_bounds_jit._cache_size()
    layers2, xs2, radii2 = _small_case(seed=5, n=7)
    local_bounds(layers2, xs2 + 1.0, radii2 * 2)
    local_bounds(layers, xs, radii)
    assert _local_bounds_jit._cache_size() == size


def test_usable_inside_user_jit_and_grad_free():
    layers, xs, radii = _small_case()
    f = jax.jit(lambda ls, x: lr_jax.local_bounds(ls, x, radii).num_unstable.sum())
    assert int(f(layers, xs)) == int(local_bounds(layers, xs, radii).num_unstable.sum())


def test_one_hidden_layer_scan_of_length_zero():
    rng = np.random.default_rng(6)
    layers = random_mlp(rng, 3, [4])
    out = local_bounds(layers, rng.normal(size=(2, 3)), [0.5])
    assert out.unstable.shape == (2, 1, 1, 4)


# ---- precision -------------------------------------------------------------------


def test_float32_agrees_with_float64_near_boundary():
    # First-layer hyperplanes at distance r * (1 +- 1e-4) from the centre: far
    # outside float32 rounding (~1e-7 relative), so both precisions must decide
    # alike, and the decision must be the exact one.
    rng = np.random.default_rng(7)
    d, m, r = 36, 32, 0.4
    W = rng.normal(size=(d, m)) / np.sqrt(d)
    x = rng.uniform(0, 1, size=d)
    offsets = np.where(np.arange(m) % 2 == 0, 1 + 1e-4, 1 - 1e-4) * np.where(np.arange(m) % 4 < 2, 1, -1)
    b = offsets * r * np.linalg.norm(W, axis=0) - x @ W  # A_j = offset_j * r * ||w_j||
    layers = [(W, b), (rng.normal(size=(m, 2)), np.zeros(2))]
    expected = np.abs(offsets) < 1  # inside distance r -> unstable
    f32 = local_bound(layers, x, r)
    with jax.enable_x64(True):
        f64 = local_bound(layers, x, r)
    np.testing.assert_array_equal(np.asarray(f64.unstable[0]), expected)
    np.testing.assert_array_equal(np.asarray(f32.unstable[0]), expected)
    assert f32.deviation.dtype == jnp.float32 and f64.deviation.dtype == jnp.float64


def test_float32_agrees_with_float64_on_deep_random_nets():
    rng = np.random.default_rng(8)
    layers = random_mlp(rng, 36, [32, 32, 32], bias_std=0.1)
    xs = rng.uniform(0, 1, size=(64, 36))
    radii = np.array([0.05, 0.1, 0.2, 0.4])
    c32 = np.asarray(local_bounds(layers, xs, radii).num_unstable)
    with jax.enable_x64(True):
        c64 = np.asarray(local_bounds(layers, xs, radii).num_unstable)
    np.testing.assert_array_equal(c32, c64)


# ---- input validation --------------------------------------------------------------


def _net():
    rng = np.random.default_rng(9)
    return random_mlp(rng, 3, [4, 5])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda L: local_bound([(np.ones((3, 4)), np.ones(4)), (np.ones((5, 2)), np.ones(2))], np.ones(3), 0.1), "fan_in 5"),
        (lambda L: local_bound(L, np.ones(4), 0.1), "dimension 4"),
        (lambda L: local_bound(L, np.ones(3), -0.1), ">= 0"),
        (lambda L: local_bound(L, np.ones(3), np.inf), "finite"),
        (lambda L: local_bound(L, np.array([0.0, np.nan, 1.0]), 0.1), "NaN"),
        (lambda L: local_bound(L[-1:], np.ones(5), 0.1), "at least one hidden"),
        (lambda L: local_bounds(L, np.ones(3), [0.1]), "2-D"),
        (lambda L: local_bounds(L, np.ones((2, 3)), [[0.1]]), "1-D"),
        (lambda L: local_bound([(np.ones((3, 4)), np.ones(3)), (np.ones((4, 2)), np.ones(2))], np.ones(3), 0.1), "b must have shape"),
        (lambda L: local_bound({"params": {}}, np.ones(3), 0.1), "layers_from_flax"),
        (lambda L: local_bounds(L, np.ones((2, 3)), [0.1], chunk_size=0), "chunk_size"),
    ],
)
def test_bad_input_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(_net())


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 64])
def test_chunked_equals_unchunked(chunk_size):
    rng = np.random.default_rng(10)
    layers = random_mlp(rng, 4, [5, 3])
    xs = rng.normal(size=(7, 4))  # 7 * 3 = 21 pairs: odd, not a multiple of the chunks
    radii = np.array([0.1, 0.4, 1.0])
    full = local_bounds(layers, xs, radii, chunk_size=21)
    chunked = local_bounds(layers, xs, radii, chunk_size=chunk_size)
    for name in ("num_unstable", "log2_bound", "unstable", "changed"):
        np.testing.assert_array_equal(np.asarray(getattr(full, name)), np.asarray(getattr(chunked, name)))
    # U: XLA may fuse r ||L|| + Usum + A into fused multiply-adds differently for
    # another batch shape, which moves the last float32 bit; nothing else may differ.
    np.testing.assert_allclose(np.asarray(full.deviation), np.asarray(chunked.deviation), rtol=2e-6, atol=1e-7)


def test_default_chunk_size_is_a_power_of_two_and_bounded():
    from lr_jax.bounds.core import default_chunk_size

    small = default_chunk_size(random_mlp(np.random.default_rng(0), 36, [64, 64]))
    large = default_chunk_size([(np.zeros((784, 1024)), np.zeros(1024)), (np.zeros((1024, 10)), np.zeros(10))])
    assert small & (small - 1) == 0 and large & (large - 1) == 0
    assert 1 <= large < small


def test_default_chunk_size_of_a_conv_network_uses_the_conv_budget():
    """A Network with multi-axis layers: 128 MiB over 4 [n_max, d] float32 arrays, rounded down to a power of two."""
    import flax.linen as nn
    from lr_jax.bounds.core import default_chunk_size

    class TwoConvs(nn.Module):
        @nn.compact
        def __call__(self, x):  # [14, 14, 1] -> two SAME 3x3 convs of 8 features: n_max = 14 * 14 * 8 = 1568
            h = nn.relu(nn.Conv(8, (3, 3))(x))
            return nn.Dense(2)(nn.relu(nn.Conv(8, (3, 3))(h)).reshape(-1))

    x0 = jnp.zeros((14, 14, 1))
    module = TwoConvs()
    net = lr_jax.network_from_linen(module, module.init(jax.random.PRNGKey(0), x0), x0)
    # 128 * 2**20 // (4 * 1568 * 196 * 4) = 27 pairs -> 16; with the dense chains' 8 MiB it would be 1.
    assert default_chunk_size(net, jnp.float32, jax.devices("cpu")[0]) == 16


def test_counts_only_mode_matches_full_output():
    layers, xs, radii = _small_case()
    full = local_bounds(layers, xs, radii)
    counts = local_bounds(layers, xs, radii, masks=False)
    assert counts.unstable is None and counts.changed is None and counts.deviation is None
    np.testing.assert_array_equal(np.asarray(counts.num_unstable), np.asarray(full.num_unstable))


_SHARDED_SCRIPT = """
import jax, numpy as np
assert len(jax.devices()) == 4, jax.devices()
from lr_jax import local_bounds
from tests.helpers import random_mlp
rng = np.random.default_rng(11)
layers = random_mlp(rng, 6, [9, 4, 7])
xs = rng.normal(size=(13, 6))  # not a multiple of 4 devices
radii = np.array([0.05, 0.3, 1.0])
one = local_bounds(layers, xs, radii, devices=jax.devices()[:1], chunk_size=5)
four = local_bounds(layers, xs, radii, chunk_size=5)
for a, b in zip(one, four):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
print("sharded ok", len(four.num_unstable.sharding.device_set))
"""


def test_sharded_over_forced_host_devices_equals_single_device():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharded ok" in proc.stdout
