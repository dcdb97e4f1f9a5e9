"""Shared test utilities: random MLPs, uniform samples in a ball, activations."""

from __future__ import annotations

import numpy as np


def random_mlp(rng: np.random.Generator, d: int, widths, out: int = 2, bias_std: float = 0.3):
    """``layers`` with N(0, 1/fan_in) kernels and N(0, bias_std^2) biases."""
    dims = [d, *widths, out]
    return [
        (rng.normal(size=(a, b)) / np.sqrt(a), rng.normal(size=b) * bias_std)
        for a, b in zip(dims[:-1], dims[1:])
    ]


def random_architecture(rng: np.random.Generator, max_depth: int = 3, max_width: int = 8):
    d = int(rng.integers(2, 7))
    widths = [int(w) for w in rng.integers(1, max_width + 1, size=int(rng.integers(1, max_depth + 1)))]
    return d, widths


def sample_ball(rng: np.random.Generator, x, r: float, n: int):
    """``n`` points uniform in the closed ball ``B_r(x)``, ``[n, d]``."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[0]
    v = rng.normal(size=(n, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rad = r * rng.uniform(size=(n, 1)) ** (1.0 / d)
    return x + rad * v


def preactivations(layers, xs):
    """Hidden pre-activations of every layer, a list of ``[n, width]`` arrays (float64)."""
    h = np.asarray(xs, dtype=np.float64)
    out = []
    for W, b in layers[:-1]:
        a = h @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
        out.append(a)
        h = np.maximum(a, 0.0)
    return out
