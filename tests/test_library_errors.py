"""Errors raised inside JAX, Flax or an optional dependency reach the user as lr_jax's own one-line messages."""

from __future__ import annotations

import builtins
import inspect
import itertools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import lr_jax
from lr_jax.bounds import exact_count
from tests.conftest import ROOT
from tests.helpers import random_mlp


def _branchy(p, x):
    h = x @ p["w"]
    if h.sum() > 0:  # Python control flow on the input
        h = -h
    return jax.nn.relu(h) @ p["v"]


def test_python_if_on_the_input_is_a_value_error_naming_the_line():
    p = {"w": jnp.ones((4, 3)), "v": jnp.ones((3, 2))}
    lines, first = inspect.getsourcelines(_branchy)
    line = first + next(i for i, text in enumerate(lines) if text.strip().startswith("if "))
    with pytest.raises(ValueError, match="Python control flow") as err:
        lr_jax.trace_network(_branchy, p, jnp.zeros(4))
    assert f"{__file__}:{line} (_branchy)" in str(err.value)


class _BatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
        return nn.Dense(2)(nn.relu(x))


def test_train_mode_batch_norm_is_an_lr_jax_error():
    model = _BatchNormNet()
    variables = model.init(jax.random.key(0), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"network_from_linen: the module updates its variables .*eval mode"):
        lr_jax.network_from_linen(model, variables, jnp.zeros(4), train=True)
    with pytest.raises(ValueError, match=r"network_from_linen: mutable=\['batch_stats'\]"):
        lr_jax.network_from_linen(model, variables, jnp.zeros(4), train=True, mutable=["batch_stats"])
    lr_jax.network_from_linen(model, variables, jnp.zeros(4), train=False)


class _BatchFirst(nn.Module):
    """As the official Flax MNIST example: a batch [B, ...] in, flattened per example with x.shape[0]."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(4)(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(2)(nn.relu(nn.Dense(3)(x)))


def test_batch_first_model_gets_a_hint_and_is_accepted_with_batch_axis():
    model = _BatchFirst()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6)))
    with pytest.raises(ValueError, match=r"pass batch_axis=0"):
        lr_jax.network_from_linen(model, variables, jnp.zeros(6))
    net = lr_jax.network_from_linen(model, variables, jnp.zeros(6), batch_axis=0)
    xs = jax.random.normal(jax.random.key(1), (2, 6))
    np.testing.assert_allclose(net.apply(xs[1]), model.apply(variables, xs)[1], rtol=1e-5, atol=1e-6)
    assert net.num_layers == 2 and net.input_shape == (6,)


def test_count_regions_without_clarabel_names_the_extra():
    code = "import sys; sys.modules['clarabel'] = None\nimport lr_jax\nlr_jax.count_regions"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert "ImportError: lr_jax.count_regions needs the conic solver" in proc.stderr
    assert "pip install 'lr_jax[exact]'" in proc.stderr


@pytest.mark.parametrize("as_network", [False, True])
def test_validate_checks_traced_weights_under_jit(as_network):
    layers = [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in random_mlp(np.random.default_rng(0), 4, [6, 6])]

    def counts(layers, xs):
        net = layers
        if as_network:
            def apply(p, x):
                for w, b in p[:-1]:
                    x = jax.nn.relu(x @ w + b)
                return x @ p[-1][0] + p[-1][1]

            net = lr_jax.trace_network(apply, layers, xs[0])
        return lr_jax.local_bounds(net, xs, 0.4, validate=True).num_unstable

    f = checkify.checkify(jax.jit(counts))
    xs = jnp.zeros((2, 4))
    err, _ = f(layers, xs)
    assert err.get() is None
    diverged = [(w.at[0, 0].set(jnp.nan), b) if i == 1 else (w, b) for i, (w, b) in enumerate(layers)]
    err, _ = f(diverged, xs)
    assert "the network's params contain NaN or inf" in (err.get() or "")


def test_checkify_error_type_is_the_one_the_readme_shows():
    layers = random_mlp(np.random.default_rng(0), 4, [6])
    f = checkify.checkify(jax.jit(lambda xs, r: lr_jax.local_bounds(layers, xs, r, validate=True).num_unstable))
    err, _ = f(jnp.zeros((2, 4)), jnp.array([-0.1]))
    with pytest.raises(Exception, match="lr_jax: a radius is negative") as raised:
        err.throw()
    import re

    shown = re.search(r"# err\.throw\(\) raises checkify\.(\w+) \(a (\w+)\)", (ROOT / "README.md").read_text())
    assert shown is not None and type(raised.value) is getattr(checkify, shown.group(1))
    assert isinstance(raised.value, getattr(builtins, shown.group(2)))


def _fake_clock(monkeypatch):
    """``time.monotonic`` of the exact counter advancing one second per call."""
    ticks = itertools.count()
    monkeypatch.setattr(exact_count.time, "monotonic", lambda: float(next(ticks)))


def test_count_regions_budget_returns_a_marked_lower_bound(monkeypatch):
    rng = np.random.default_rng(4)
    layers = random_mlp(rng, 3, [8, 8])
    x0 = rng.normal(size=3)
    full = lr_jax.count_regions(layers, x0, 1.0)
    assert full.complete and full.count > 5
    _fake_clock(monkeypatch)
    cut = lr_jax.count_regions(layers, x0, 1.0, max_seconds=3.5)
    assert not cut.complete and 1 <= cut.count < full.count
    assert {p.tobytes() for p in cut.patterns} <= {p.tobytes() for p in full.patterns}
    with pytest.raises(ValueError, match="max_seconds"):
        lr_jax.count_regions(layers, x0, 1.0, max_seconds=0)


def test_count_regions_reports_progress(monkeypatch, caplog):
    rng = np.random.default_rng(4)
    layers = random_mlp(rng, 3, [8, 8])
    _fake_clock(monkeypatch)
    monkeypatch.setattr(exact_count, "PROGRESS_SECONDS", 2.0)
    seen = []
    with caplog.at_level("INFO", logger="lr_jax.bounds.exact_count"):
        result = lr_jax.count_regions(layers, rng.normal(size=3), 1.0, progress=lambda *a: seen.append(a))
    assert result.complete and len(seen) >= 2
    assert [s[0] for s in seen] == sorted(s[0] for s in seen) and seen[-1][0] <= result.count
    assert sum("count_regions:" in r.getMessage() for r in caplog.records) == len(seen)
