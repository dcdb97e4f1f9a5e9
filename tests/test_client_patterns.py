"""The bounds inside other people's JAX code: training steps, converters under jit, edge cases."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental import checkify

import lr_jax
from lr_jax.bounds.core import bucket
from lr_jax.bounds.local_bound import _bounds_jit
from tests.helpers import random_mlp

ROOT = Path(__file__).resolve().parents[1]
RADII = jnp.array([0.1, 0.5])


def _data(n=12, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(rng.integers(0, 2, n))


def _xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("every_bound", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_jitted_optax_step_calling_the_bounds_can_be_called_again(every_bound):
    layers = [(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32))
              for W, b in random_mlp(np.random.default_rng(1), 4, [8, 8])]
    xs, ys = _data()
    opt = optax.sgd(0.05)
    state = opt.init(layers)

    def forward(p, x):
        for W, b in p[:-1]:
            x = jax.nn.relu(x @ W + b)
        return x @ p[-1][0] + p[-1][1]

    @jax.jit
    def step(params, state, key):
        grads = jax.grad(lambda p: _xent(forward(p, xs), ys))(params)
        updates, state = opt.update(grads, state)
        params = optax.apply_updates(params, updates)
        paper = lr_jax.local_bounds(params, xs, RADII)
        tight = lr_jax.local_bounds(params, xs, RADII, method="tight", masks=False)
        if not every_bound:
            return params, state, paper, tight.log2_bound, jnp.ones(xs.shape[0]), jnp.ones((xs.shape[0], 2))
        radius = lr_jax.single_region_radius(params, xs, 1.0, num_grid=4, num_bisect=3)
        sampled = lr_jax.sample_regions(params, xs, RADII, key, num_samples=16, num_chords=2)
        return params, state, paper, tight.log2_bound, radius.radius, sampled

    key = jax.random.key(0)
    for _ in range(3):  # outputs fed back in, three times
        layers, state, paper, tight, radius, sampled = step(layers, state, key)
    eager = lr_jax.local_bounds(layers, xs, RADII)  # eager call on params out of the step
    np.testing.assert_array_equal(np.asarray(eager.num_unstable), np.asarray(paper.num_unstable))
    assert (np.asarray(tight) <= np.asarray(paper.num_unstable)).all()
    assert (np.asarray(sampled) <= 2.0 ** np.asarray(paper.num_unstable)).all()
    assert np.isfinite(np.asarray(radius)).all()
    # Results of the step go back into a bound as points.
    lr_jax.local_bounds(layers, paper.deviation[:, 0, 0, :4], 0.1)


def test_jitted_scan_continued_from_its_carry():
    layers = [(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32))
              for W, b in random_mlp(np.random.default_rng(2), 4, [6])]
    xs, _ = _data()

    @jax.jit
    def run(carry):
        def body(c, _):
            c = jax.tree.map(lambda a: 0.99 * a, c)
            return c, lr_jax.local_bounds(c, xs, RADII, masks=False).num_unstable.mean()
        return jax.lax.scan(body, carry, None, length=2)

    carry = layers
    for _ in range(3):
        carry, means = run(carry)
    assert means.shape == (2,)


class _NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.lin = nnx.Linear(6 * 6 * 3, 2, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x))
        return self.lin(nnx.avg_pool(h, (1, 1)).reshape(-1))


def test_nnx_jit_training_step_logs_mean_c_three_times():
    model = _NNXNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    xs = jnp.asarray(np.random.default_rng(3).normal(size=(5, 6, 6, 1)), jnp.float32)
    ys = jnp.array([0, 1, 0, 1, 1])

    @nnx.jit
    def step(model, optimizer):
        def loss(m):
            return _xent(jax.vmap(m)(xs), ys)

        grads = nnx.grad(loss)(model)
        optimizer.update(model, grads)
        net = lr_jax.network_from_nnx(model, xs[0])
        return lr_jax.local_bounds(net, xs, RADII).num_unstable.mean()

    means = [float(step(model, optimizer)) for _ in range(3)]
    assert all(np.isfinite(means))
    net = lr_jax.network_from_nnx(model, xs[0])  # eager, after the steps
    assert float(lr_jax.local_bounds(net, xs, RADII).num_unstable.mean()) == pytest.approx(means[-1], abs=1.0)


def test_equinox_filter_jit_step_three_times():
    model = eqx.nn.MLP(4, 2, 8, 2, activation=jax.nn.relu, key=jax.random.key(4))
    opt = optax.sgd(0.05)
    state = opt.init(eqx.filter(model, eqx.is_array))
    xs, ys = _data(seed=5)

    @eqx.filter_jit
    def step(model, state):
        grads = eqx.filter_grad(lambda m: _xent(jax.vmap(m)(xs), ys))(model)
        updates, state = opt.update(grads, state)
        model = eqx.apply_updates(model, updates)
        c = lr_jax.local_bounds(lr_jax.network_from_equinox(model, xs[0]), xs, RADII).num_unstable
        return model, state, c

    for _ in range(3):
        model, state, c = step(model, state)
    eager = lr_jax.local_bounds(lr_jax.network_from_equinox(model, xs[0]), xs, RADII).num_unstable
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(c))


def test_converters_work_on_traced_params():
    rng = np.random.default_rng(6)
    flat = [a for W, b in random_mlp(rng, 3, [5]) for a in (W, b)]
    xs = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)

    @jax.jit
    def from_numpy(weights):
        return lr_jax.local_bounds(lr_jax.layers_from_numpy(weights, torch_layout=False), xs, 0.3).num_unstable

    eager = lr_jax.local_bounds(lr_jax.layers_from_numpy(flat, torch_layout=False), xs, 0.3).num_unstable
    np.testing.assert_array_equal(np.asarray(from_numpy([jnp.asarray(a, jnp.float32) for a in flat])), np.asarray(eager))

    seq = nn.Sequential([nn.Dense(5, use_bias=False), nn.relu, nn.Dense(2)])
    variables = seq.init(jax.random.key(0), xs[0])
    jitted = jax.jit(lambda v: lr_jax.local_bounds(lr_jax.layers_from_sequential(seq, v), xs, 0.3).num_unstable)
    traced = jax.jit(lambda v: lr_jax.local_bounds(lr_jax.network_from_linen(seq, v, xs[0]), xs, 0.3).num_unstable)
    np.testing.assert_array_equal(np.asarray(jitted(variables)), np.asarray(traced(variables)))


def test_layers_from_numpy_requires_the_layout():
    square = [np.eye(3), np.zeros(3), np.ones((3, 2)), np.zeros(2)]
    with pytest.raises(ValueError, match="torch_layout"):
        lr_jax.layers_from_numpy(square)


def test_a_list_of_dicts_gets_a_clear_message():
    with pytest.raises(ValueError, match="dict"):
        lr_jax.local_bounds([{"kernel": np.ones((3, 2)), "bias": np.ones(2)}] * 2, np.ones((1, 3)), 0.1)


@pytest.mark.parametrize("n, r", [(0, 2), (3, 0), (0, 0)])
def test_empty_batches_give_empty_results(n, r):
    layers = random_mlp(np.random.default_rng(7), 3, [4, 5])
    out = lr_jax.local_bounds(layers, np.zeros((n, 3)), np.linspace(0.1, 1.0, r))
    assert out.num_unstable.shape == (n, r)
    assert out.unstable.shape == (n, r, 2, 5)
    if (n, r) != (0, 2):
        return  # every empty shape through layers; the other entry points once (each shape compiles)
    module = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    net = lr_jax.network_from_linen(module, module.init(jax.random.key(0), jnp.zeros(3)), jnp.zeros(3))
    out = lr_jax.local_bounds(net, np.zeros((n, 3)), np.linspace(0.1, 1.0, r), method="tight")
    assert out.log2_bound.shape == (n, r)
    assert [u.shape for u in out.unstable] == [(n, r, 4)]
    assert lr_jax.sample_regions(layers, np.zeros((n, 3)), np.linspace(0.1, 1.0, r), jax.random.key(0)).shape == (n, r)
    assert lr_jax.single_region_radius(layers, np.zeros((n, 3)), 1.0).radius.shape == (n,)


def test_gradients_through_the_deviation_are_finite():
    # Dead neurons give L = 0 rows: their norm must not put NaN into the gradient.
    layers = [(jnp.asarray(W, jnp.float32), jnp.asarray(b - 2.0, jnp.float32))
              for W, b in random_mlp(np.random.default_rng(8), 3, [6, 6])]
    xs = jnp.asarray(np.random.default_rng(9).normal(size=(5, 3)), jnp.float32)

    def loss(p):
        out = lr_jax.local_bounds(p, xs, RADII)
        return jnp.sum(out.deviation)

    grads = jax.grad(loss)(layers)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    module = nn.Sequential([nn.Conv(2, (3, 3)), nn.relu, lambda h: h.reshape(-1), nn.Dense(3), nn.relu, nn.Dense(2)])
    v = module.init(jax.random.key(1), jnp.zeros((5, 5, 1)))
    imgs = jnp.asarray(np.random.default_rng(10).normal(size=(3, 5, 5, 1)), jnp.float32)

    def net_loss(v):
        out = lr_jax.local_bounds(lr_jax.network_from_linen(module, v, imgs[0]), imgs, RADII, method="tight")
        return sum(jnp.sum(u) for u in out.deviation)

    grads = jax.grad(net_loss)(v)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads))


def test_a_new_n_within_a_bucket_does_not_recompile():
    layers = random_mlp(np.random.default_rng(11), 3, [4])
    rng = np.random.default_rng(12)
    assert bucket(5) == bucket(6) == bucket(8) == 8 and bucket(17) == bucket(18) == 18
    lr_jax.local_bounds(layers, rng.normal(size=(5, 3)), RADII)
    size = _bounds_jit._cache_size()
    for n in (6, 7, 8):
        assert lr_jax.local_bounds(layers, rng.normal(size=(n, 3)), RADII).num_unstable.shape == (n, 2)
    assert _bounds_jit._cache_size() == size


def test_values_are_checked_under_jit_with_checkify():
    layers = random_mlp(np.random.default_rng(13), 3, [4])

    def f(xs, radii):
        return lr_jax.local_bounds(layers, xs, radii, validate=True).num_unstable

    checked = checkify.checkify(jax.jit(f))
    err, _ = checked(jnp.ones((2, 3)), jnp.array([0.1]))
    err.throw()  # nothing wrong
    err, _ = checked(jnp.ones((2, 3)), jnp.array([-0.1]))
    with pytest.raises(checkify.JaxRuntimeError, match="negative"):
        err.throw()
    err, _ = checked(jnp.full((2, 3), jnp.nan), jnp.array([0.1]))
    with pytest.raises(checkify.JaxRuntimeError, match="NaN"):
        err.throw()


_TWO_DEVICES = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax, lr_jax
    assert len(jax.devices()) == 2
    rng = np.random.default_rng(0)
    params = [(jnp.asarray(rng.normal(size=(4, 8)), jnp.float32), jnp.zeros(8)),
              (jnp.asarray(rng.normal(size=(8, 2)), jnp.float32), jnp.zeros(2))]
    xs = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
    opt = optax.sgd(0.01)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(lambda p: jnp.sum(jax.nn.relu(xs @ p[0][0] + p[0][1]) @ p[1][0]))(params)
        updates, state = opt.update(g, state)
        params = optax.apply_updates(params, updates)
        return params, state, lr_jax.local_bounds(params, xs, jnp.array([0.1, 0.5]))

    for _ in range(3):
        params, state, out = step(params, state)
    one = lr_jax.local_bounds(params, xs, jnp.array([0.1, 0.5]), devices=jax.devices()[:1])
    assert (np.asarray(one.num_unstable) == np.asarray(out.num_unstable)).all()
    print("ok")
    """
)


