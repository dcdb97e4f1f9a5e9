"""Channels-first convolutions are evaluated channels-last (lr_jax.networks.tracing._conv_channels_last)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lr_jax
from lr_jax.networks import tracing
from lr_jax.networks.tracing import _conv_channels_last
from tests.conv_nets import equinox_lenet5


@pytest.mark.parametrize(
    "dn, strides, padding, dilation, groups",
    [
        (("NCHW", "OIHW", "NCHW"), (1, 1), "VALID", (1, 1), 1),
        (("NCHW", "OIHW", "NCHW"), (2, 1), "SAME", (1, 2), 2),
        (("NHWC", "HWIO", "NHWC"), (1, 2), ((1, 0), (2, 1)), (1, 1), 1),
        (("NHWC", "OIHW", "NCHW"), (1, 1), "SAME", (2, 1), 1),
        (("CHWN", "IOHW", "HWNC"), (2, 2), "VALID", (1, 1), 2),
        (("NCHW", "OIHW", "NCHW"), (2, 2), "SAME", (2, 1), 1),
    ],
)
@pytest.mark.parametrize("features", [1, 8])  # by taps (at most 4 input features) and by XLA's convolution
def test_conv_channels_last_is_the_same_convolution(dn, strides, padding, dilation, groups, features):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        lhs_shape = {"N": 3, "C": features * groups, "H": 7, "W": 6}
        rhs_shape = {"O": 6, "I": features, "H": 3, "W": 2}
        lhs = jnp.asarray(rng.normal(size=[lhs_shape[c] for c in dn[0]]))
        rhs = jnp.asarray(rng.normal(size=[rhs_shape[c] for c in dn[1]]))
        direct = lax.conv_general_dilated(lhs, rhs, strides, padding, rhs_dilation=dilation,
                                          dimension_numbers=dn, feature_group_count=groups,
                                          precision=lax.Precision.HIGHEST)
        jaxpr = jax.make_jaxpr(lambda a, b: lax.conv_general_dilated(
            a, b, strides, padding, rhs_dilation=dilation, dimension_numbers=dn, feature_group_count=groups,
            precision=lax.Precision.HIGHEST))(lhs, rhs)
        params = jaxpr.jaxpr.eqns[0].params
        got = _conv_channels_last(params, lhs, rhs)
        assert got.shape == direct.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(direct), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_equinox_lenet_masks_do_not_depend_on_the_rewrite(monkeypatch):
    net = lr_jax.network_from_equinox(equinox_lenet5(jax.random.key(0)), jnp.zeros((1, 28, 28)))
    xs = np.random.default_rng(1).uniform(size=(2, 1, 28, 28)).astype(np.float32)
    radii = jnp.array([0.05, 0.2])
    rewritten = lr_jax.local_bounds(net, xs, radii)
    # The equation's own layout, bound directly; a new number of points compiles anew.
    monkeypatch.setattr(tracing, "_conv_channels_last", lambda params, lhs, rhs: lax.conv_general_dilated_p.bind(lhs, rhs, **params))
    own = lr_jax.local_bounds(net, xs[:1], radii)
    np.testing.assert_array_equal(np.asarray(rewritten.num_unstable[:1]), np.asarray(own.num_unstable))
    for a, b in zip(rewritten.unstable, own.unstable):
        np.testing.assert_array_equal(np.asarray(a[:1]), np.asarray(b))
    assert int(own.num_unstable.sum()) > 0
