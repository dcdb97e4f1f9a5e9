"""The tight bound through conv layers in receptive-field form (lr_jax.bounds.receptive_fields)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lr_jax
from lr_jax.bounds import tight_bound
from lr_jax.bounds.core import as_model
from tests.graph_nets import WINDOW_KINDS, make_net, segments_apply
from tests.helpers import sample_ball
from tests.reference_graph import dense_segments, graph_crown

RADII = np.array([0.05, 0.3, 1.0])


def _net(kind, dtype):
    module, variables, example, segments, shapes = make_net(kind, 2, dtype)
    return lr_jax.network_from_linen(module, variables, example), example, segments, shapes


@pytest.mark.parametrize("kind", ["res_cnn", pytest.param("conv_bn_pool", marks=pytest.mark.slow)])
def test_windows_are_used_and_match_the_dense_reference(kind):
    with jax.enable_x64(True):
        net, example, segments, shapes = _net(kind, jnp.float64)
        prep = tight_bound.prepare(as_model(net))
        assert 2 in prep.plans  # the conv layer after the first is bounded in windows
        xs = np.random.default_rng(0).uniform(size=(3,) + example.shape)
        out = lr_jax.local_bounds(net, xs, RADII, method="tight", neuron_block=16)
        dense = dense_segments(segments, shapes)
        certified = 0
        for n in range(xs.shape[0]):
            for k, r in enumerate(RADII):
                ref = graph_crown(dense, xs[n], float(r))
                for t, s in enumerate(ref):
                    np.testing.assert_array_equal(np.asarray(out.unstable[t][n, k]).reshape(-1), s)
                paper = lr_jax.local_bound(net, xs[n], r)
                certified += int(paper.num_unstable) - int(out.num_unstable[n, k])
        assert certified > 0  # the bound propagation certifies neurons Algorithm 1 does not


@pytest.mark.slow
@pytest.mark.parametrize("kind", WINDOW_KINDS)
def test_windows_equal_dense_rows(kind):
    with jax.enable_x64(True):
        net, example, _, _ = _net(kind, jnp.float64)
        model = as_model(net)
        xs = jnp.asarray(np.random.default_rng(1).uniform(size=(2,) + example.shape))
        radii = jnp.asarray(RADII)
        windowed = tight_bound.tight_points(model, xs, radii, neuron_block=8)
        rows = tight_bound.tight_points(model, xs, radii, neuron_block=8,
                                        prep=tight_bound.prepare(model)._replace(plans={}, kmaps={}))
        for a, b in zip(windowed[2], rows[2]):
            np.testing.assert_array_equal(a.unstable, b.unstable)
        np.testing.assert_array_equal(windowed[1], rows[1])


@pytest.mark.parametrize("kind", [pytest.param("res_cnn", marks=pytest.mark.slow), "conv_bn_pool"])
def test_certified_stable_neurons_keep_their_sign_on_samples(kind):
    net, example, segments, _ = _net(kind, jnp.float32)
    rng = np.random.default_rng(3)
    xs = rng.uniform(size=(3,) + example.shape).astype(np.float32)
    out = lr_jax.local_bounds(net, xs, RADII, method="tight", neuron_block=16)

    def preactivations(x):  # the hand-written net's z_t, from its ReLU values h
        h = segments_apply(segments, x)
        return [fn(*[h[s] for s in src]) for src, fn in segments]

    pre = jax.jit(jax.vmap(preactivations))
    for n in range(xs.shape[0]):
        centre = [np.asarray(z) for z in pre(jnp.asarray(xs[n][None]))]
        for k, r in enumerate(RADII):
            ball = sample_ball(rng, xs[n].reshape(-1), float(r), 3000).reshape((-1,) + example.shape)
            zs = [np.asarray(z) for z in pre(jnp.asarray(ball, jnp.float32))]
            for t, z in enumerate(zs):
                stable = ~np.asarray(out.unstable[t][n, k])
                signs = np.sign(z[:, stable])
                assert np.all(signs == np.sign(centre[t][0][stable]))
                assert np.all(signs != 0)


def test_no_windows_where_they_do_not_apply():
    # A dense layer (flatten, then Dense) reads everything: no plan; the small conv nets' boxes
    # cover more than half of their layer: no plan either.
    for kind in ("cnn_pool", "conv_bn"):
        net, _, _, _ = _net(kind, jnp.float32)
        assert tight_bound.prepare(as_model(net)).plans == {}, kind


def test_a_spatially_varying_scale_is_not_local():
    import flax.linen as nn

    class Scaled(nn.Module):
        @nn.compact
        def __call__(self, x):  # [9, 9, 1]
            h = nn.relu(nn.Conv(3, (3, 3))(x))
            mask = jnp.linspace(0.5, 1.5, 9)[None, :, None]  # varies along a spatial axis
            h = nn.relu(nn.Conv(3, (3, 3))(h) * mask)
            return nn.Dense(2)(h.reshape(-1))

    x0 = jnp.zeros((9, 9, 1))
    module = Scaled()
    net = lr_jax.network_from_linen(module, module.init(jax.random.key(0), x0), x0)
    model = as_model(net)
    assert [node.local for node in model.nodes] == [True, False]
    assert tight_bound.prepare(model).plans == {}


@pytest.mark.slow
def test_one_ball_of_the_flax_mnist_cnn_stays_in_bounded_memory():
    """Peak RSS of one tight ball of Flax's MNIST CNN (37,888 ReLUs) under 2 GiB, in a fresh process.

    Before the block and window forms its second layer's rows were dense
    ``[25088 x 28 x 28 x 32]`` arrays (10.1 GiB peak); now memory grows with
    the block, not with the square of a layer's width.
    """
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, lr_jax
        from tests.conv_nets import FlaxMNISTCNN
        m, x0 = FlaxMNISTCNN(), jnp.zeros((28, 28, 1))
        net = lr_jax.network_from_linen(m, m.init(jax.random.key(0), x0), x0)
        xs = np.random.default_rng(0).uniform(size=(1, 28, 28, 1)).astype(np.float32)
        c = lr_jax.local_bounds(net, xs, 0.4, method="tight", masks=False).num_unstable
        # VmHWM, the peak of this process: ru_maxrss would carry over the parent's (the test runner's)
        peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        print(int(c[0, 0]), peak * 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    c, peak = map(int, out.stdout.split())
    assert c > 0
    assert peak < 2 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB (the target: 2 GiB)"
