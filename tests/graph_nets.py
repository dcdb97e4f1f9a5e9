"""Small Flax linen nets of every supported kind, each with hand-written segments.

``make_net(kind, seed)`` returns ``(module, variables, example_x, segments,
shapes)``: the module the user would write, random variables (N(0, 1/fan_in)
kernels, non-zero biases, random BatchNorm statistics and signed scales), and the same function written segment by segment
with plain ``jax.lax`` ops from the variables, for the dense reference
(:mod:`tests.reference_graph`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, k, stride, padding):
    return lax.conv_general_dilated(x[None], k, stride, padding, dimension_numbers=_DN)[0]


def _avg(x, window, stride):
    return lax.reduce_window(x, 0.0, lax.add, window + (1,), stride + (1,), "VALID") / (window[0] * window[1])


class CNNOverlap(nn.Module):
    """Conv stride 2 SAME, conv VALID, overlapping average pool, dense."""

    @nn.compact
    def __call__(self, x):  # [10, 10, 1]
        x = nn.relu(nn.Conv(3, (3, 3), strides=(2, 2), padding="SAME")(x))  # [5, 5, 3]
        x = nn.relu(nn.Conv(4, (3, 3), padding="VALID")(x))  # [3, 3, 4]
        x = nn.avg_pool(x, (2, 2), strides=(1, 1))  # [2, 2, 4], overlapping windows
        x = nn.relu(nn.Dense(6)(x.reshape(-1)))
        return nn.Dense(2)(x)


class CNNPool(nn.Module):
    """Conv SAME, non-overlapping average pool, conv VALID, flatten, dense (LeNet's shape)."""

    @nn.compact
    def __call__(self, x):  # [8, 8, 1]
        x = nn.relu(nn.Conv(3, (3, 3), padding="SAME")(x))  # [8, 8, 3]
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # [4, 4, 3]
        x = nn.relu(nn.Conv(4, (3, 3), padding="VALID")(x))  # [2, 2, 4]
        x = nn.avg_pool(x, (2, 2), strides=(2, 2)).reshape(-1)  # [4]
        x = nn.relu(nn.Dense(5)(x))
        return nn.Dense(3)(x)


class ResMLP(nn.Module):
    """Skips from the previous ReLU layer, from two layers back, and from the input."""

    @nn.compact
    def __call__(self, x):  # [5]
        h1 = nn.relu(nn.Dense(6, name="d0")(x))
        h2 = nn.relu(nn.Dense(6, name="d1")(h1) + h1)
        h3 = nn.relu(nn.Dense(6, name="d2")(h2) - 0.5 * h1)
        h4 = nn.relu(nn.Dense(4, name="d3")(h3) + nn.Dense(4, name="d4")(x))
        return nn.Dense(2, name="out")(h4)


class Bottleneck(nn.Module):
    """A linear bottleneck: Dense, Dense, ReLU (one composite map)."""

    @nn.compact
    def __call__(self, x):  # [6]
        x = nn.Dense(8, name="a")(x)
        x = nn.relu(nn.Dense(3, name="b")(x))
        x = nn.relu(nn.Dense(5, name="c")(x))
        return nn.Dense(2, name="out")(x)


class ConvBN(nn.Module):
    """Conv then eval-mode BatchNorm (a per-channel affine map), then dense."""

    @nn.compact
    def __call__(self, x):  # [6, 6, 2]
        x = nn.Conv(4, (3, 3), padding="VALID")(x)  # [4, 4, 4]
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        x = nn.relu(nn.Dense(5)(x.reshape(-1)))
        return nn.Dense(2)(x)


class ResCNN(nn.Module):
    """Two SAME convs, the second with an identity skip, then dense: windows of the tight bound apply."""

    @nn.compact
    def __call__(self, x):  # [9, 9, 1]
        h = nn.relu(nn.Conv(3, (3, 3), padding="SAME")(x))  # [9, 9, 3]
        h = nn.relu(nn.Conv(3, (3, 3), padding="SAME")(h) + h)
        return nn.Dense(2)(h.reshape(-1))


class ConvBNPool(nn.Module):
    """Conv + eval BatchNorm, non-overlapping pool, conv + eval BatchNorm, dense: windows through the pool."""

    @nn.compact
    def __call__(self, x):  # [12, 12, 1]
        h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3), padding="VALID")(x)))  # [10, 10, 4]
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))  # [5, 5, 4]
        h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(4, (2, 2), padding="VALID")(h)))  # [4, 4, 4]
        return nn.Dense(2)(h.reshape(-1))


_INPUTS = {
    "cnn_overlap": (CNNOverlap, (10, 10, 1)),
    "cnn_pool": (CNNPool, (8, 8, 1)),
    "resmlp": (ResMLP, (5,)),
    "bottleneck": (Bottleneck, (6,)),
    "conv_bn": (ConvBN, (6, 6, 2)),
    "res_cnn": (ResCNN, (9, 9, 1)),
    "conv_bn_pool": (ConvBNPool, (12, 12, 1)),
}
KINDS = tuple(k for k in _INPUTS if k not in ("res_cnn", "conv_bn_pool"))
# Nets whose conv layers the tight bound walks in receptive-field form (windows).
WINDOW_KINDS = ("res_cnn", "conv_bn_pool")


