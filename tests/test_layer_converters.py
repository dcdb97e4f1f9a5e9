"""Converters of Flax (linen, nnx), PyTorch-layout and Keras-layout stacks to ``layers``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax import layers_from_numpy, local_bounds
from lr_jax.networks.layer_converters import layers_from_nnx, layers_from_sequential
from lr_jax.experiment.models import MLP
from tests.helpers import random_mlp

D, WIDTHS, OUT = 5, (7, 6), 3
RADII = [0.05, 0.3, 1.0, 3.0]


@pytest.fixture
def hand_built():
    """A 5-7-6-3 net (non-square kernels, so a transposed kernel cannot pass) and points."""
    rng = np.random.default_rng(0)
    layers = [(W.astype(np.float32), b.astype(np.float32)) for W, b in random_mlp(rng, D, WIDTHS, OUT)]
    xs = rng.normal(size=(16, D)).astype(np.float32)
    return layers, xs


def _forward(layers, xs):
    """The Dense/ReLU chain of ``layers`` in float64: ``[n, d] -> [n, out]``."""
    h = np.asarray(xs, np.float64)
    for k, (W, b) in enumerate(layers):
        h = h @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def _assert_same_bounds(converted, layers, xs):
    got = local_bounds(converted, xs, RADII)
    want = local_bounds(layers, xs, RADII)
    assert np.asarray(want.num_unstable).max() > 0  # the comparison is not vacuous
    for field in ("num_unstable", "unstable", "changed", "deviation"):
        np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)))


# ---------------------------------------------------------------------------
# flax.linen


def _linen_params(layers, names, use_bias=True):
    return {
        "params": {
            n: ({"kernel": jnp.asarray(W), "bias": jnp.asarray(b)} if use_bias else {"kernel": jnp.asarray(W)})
            for n, (W, b) in zip(names, layers)
        }
    }


def test_linen_sequential_matches_hand_built_layers(hand_built):
    layers, xs = hand_built
    module = nn.Sequential([nn.Dense(7), nn.relu, nn.Dense(6), nn.relu, nn.Dense(3)])
    params = _linen_params(layers, ["layers_0", "layers_2", "layers_4"])
    converted = layers_from_sequential(module, params)
    _assert_same_bounds(converted, layers, xs)
    np.testing.assert_allclose(_forward(converted, xs), module.apply(params, xs), rtol=1e-5, atol=1e-5)
    # The inner params dict works too.
    _assert_same_bounds(layers_from_sequential(module, params["params"]), layers, xs)


def test_linen_dropout_nesting_named_layers_and_no_bias(hand_built):
    _, xs = hand_built
    module = nn.Sequential(
        [
            nn.Dense(7, use_bias=False, name="first"),
            nn.Dropout(0.5, deterministic=True),
            nn.relu,
            nn.Sequential([nn.Dense(6), jax.nn.relu]),
            nn.Dense(3),
        ]
    )
    params = module.init(jax.random.PRNGKey(0), xs)
    assert set(params["params"]) == {"layers_0", "layers_3", "layers_4"}  # explicit names are not kept
    converted = layers_from_sequential(module, params)
    assert [np.shape(W) for W, _ in converted] == [(5, 7), (7, 6), (6, 3)]
    np.testing.assert_array_equal(converted[0][1], np.zeros(7))
    np.testing.assert_allclose(_forward(converted, xs), module.apply(params, xs), rtol=1e-5, atol=1e-5)


class _Residual(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + nn.Dense(x.shape[-1])(x)


@pytest.mark.parametrize(
    "stack, where, what",
    [
        ([nn.Dense(4), nn.tanh, nn.Dense(2)], "1", "tanh"),
        ([nn.Dense(4), nn.gelu, nn.Dense(2)], "1", "gelu"),
        ([nn.Dense(4), nn.sigmoid, nn.Dense(2)], "1", "sigmoid"),
        ([nn.Dense(4), nn.relu, nn.Conv(4, (1,)), nn.relu, nn.Dense(2)], "2", "Conv"),
        ([nn.Dense(4), nn.relu, nn.LayerNorm(), nn.Dense(2)], "2", "LayerNorm"),
        ([nn.Dense(4), nn.BatchNorm(use_running_average=True), nn.relu, nn.Dense(2)], "1", "BatchNorm"),
        ([nn.Dense(4), nn.relu, _Residual(), nn.relu, nn.Dense(2)], "2", "_Residual"),
        ([nn.Dense(4), nn.relu, nn.Sequential([nn.Dense(4), nn.tanh]), nn.Dense(2)], "2.1", "tanh"),
        ([nn.Dense(4), nn.Dense(4), nn.relu, nn.Dense(2)], "1", "Dense"),
        ([nn.Dense(4), nn.relu, nn.Dense(2), nn.relu], "3", "relu"),
        ([nn.relu, nn.Dense(4), nn.relu, nn.Dense(2)], "0", "relu"),
    ],
)
def test_linen_unsupported_layer_is_named(stack, where, what):
    module = nn.Sequential(stack)
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match=rf"^layer {where} \({what}\): .*supported: Dense and relu"):
        layers_from_sequential(module, params)


def test_linen_rejects_other_containers_and_too_short_stacks():
    mlp = MLP(depth=1, width=4)
    with pytest.raises(ValueError, match=r"flax.linen.Sequential, got MLP .*layers_from_flax"):
        layers_from_sequential(mlp, mlp.init(jax.random.PRNGKey(0), jnp.ones((1, 3))))
    single = nn.Sequential([nn.Dense(2)])
    with pytest.raises(ValueError, match="1 Dense layer"):
        layers_from_sequential(single, single.init(jax.random.PRNGKey(0), jnp.ones((1, 3))))
    module = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\): params hold no kernel/bias under 'layers_2'"):
        layers_from_sequential(module, {"layers_0": {"kernel": np.ones((3, 4)), "bias": np.ones(4)}})


# ---------------------------------------------------------------------------
# flax.nnx


def _nnx_linear(W, b, seed, use_bias=True):
    lin = nnx.Linear(W.shape[0], W.shape[1], use_bias=use_bias, rngs=nnx.Rngs(seed))
    lin.kernel.set_value(jnp.asarray(W))
    if use_bias:
        lin.bias.set_value(jnp.asarray(b))
    return lin


def test_nnx_sequential_matches_hand_built_layers(hand_built):
    layers, xs = hand_built
    (W0, b0), (W1, b1), (W2, b2) = layers
    model = nnx.Sequential(
        _nnx_linear(W0, b0, 0),
        nnx.relu,
        nnx.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(0)),
        _nnx_linear(W1, b1, 1),
        nnx.relu,
        _nnx_linear(W2, b2, 2),
    )
    converted = layers_from_nnx(model)
    _assert_same_bounds(converted, layers, xs)
    np.testing.assert_allclose(_forward(converted, xs), model(xs), rtol=1e-5, atol=1e-5)


def test_nnx_nested_and_no_bias(hand_built):
    layers, xs = hand_built
    (W0, b0), (W1, b1), (W2, b2) = layers
    model = nnx.Sequential(
        nnx.Sequential(_nnx_linear(W0, b0, 0, use_bias=False), nnx.relu),
        _nnx_linear(W1, b1, 1),
        nnx.relu,
        _nnx_linear(W2, b2, 2),
    )
    converted = layers_from_nnx(model)
    np.testing.assert_array_equal(converted[0][1], np.zeros(7))
    np.testing.assert_allclose(_forward(converted, xs), model(xs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, where, what",
    [
        (lambda r: [nnx.Linear(4, 4, rngs=r), nnx.gelu, nnx.Linear(4, 2, rngs=r)], "1", "gelu"),
        (lambda r: [nnx.Linear(4, 4, rngs=r), nnx.tanh, nnx.Linear(4, 2, rngs=r)], "1", "tanh"),
        (lambda r: [nnx.Conv(4, 4, (1,), rngs=r), nnx.relu, nnx.Linear(4, 2, rngs=r)], "0", "Conv"),
        (
            lambda r: [nnx.Linear(4, 4, rngs=r), nnx.LayerNorm(4, rngs=r), nnx.relu, nnx.Linear(4, 2, rngs=r)],
            "1",
            "LayerNorm",
        ),
        (
            lambda r: [nnx.Linear(4, 4, rngs=r), nnx.BatchNorm(4, rngs=r), nnx.relu, nnx.Linear(4, 2, rngs=r)],
            "1",
            "BatchNorm",
        ),
        (
            lambda r: [nnx.Linear(4, 4, rngs=r), nnx.Linear(4, 4, rngs=r), nnx.relu, nnx.Linear(4, 2, rngs=r)],
            "1",
            "Linear",
        ),
        (lambda r: [nnx.Linear(4, 4, rngs=r), nnx.relu, nnx.Linear(4, 2, rngs=r), nnx.relu], "3", "relu"),
    ],
)
def test_nnx_unsupported_layer_is_named(make, where, what):
    model = nnx.Sequential(*make(nnx.Rngs(0)))
    with pytest.raises(ValueError, match=rf"^layer {where} \({what}\): .*supported: Linear and relu"):
        layers_from_nnx(model)


def test_nnx_rejects_other_modules():
    with pytest.raises(ValueError, match="flax.nnx.Sequential, got Linear"):
        layers_from_nnx(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------
# PyTorch and Keras stacks, as the docstring of lr_jax.networks.layer_converters shows them


def test_torch_sequential_layout(hand_built):
    """``nn.Sequential(Linear(5, 7), ReLU(), Linear(7, 6), ReLU(), Linear(6, 3))``.

    ``[p.detach().numpy() for p in m.parameters()]`` is weight ``[out, in]``,
    bias ``[out]``, layer by layer; torch computes ``x @ weight.T + bias``.
    """
    layers, xs = hand_built
    torch_params = [a for W, b in layers for a in (np.ascontiguousarray(W.T), b)]
    assert [p.shape for p in torch_params[:2]] == [(7, 5), (7,)]
    converted = layers_from_numpy(torch_params, torch_layout=True)
    _assert_same_bounds(converted, layers, xs)
    h = xs.astype(np.float64)
    for k in range(0, len(torch_params), 2):
        h = h @ torch_params[k].T.astype(np.float64) + torch_params[k + 1]
        h = np.maximum(h, 0.0) if k < len(torch_params) - 2 else h
    np.testing.assert_allclose(_forward(converted, xs), h, rtol=1e-12)
    with pytest.raises(ValueError, match="torch_layout=True"):
        layers_from_numpy(torch_params)  # forgetting torch_layout fails loudly
    with pytest.raises(ValueError, match=r"layer 0: b must have shape \[fan_out\] = \(5,\)"):
        layers_from_numpy(torch_params, torch_layout=False)  # the wrong layout too (non-square)


def test_keras_stack_layout(hand_built):
    """``Sequential([Dense(7, "relu"), Dense(6, "relu"), Dense(3)])``: ``get_weights()``
    is kernel ``[in, out]``, bias ``[out]``, layer by layer."""
    layers, xs = hand_built
    keras_weights = [a for W, b in layers for a in (W, b)]
    converted = layers_from_numpy(keras_weights, torch_layout=False)
    _assert_same_bounds(converted, layers, xs)
    np.testing.assert_allclose(_forward(converted, xs), _forward(layers, xs), rtol=1e-12)
