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
    monkeypatch.setattr(tracing, "_conv_channels_last",
                        lambda params, lhs, rhs, transposing=False: lax.conv_general_dilated_p.bind(lhs, rhs, **params))
    own = lr_jax.local_bounds(net, xs[:1], radii)
    np.testing.assert_array_equal(np.asarray(rewritten.num_unstable[:1]), np.asarray(own.num_unstable))
    for a, b in zip(rewritten.unstable, own.unstable):
        np.testing.assert_array_equal(np.asarray(a[:1]), np.asarray(b))
    assert int(own.num_unstable.sum()) > 0


# Channels-last convs (NHWC / HWIO and their 1-D and 3-D analogues): strides, dilation, asymmetric padding.
_PLAIN_CONVS = [
    ((7, 6, 3), (3, 2, 3, 5), (1, 1), "VALID", (1, 1)),
    ((12, 12, 6), (5, 5, 6, 16), (1, 1), "VALID", (1, 1)),  # LeNet-5's second conv
    ((9, 8, 2), (3, 3, 2, 4), (2, 3), ((1, 2), (2, 0)), (1, 2)),
    ((7, 6, 3), (3, 3, 3, 2), (1, 2), "SAME", (2, 1)),
    ((11, 3), (4, 3, 5), (2,), ((2, 1),), (2,)),  # 1-D: the band is the whole map
    ((5, 6, 4, 2), (2, 3, 2, 2, 3), (1, 2, 1), "SAME", (1, 1, 2)),  # 3-D
]


@pytest.mark.parametrize("in_shape, k_shape, strides, padding, dilation", _PLAIN_CONVS)
@pytest.mark.parametrize("form", ["taps", "rows"])
def test_conv_forms_and_their_transposes_equal_the_convolution(in_shape, k_shape, strides, padding, dilation, form):
    """Each form is the same linear map as lax's conv, and so is its transpose (what the tight bound runs)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        nd = len(in_shape) - 1
        spatial = "DHW"[3 - nd:]
        dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        lhs = jnp.asarray(rng.normal(size=(3,) + in_shape))
        rhs = jnp.asarray(rng.normal(size=k_shape))

        def conv(a):
            return lax.conv_general_dilated(a, rhs, strides, padding, rhs_dilation=dilation, dimension_numbers=dn,
                                            precision=lax.Precision.HIGHEST)

        params = jax.make_jaxpr(conv)(lhs).jaxpr.eqns[0].params
        run = {"taps": tracing._conv_by_taps, "rows": tracing._conv_by_rows}[form]
        direct = conv(lhs)
        got = run(lhs, rhs, params)
        assert got.shape == direct.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(direct), rtol=1e-12, atol=1e-12)
        rows = jnp.asarray(rng.normal(size=direct.shape))
        primal = jax.ShapeDtypeStruct(lhs.shape, lhs.dtype)
        want = jax.linear_transpose(conv, primal)(rows)[0]
        moved = jax.linear_transpose(lambda a: run(a, rhs, params), primal)(rows)[0]
        np.testing.assert_allclose(np.asarray(moved), np.asarray(want), rtol=1e-12, atol=1e-12)


def _assert_same_map_traced_for_transposing(conv, params, lhs, rhs, rng):
    """``_conv_channels_last(..., transposing=True)`` gives lax's values, and its transpose lax's transpose (float64)."""
    direct = conv(lhs)
    got = _conv_channels_last(params, lhs, rhs, transposing=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(direct), rtol=1e-12, atol=1e-12)
    rows = jnp.asarray(rng.normal(size=direct.shape))
    primal = jax.ShapeDtypeStruct(lhs.shape, lhs.dtype)
    want = jax.linear_transpose(conv, primal)(rows)[0]
    moved = jax.linear_transpose(lambda a: _conv_channels_last(params, a, rhs, transposing=True), primal)(rows)[0]
    np.testing.assert_allclose(np.asarray(moved), np.asarray(want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dn", [("NCHW", "OIHW", "NCHW"), ("NHWC", "OIHW", "NCHW")])
@pytest.mark.parametrize("features, width, form", [((1, 32), 28, "taps"), ((8, 8), 7, "rows"), ((32, 32), 7, "xla")])
def test_channels_first_conv_traced_for_transposing_is_the_same_map(dn, features, width, form):
    """The layout rewrite composes with the form picked for the backward pass: values and transposes equal lax's."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        lhs_shape = {"N": 2, "C": features[0], "H": 9, "W": width}
        rhs_shape = {"O": features[1], "I": features[0], "H": 3, "W": 3}
        lhs = jnp.asarray(rng.normal(size=[lhs_shape[c] for c in dn[0]]))
        rhs = jnp.asarray(rng.normal(size=[rhs_shape[c] for c in dn[1]]))

        def conv(a):
            return lax.conv_general_dilated(a, rhs, (1, 2), "SAME", dimension_numbers=dn,
                                            precision=lax.Precision.HIGHEST)

        params = jax.make_jaxpr(conv)(lhs).jaxpr.eqns[0].params
        assert tracing._conv_form(params, (2, 9, width, features[0]), (3, 3) + features, transposing=True) == form
        _assert_same_map_traced_for_transposing(conv, params, lhs, rhs, rng)


