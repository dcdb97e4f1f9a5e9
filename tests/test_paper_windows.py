"""Algorithm 1's ``L`` built in receptive-field form equals the dense-map path (float64)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lr_jax
from lr_jax.bounds import algorithm1
from lr_jax.bounds.core import as_model, forward
from tests.conv_nets import make_network
from tests.graph_nets import make_net

RADII = np.array([0.02, 0.1, 0.3, 1.0])


def _both(model, xs):
    """Per-layer results of every (point, radius) pair, with and without the windowed layers and input norms."""
    windows = algorithm1.window_maps(model)

    def run(w):
        lin_in = algorithm1.input_maps(model, boxes=w is not None)

        def pair(x, r):
            return algorithm1.graph_pair(model, lin_in, forward(model, x), r, w)

        return jax.jit(jax.vmap(jax.vmap(pair, (None, 0)), (0, None)))(xs, jnp.asarray(RADII))

    return windows, run(windows), run(None)


def _assert_same(new, old):
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a.unstable, b.unstable)
        np.testing.assert_array_equal(a.changed, b.changed)
        np.testing.assert_allclose(a.deviation, b.deviation, rtol=1e-12, atol=1e-12)


class StrideSame(nn.Module):
    """Conv stride 2 SAME (boxes past the input's border), conv SAME, average pool, dense."""

    @nn.compact
    def __call__(self, x):  # [16, 16, 2]
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME")(x))  # [8, 8, 4]
        x = nn.relu(nn.Conv(5, (3, 3), padding="SAME")(x))  # [8, 8, 5]
        x = nn.avg_pool(x, (2, 2), strides=(2, 2)).reshape(-1)
        return nn.Dense(3)(x)


class InputSkip(nn.Module):
    """The second conv layer also reads the input (its L adds the input's map to the windowed part)."""

    @nn.compact
    def __call__(self, x):  # [12, 12, 1]
        h = nn.relu(nn.Conv(3, (3, 3), padding="VALID")(x))  # [10, 10, 3]
        h = nn.relu(nn.Conv(4, (3, 3), padding="VALID")(h) + nn.Conv(4, (5, 5), padding="VALID")(x))  # [8, 8, 4]
        return nn.Dense(2)(h.reshape(-1))


def _graph_net(kind):
    if kind in ("stride_same", "input_skip"):
        module = StrideSame() if kind == "stride_same" else InputSkip()
        example = jnp.zeros((16, 16, 2) if kind == "stride_same" else (12, 12, 1), jnp.float64)
        return module, module.init(jax.random.PRNGKey(0), example), example
    module, variables, example, _, _ = make_net(kind, 3, jnp.float64)
    return module, variables, example


# stride_same: stride 2 and SAME padding; res_cnn: a residual conv with SAME padding;
# conv_bn_pool: BatchNorm and pooling between the two conv layers; input_skip: a layer reading
# a first layer and the input.
# The fast tier keeps three small nets; the input skip (17 s) and the benchmark's nets are in the slow tier.
@pytest.mark.parametrize("kind", ["stride_same", "res_cnn", "conv_bn_pool",
                                  pytest.param("input_skip", marks=pytest.mark.slow)])
def test_windowed_l_equals_dense_maps_on_graph_nets(kind):
    with jax.enable_x64(True):
        module, variables, example = _graph_net(kind)
        model = as_model(lr_jax.network_from_linen(module, variables, example))
        xs = np.random.default_rng(0).uniform(-1, 1, size=(3,) + example.shape)
        windows, new, old = _both(model, xs)
        assert 2 in windows  # the second conv layer is built in windows
        _assert_same(new, old)
        # L is carried on by some neurons past layer 1, and some are unstable: the comparison bites.
        assert any((~np.asarray(o.changed)).any() for o in new[1:])
        assert any(np.asarray(o.unstable).any() for o in new[1:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LeNet-5", "residual CNN", "LeNet-5 (Equinox)"])
def test_windowed_l_equals_dense_maps_on_conv_nets(name):
    with jax.enable_x64(True):
        net, shape = make_network(name, jax.random.PRNGKey(1))
        net = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), net)
        model = as_model(net)
        xs = np.random.default_rng(1).uniform(0, 1, size=(2,) + shape)
        windows, new, old = _both(model, xs)
        assert 2 in windows
        _assert_same(new, old)


@pytest.mark.slow
def test_local_bounds_uses_windows_and_matches_counts():
    """The public entry point takes the windowed path and gives the dense path's counts and masks."""
    with jax.enable_x64(True):
        net, shape = make_network("LeNet-5", jax.random.PRNGKey(2))
        net = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), net)
        model = as_model(net)
        xs = np.random.default_rng(2).uniform(0, 1, size=(2,) + shape)
        out = lr_jax.local_bounds(net, xs, RADII)
        _, _, old = _both(model, xs)
        expect = sum(np.asarray(o.unstable).reshape(2, len(RADII), -1).sum(-1) for o in old)
        np.testing.assert_array_equal(out.num_unstable, expect)


@pytest.mark.slow
def test_windowed_path_has_the_dense_paths_gradient():
    """Under grad (wrt the params, through the stencils): the same derivative of the deviations U."""
    with jax.enable_x64(True):
        module, variables, example = _graph_net("stride_same")
        net = lr_jax.network_from_linen(module, variables, example)
        x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, size=example.shape))

        def total(net, boxes):
            model = as_model(net)
            lin_in = algorithm1.input_maps(model, boxes=boxes)
            windows = algorithm1.window_maps(model) if boxes else None
            out = algorithm1.graph_pair(model, lin_in, forward(model, x), 0.1, windows)
            return sum(jnp.sum(o.deviation) for o in out)

        assert 2 in algorithm1.window_maps(as_model(net))
        new = jax.grad(total)(net, True)
        old = jax.grad(total)(net, False)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        assert any(np.abs(np.asarray(a)).sum() > 0 for a in jax.tree.leaves(new))