def _fill(path, leaf, rng):
    """A random value for one variable, by its name (NumPy: no compile per net)."""
    name = path[-1].key
    shape = leaf.shape
    if name == "kernel":
        fan_in = int(np.prod(shape[:-1]))
        return rng.normal(size=shape) / np.sqrt(fan_in)
    if name in ("bias", "mean"):
        return 0.3 * rng.normal(size=shape)  # non-zero: the centre's pattern is not trivial
    if name == "scale":
        return rng.normal(size=shape)  # negative batch-norm scales too
    if name == "var":
        return rng.uniform(0.5, 2.0, size=shape)
    raise KeyError(name)


def make_net(kind: str, seed: int, dtype=jnp.float32):
    module_cls, shape = _INPUTS[kind]
    module = module_cls()
    example = jnp.zeros(shape, dtype)
    structure = jax.eval_shape(module.init, jax.random.key(0), example)
    rng = np.random.default_rng(seed)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(_fill(path, leaf, rng), dtype), structure
    )
    segments, shapes = _segments(kind, variables)
    return module, variables, example, segments, shapes


def _segments(kind, v):
    p = v["params"]
    if kind == "cnn_overlap":
        c0, c1, d0 = p["Conv_0"], p["Conv_1"], p["Dense_0"]
        segs = [
            ((0,), lambda x: _conv(x, c0["kernel"], (2, 2), "SAME") + c0["bias"]),
            ((1,), lambda h: _conv(h, c1["kernel"], (1, 1), "VALID") + c1["bias"]),
            ((2,), lambda h: _avg(h, (2, 2), (1, 1)).reshape(-1) @ d0["kernel"] + d0["bias"]),
        ]
        return segs, [(10, 10, 1), (5, 5, 3), (3, 3, 4), (6,)]
    if kind == "cnn_pool":
        c0, c1, d0 = p["Conv_0"], p["Conv_1"], p["Dense_0"]
        segs = [
            ((0,), lambda x: _conv(x, c0["kernel"], (1, 1), "SAME") + c0["bias"]),
            ((1,), lambda h: _conv(_avg(h, (2, 2), (2, 2)), c1["kernel"], (1, 1), "VALID") + c1["bias"]),
            ((2,), lambda h: _avg(h, (2, 2), (2, 2)).reshape(-1) @ d0["kernel"] + d0["bias"]),
        ]
        return segs, [(8, 8, 1), (8, 8, 3), (2, 2, 4), (5,)]
    if kind == "resmlp":
        d = [p[f"d{i}"] for i in range(5)]

        def dense(h, i):
            return h @ d[i]["kernel"] + d[i]["bias"]

        segs = [
            ((0,), lambda x: dense(x, 0)),
            ((1,), lambda h1: dense(h1, 1) + h1),
            ((1, 2), lambda h1, h2: dense(h2, 2) - 0.5 * h1),
            ((0, 3), lambda x, h3: dense(h3, 3) + dense(x, 4)),
        ]
        return segs, [(5,), (6,), (6,), (6,), (4,)]
    if kind == "bottleneck":
        a, b, c = p["a"], p["b"], p["c"]
        segs = [
            ((0,), lambda x: (x @ a["kernel"] + a["bias"]) @ b["kernel"] + b["bias"]),
            ((1,), lambda h: h @ c["kernel"] + c["bias"]),
        ]
        return segs, [(6,), (3,), (5,)]
    if kind == "conv_bn":
        c0, bn, d0 = p["Conv_0"], p["BatchNorm_0"], p["Dense_0"]
        st = v["batch_stats"]["BatchNorm_0"]

        def z1(x):
            y = _conv(x, c0["kernel"], (1, 1), "VALID") + c0["bias"]
            return (y - st["mean"]) / jnp.sqrt(st["var"] + 1e-5) * bn["scale"] + bn["bias"]

        segs = [((0,), z1), ((1,), lambda h: h.reshape(-1) @ d0["kernel"] + d0["bias"])]
        return segs, [(6, 6, 2), (4, 4, 4), (5,)]
    if kind == "res_cnn":
        c0, c1, d0 = p["Conv_0"], p["Conv_1"], p["Dense_0"]
        segs = [
            ((0,), lambda x: _conv(x, c0["kernel"], (1, 1), "SAME") + c0["bias"]),
            ((1,), lambda h: _conv(h, c1["kernel"], (1, 1), "SAME") + c1["bias"] + h),
        ]
        return segs, [(9, 9, 1), (9, 9, 3), (9, 9, 3)]
    if kind == "conv_bn_pool":
        c0, c1 = p["Conv_0"], p["Conv_1"]
        b0, b1 = p["BatchNorm_0"], p["BatchNorm_1"]
        s0, s1 = v["batch_stats"]["BatchNorm_0"], v["batch_stats"]["BatchNorm_1"]

        def bn(y, b, st):
            return (y - st["mean"]) / jnp.sqrt(st["var"] + 1e-5) * b["scale"] + b["bias"]

        segs = [
            ((0,), lambda x: bn(_conv(x, c0["kernel"], (1, 1), "VALID") + c0["bias"], b0, s0)),
            ((1,), lambda h: bn(_conv(_avg(h, (2, 2), (2, 2)), c1["kernel"], (1, 1), "VALID") + c1["bias"], b1, s1)),
        ]
        return segs, [(12, 12, 1), (10, 10, 4), (4, 4, 4)]
    raise KeyError(kind)


def segments_apply(segments, x):
    """The hand-written net's pre-activations and the value of its last ReLU layer."""
    h = {0: x}
    for t, (sources, fn) in enumerate(segments, start=1):
        h[t] = jax.nn.relu(fn(*[h[s] for s in sources]))
    return h