@pytest.mark.parametrize("kind", ["cnn_overlap", "conv_bn_pool"])
@pytest.mark.parametrize("form", ["xla", "taps", "rows"])
def test_backward_is_the_transpose_of_the_map(monkeypatch, kind, form):
    """``GraphNode.backward`` (convs in the form picked for transposing) is ``jax.linear_transpose`` of ``linear``."""
    from tests.graph_nets import make_net

    with jax.enable_x64(True):
        module, variables, example, _, _ = make_net(kind, 2, jnp.float64)
        nodes, dense = tracing.graph_nodes(lr_jax.network_from_linen(module, variables, example))
        assert dense is None
        pick = tracing._conv_form
        monkeypatch.setattr(tracing, "_conv_form", lambda p, ls, rs, transposing=False:
                            form if transposing else pick(p, ls, rs))  # every conv here is plain: any form applies
        rng = np.random.default_rng(0)
        convs = 0
        for node in nodes:
            primals = [jax.ShapeDtypeStruct(node._g.shapes[node._vars[s]], jnp.float64) for s in node.sources]
            rows = jnp.asarray(rng.normal(size=(3,) + tuple(node.shape)))
            got = node.backward(rows)
            want = jax.vmap(jax.linear_transpose(lambda *t, node=node: node.linear(dict(zip(node.sources, t))),
                                                 *primals))(rows)
            for s, w in zip(node.sources, want):
                np.testing.assert_allclose(np.asarray(got[s]), np.asarray(w), rtol=1e-12, atol=1e-12)
            convs += any(node._g.eqns[k].prim.name == "conv_general_dilated" for k in node._cone.eqns)
        assert convs == 2


@pytest.mark.parametrize("groups, lhs_dilation", [(2, (1, 1)), (1, (2, 1))])
def test_xla_form_traced_for_transposing_keeps_grouped_and_dilated_convs(groups, lhs_dilation):
    """Non-plain convs take XLA's form with the kernel stored for the transpose: values and transposes equal lax's."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        lhs = jnp.asarray(rng.normal(size=(2, 7, 6, 4 * groups)))
        rhs = jnp.asarray(rng.normal(size=(3, 2, 4, 6 * groups)))
        dn = ("NHWC", "HWIO", "NHWC")

        def conv(a):
            return lax.conv_general_dilated(a, rhs, (1, 2), ((1, 1), (0, 1)), lhs_dilation=lhs_dilation,
                                            dimension_numbers=dn, feature_group_count=groups,
                                            precision=lax.Precision.HIGHEST)

        params = jax.make_jaxpr(conv)(lhs).jaxpr.eqns[0].params
        assert tracing._conv_form(params, lhs.shape, rhs.shape, transposing=True) == "xla"
        _assert_same_map_traced_for_transposing(conv, params, lhs, rhs, rng)