def test_sharded_over_two_devices_and_fed_back():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


_WITHOUT_EXTRAS = textwrap.dedent(
    """
    import sys
    class _Block:
        # The experiment's and the exact counter's packages (optax stays: flax itself needs it).
        blocked = ("hydra", "omegaconf", "orbax", "tensorflow_datasets", "mlxtend", "matplotlib",
                   "clarabel", "tqdm", "tensorboardX", "equinox")
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    import numpy as np
    import lr_jax
    rng = np.random.default_rng(0)
    layers = [(rng.normal(size=(3, 4)), rng.normal(size=4)), (rng.normal(size=(4, 2)), rng.normal(size=2))]
    out = lr_jax.local_bounds(layers, rng.normal(size=(5, 3)), [0.1, 1.0], method="tight")
    assert out.num_unstable.shape == (5, 2)
    print("ok", sorted(m for m in sys.modules if m.split(".")[0] in _Block.blocked))
    """
)


def test_the_library_imports_and_bounds_without_the_experiment_extras():
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok []"


@pytest.mark.parametrize(
    "module",
    ["lr_jax.bounds.tight_bound", "lr_jax.bounds.local_bound", "lr_jax.bounds.algorithm1",
     "lr_jax.bounds.core", "lr_jax.bounds.single_region_radius", "lr_jax.bounds.sampled_regions",
     "lr_jax.bounds.exact_count", "lr_jax.networks.tracing", "lr_jax.networks.layers",
     "lr_jax.networks.network_converters", "lr_jax.networks.layer_converters",
     # the paths before the networks/bounds split, kept as aliases
     "lr_jax.tight_bound", "lr_jax.local_bound", "lr_jax.single_region_radius"],
)
def test_every_module_imports_first_and_alone(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_vmap_over_stacked_params_equals_a_loop():
    """Seeds trained together: the bound vmapped over a leading params axis (layers and Network)."""
    rng = np.random.default_rng(14)
    stacked = [(jnp.asarray(rng.normal(size=(3,) + s), jnp.float32), jnp.asarray(rng.normal(size=(3, s[1])), jnp.float32))
               for s in [(4, 6), (6, 6), (6, 2)]]
    xs = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)

    def apply_fn(p, x):
        for W, b in p[:-1]:
            x = jax.nn.relu(x @ W + b)
        return x @ p[-1][0] + p[-1][1]

    via_layers = jax.vmap(lambda p: lr_jax.local_bounds(p, xs, RADII).num_unstable)(stacked)
    via_net = jax.vmap(lambda p: lr_jax.local_bounds(lr_jax.trace_network(apply_fn, p, xs[0]), xs, RADII,
                                                     method="tight").num_unstable)(stacked)
    for k in range(3):
        one = [(W[k], b[k]) for W, b in stacked]
        np.testing.assert_array_equal(np.asarray(via_layers[k]), np.asarray(lr_jax.local_bounds(one, xs, RADII).num_unstable))
        np.testing.assert_array_equal(
            np.asarray(via_net[k]), np.asarray(lr_jax.local_bounds(one, xs, RADII, method="tight").num_unstable))
