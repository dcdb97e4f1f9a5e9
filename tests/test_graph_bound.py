"""Bounds on traced networks: against the dense reference, soundness by sampling, frameworks."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lr_jax
from tests.graph_nets import KINDS, make_net, segments_apply
from tests.helpers import random_mlp, sample_ball
from tests.reference_graph import dense_segments, graph_algorithm1, graph_patterns

RADII = np.array([0.0, 0.05, 0.3, 1.0])


@pytest.mark.parametrize("kind", KINDS)
def test_graph_recursion_matches_dense_reference(kind):
    with jax.enable_x64(True):
        module, variables, example, segments, shapes = make_net(kind, 1, jnp.float64)
        net = lr_jax.network_from_linen(module, variables, example)
        xs = np.random.default_rng(0).normal(size=(3,) + example.shape)
        # The hand-written segments compute the module's function (a check of the test itself).
        h = segments_apply(segments, jnp.asarray(xs[0]))
        assert len(h) - 1 == net.num_layers
        dense = dense_segments(segments, shapes)
        out = lr_jax.local_bounds(net, xs, RADII)
        assert [tuple(s) for s in net.layer_shapes] == [tuple(s) for s in shapes[1:]]
        for n in range(xs.shape[0]):
            for k, r in enumerate(RADII):
                C, S, P, U = graph_algorithm1(dense, xs[n], float(r))
                assert int(out.num_unstable[n, k]) == C
                for t in range(len(S)):
                    np.testing.assert_array_equal(np.asarray(out.unstable[t][n, k]).reshape(-1), S[t])
                    np.testing.assert_array_equal(np.asarray(out.changed[t][n, k]).reshape(-1), P[t])
                    np.testing.assert_allclose(
                        np.asarray(out.deviation[t][n, k]).reshape(-1), U[t], rtol=1e-9, atol=1e-12
                    )


def test_structured_abs_path_is_used_where_exact():
    """Conv after non-overlapping pooling, BatchNorm after conv: no |M| is materialised there."""
    cases = [
        ("cnn_pool", [(True,), (True,), (True,)]),
        ("conv_bn", [(True,), (True,)]),
        ("cnn_overlap", [(True,), (True,), (False,)]),  # overlapping pool, then dense: materialised
        ("bottleneck", [(False,), (True,)]),  # two Dense in a row (the input's map: never needs |M|)
        ("resmlp", [(True,), (False,), (True, True), (True, True)]),  # W h1 + h1: materialised
    ]
    for kind, expected in cases:
        module, variables, example, _, _ = make_net(kind, 0)
        net = lr_jax.network_from_linen(module, variables, example)
        assert [c.abs_exact for c in net._graph.cones] == expected, kind


@pytest.mark.parametrize("kind", ["cnn_pool", pytest.param("resmlp", marks=pytest.mark.slow)])
def test_soundness_by_sampling_on_graphs(kind):
    module, variables, example, segments, shapes = make_net(kind, 2)
    net = lr_jax.network_from_linen(module, variables, example)
    dense = dense_segments(segments, shapes)
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(3,) + example.shape)
    radii = np.array([0.05, 0.3])
    paper = lr_jax.local_bounds(net, xs, radii)
    tight = lr_jax.local_bounds(net, xs, radii, method="tight")
    assert (np.asarray(tight.log2_bound) <= np.asarray(paper.log2_bound) + 1e-6).all()
    for n in range(xs.shape[0]):
        centre = graph_patterns(dense, xs[n].reshape(1, -1))[0]
        for k, r in enumerate(radii):
            pts = sample_ball(rng, xs[n].reshape(-1), float(r), 300)
            pats = graph_patterns(dense, pts)
            stable = ~np.concatenate([np.asarray(s[n, k]).reshape(-1) for s in paper.unstable])
            # A neuron certified stable (S = 0) never changes sign inside the ball.
            assert (pats[:, stable] == centre[stable]).all()
            distinct = len({p.tobytes() for p in pats})
            assert np.log2(distinct) <= float(tight.log2_bound[n, k]) + 1e-6
            assert np.log2(distinct) <= int(paper.num_unstable[n, k])


@pytest.mark.slow
def test_sampled_and_exact_counts_on_a_cnn():
    module, variables, example, segments, shapes = make_net("cnn_pool", 4)
    net = lr_jax.network_from_linen(module, variables, example)
    x = np.random.default_rng(5).normal(size=example.shape)
    r = 0.03
    paper = lr_jax.local_bound(net, x, r)
    tight = lr_jax.local_bound(net, x, r, method="tight")
    exact = lr_jax.count_regions(net, x, r, max_regions=5000)
    sampled = lr_jax.sample_regions(net, x[None], r, jax.random.key(0), num_samples=256, num_chords=4)
    assert exact.complete
    assert int(sampled[0, 0]) <= exact.count <= 2 ** float(tight.log2_bound) + 1e-6
    assert float(tight.log2_bound) <= int(paper.num_unstable)
    # The exact counter's patterns are patterns of the dense reference at points of the ball.
    ref = graph_patterns(dense_segments(segments, shapes), x.reshape(1, -1))[0]
    assert any((p == ref).all() for p in exact.patterns)


def test_single_region_radius_on_a_network_is_the_largest_single_region_ball():
    module, variables, example, segments, shapes = make_net("resmlp", 6)
    net = lr_jax.network_from_linen(module, variables, example)
    xs = np.random.default_rng(7).normal(size=(4,) + example.shape)
    rad = np.asarray(lr_jax.single_region_radius(net, xs).radius)
    assert (rad > 0).all() and np.isfinite(rad).all()
    for n in range(4):
        assert int(lr_jax.local_bound(net, xs[n], rad[n] * (1 - 1e-4)).num_unstable) == 0
        assert int(lr_jax.local_bound(net, xs[n], rad[n] * (1 + 1e-4)).num_unstable) > 0


# ---- the same network through every door -------------------------------------------


class _LinenList(nn.Module):
    widths: tuple

    def setup(self):
        self.layers = [nn.Dense(w) for w in self.widths]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nn.relu(layer(x))
        return self.layers[-1](x)


class _NNXList(nnx.Module):
    def __init__(self, dims, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]) \
            if hasattr(nnx, "List") else [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def _assert_same_bounds(net, layers, xs, radii):
    a = lr_jax.local_bounds(net, xs, radii)
    b = lr_jax.local_bounds(layers, xs, radii)
    np.testing.assert_array_equal(np.asarray(a.num_unstable), np.asarray(b.num_unstable))
    widths = [np.shape(W)[1] for W, _ in layers[:-1]]
    for t, w in enumerate(widths):
        np.testing.assert_array_equal(np.asarray(a.unstable[t]), np.asarray(b.unstable[:, :, t, :w]))
        np.testing.assert_array_equal(np.asarray(a.changed[t]), np.asarray(b.changed[:, :, t, :w]))
        np.testing.assert_allclose(np.asarray(a.deviation[t]), np.asarray(b.deviation[:, :, t, :w]), rtol=1e-5, atol=1e-7)
    return a


def test_linen_module_with_a_list_of_dense_equals_its_layers():
    widths = (7, 7, 12, 2)  # a run of equal layers, then a wider one (no padding to the widest)
    module = _LinenList(widths)
    x0 = jnp.zeros(5)
    v = module.init(jax.random.key(0), x0)
    p = v["params"]
    layers = [(p[f"layers_{i}"]["kernel"], p[f"layers_{i}"]["bias"] + 0.1 * i) for i in range(len(widths))]
    for i in range(len(widths)):
        p = {**p, f"layers_{i}": {"kernel": layers[i][0], "bias": layers[i][1]}}
    net = lr_jax.network_from_linen(module, {"params": p}, x0)
    xs = np.random.default_rng(0).normal(size=(6, 5))
    _assert_same_bounds(net, layers, xs, np.array([0.1, 0.5]))


def test_custom_nnx_module_with_a_list_of_linear_equals_its_layers():
    model = _NNXList([4, 9, 9, 3], nnx.Rngs(0))
    layers = [(lin.kernel.get_value(), lin.bias.get_value()) for lin in model.layers]
    net = lr_jax.network_from_nnx(model, jnp.zeros(4))
    xs = np.random.default_rng(1).normal(size=(5, 4))
    _assert_same_bounds(net, layers, xs, np.array([0.2, 1.0]))


def test_equinox_mlp_equals_its_layers():
    model = eqx.nn.MLP(3, 2, width_size=8, depth=3, activation=jax.nn.relu, key=jax.random.key(2))
    layers = [(lin.weight.T, lin.bias) for lin in model.layers]  # Equinox weights are [out, in]
    net = lr_jax.network_from_equinox(model, jnp.zeros(3))
    xs = np.random.default_rng(2).normal(size=(5, 3))
    a = _assert_same_bounds(net, layers, xs, np.array([0.1, 0.4]))
    assert isinstance(a.unstable, tuple) and len(a.unstable) == 3


def test_plain_function_mlp_with_sharp_widths_uses_no_padding():
    rng = np.random.default_rng(3)
    layers = random_mlp(rng, 6, [20, 3, 20])

    def apply_fn(params, x):
        for W, b in params[:-1]:
            x = jnp.maximum(x @ W + b, 0.0)
        W, b = params[-1]
        return x @ W + b

    net = lr_jax.trace_network(apply_fn, [(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)) for W, b in layers], jnp.zeros(6))
    assert net.layer_shapes == ((20,), (3,), (20,))
    _assert_same_bounds(net, [(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)) for W, b in layers],
                        rng.normal(size=(4, 6)), np.array([0.3]))


# ---- refusals ---------------------------------------------------------------------


def _apply_with(activation_fn):
    def apply_fn(params, x):
        W1, b1, W2, b2 = params
        return activation_fn(x @ W1 + b1) @ W2 + b2

    return apply_fn


_PARAMS = (jnp.ones((4, 3)), jnp.zeros(3), jnp.ones((3, 2)), jnp.zeros(2))


@pytest.mark.parametrize(
    "fn, primitive",
    [
        (jnp.tanh, "tanh"),
        (jax.nn.sigmoid, "logistic"),
        (lambda z: jax.nn.gelu(z, approximate=False), "erfc"),
        (lambda z: jax.nn.softmax(jax.nn.relu(z)), "reduce_max"),  # softmax's max subtraction
        (lambda z: jnp.exp(jax.nn.relu(z)), "exp"),
        (lambda z: jax.nn.relu(z) * z, "mul"),
        (lambda z: jax.nn.relu(jax.lax.cond(z[0] > 0, lambda a: a, lambda a: -a, z)), "gt"),
        (lambda z: jax.lax.fori_loop(0, 2, lambda i, a: jax.nn.relu(a), z), "scan"),
        (lambda z: jnp.minimum(jax.nn.relu(z), 6.0), "min"),
    ],
)
def test_unsupported_operations_are_named(fn, primitive):
    with pytest.raises(ValueError, match=f"'{primitive}'") as err:
        lr_jax.trace_network(_apply_with(fn), _PARAMS, jnp.zeros(4))
    assert "test_graph_bound.py" in str(err.value)  # the line of the user's function


def test_max_pooling_is_refused():
    class MaxPoolNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(2, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            return nn.Dense(2)(x.reshape(-1))

    m = MaxPoolNet()
    v = m.init(jax.random.key(0), jnp.zeros((6, 6, 1)))
    with pytest.raises(ValueError, match="reduce_window_max.*max pooling"):
        lr_jax.network_from_linen(m, v, jnp.zeros((6, 6, 1)))


def test_train_mode_batch_norm_is_refused():
    class TrainBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=False)(nn.Dense(4)(x))
            return nn.Dense(2)(nn.relu(x))

    m = TrainBN()
    v = m.init(jax.random.key(0), jnp.zeros(3))
    with pytest.raises(ValueError, match="eval mode"):
        lr_jax.trace_network(lambda v, x: m.apply(v, x, mutable=["batch_stats"])[0], v, jnp.zeros(3))


def test_no_relu_is_refused():
    with pytest.raises(ValueError, match="no ReLU"):
        lr_jax.trace_network(lambda p, x: x @ p, jnp.ones((3, 2)), jnp.zeros(3))


# ---- edge cases found by trying the API as a user -----------------------------------

_A = jnp.asarray(np.random.default_rng(20).normal(size=(4, 4)), jnp.float32)
_B = jnp.ones((4, 3))
_X = np.array([1.62, 2.03, -0.43, -0.08], np.float32)


def test_relu_of_the_input_and_relu_of_a_relu():
    first = lr_jax.trace_network(lambda p, x: jax.nn.relu(jax.nn.relu(x) @ p) @ _B, _A, jnp.zeros(4))
    assert first.layer_shapes == ((4,), (4,))
    twice = lr_jax.trace_network(lambda p, x: jax.nn.relu(jax.nn.relu(x @ p)) @ _B, _A, jnp.zeros(4))
    once = lr_jax.trace_network(lambda p, x: jax.nn.relu(x @ p) @ _B, _A, jnp.zeros(4))
    for net in (first, twice):
        paper = lr_jax.local_bound(net, _X, 0.5)
        tight = lr_jax.local_bound(net, _X, 0.5, method="tight")
        assert float(tight.log2_bound) <= int(paper.num_unstable)
    # relu(relu(z)) has the regions of relu(z): the exact count flips coinciding neurons together.
    exact_twice, exact_once = lr_jax.count_regions(twice, _X, 0.5), lr_jax.count_regions(once, _X, 0.5)
    sampled = int(lr_jax.sample_regions(twice, _X[None], 0.5, jax.random.key(0))[0, 0])
    assert exact_twice.complete and exact_twice.count == exact_once.count >= sampled >= 2


def test_nan_weights_of_a_network_are_refused():
    net = lr_jax.trace_network(lambda p, x: jax.nn.relu(x @ p) @ p, jnp.full((4, 4), jnp.nan), jnp.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        lr_jax.local_bounds(net, np.zeros((2, 4)), 0.1)


def test_active_dropout_is_refused_and_eval_mode_works():
    class Drop(nn.Module):
        deterministic: bool

        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(5)(x))
            return nn.Dense(2)(nn.Dropout(0.5, deterministic=self.deterministic)(h))

    v = Drop(True).init(jax.random.key(0), jnp.zeros(3))
    with pytest.raises(ValueError, match="random value.*eval mode"):
        lr_jax.network_from_linen(Drop(False), v, jnp.zeros(3), rngs={"dropout": jax.random.key(1)})
    assert lr_jax.network_from_linen(Drop(True), v, jnp.zeros(3)).layer_shapes == ((5,),)


def test_errors_inside_library_helpers_name_the_callers_line():
    with pytest.raises(ValueError, match=r"'ge' at .*test_graph_bound\.py"):
        lr_jax.trace_network(lambda p, x: jax.nn.leaky_relu(x @ p) @ _B, _A, jnp.zeros(4))


def test_wrong_things_passed_as_a_network():
    with pytest.raises(ValueError, match="trace"):
        lr_jax.local_bounds(lambda x: x, np.zeros((2, 3)), 0.1)
    with pytest.raises(ValueError, match="flat list"):
        lr_jax.layers_from_numpy([(np.ones((3, 2)), np.ones(2))] * 2, torch_layout=False)
