"""The cross-polytope ("frame") estimate of local complexity: a lower estimate of ``C``.

Humayun, Balestriero & Baraniuk (2023, 2024) measure the local complexity
(LC) around a point ``x`` by the neurons whose sign changes among the ``2P``
vertices ``x +- r u_i`` of a random orthogonal cross-polytope of radius
``r`` (orthonormal ``u_1 .. u_P`` in the flattened input). This module
computes that estimate for any network the bounds accept.

**Why it is a lower estimate.** Every vertex lies on the sphere of radius
``r``, so in the closed ball ``B_r(x)``. A neuron whose pre-activation is
``> 0`` at one vertex and ``< 0`` at another changes sign inside the ball, so
no certified method can call it stable: ``crossed`` is a subset of the
``unstable`` (``S = 1``) mask of Algorithm 1 and of ``method="tight"``, and
``num_crossed <= C``. It can only undercount the neurons that cut the ball:
a hyperplane can meet the ball and leave every vertex on one side.

A neuron counts as crossed when ``max_v z(v) > 0`` and ``min_v z(v) < 0``
(strictly: a vertex exactly on the hyperplane does not show a change).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lr_jax.bounds.core import (
    as_model,
    bucket,
    count_unstable,
    format_masks,
    forward,
    map_points_in_chunks,
    pad_rows,
    prepare_inputs,
)


class FrameComplexity(NamedTuple):
    """The frame estimate for ``[N, R]`` balls.

    Attributes:
      num_crossed: int32 ``[N, R]``: the neurons whose sign changes among the vertices.
      crossed: bool, in the layout of ``LocalBound.unstable``: ``[N, R, H, W]``
        for ``layers`` (padded to the widest layer), a tuple of
        ``[N, R, *layer_shape]`` for a :class:`lr_jax.Network`.
    """

    num_crossed: jax.Array
    crossed: Any


def _frame(key: jax.Array, d: int, p: int, dtype) -> jax.Array:
    """``p`` orthonormal directions in ``R^d`` (rows ``[p, d]``): Gram-Schmidt of a Gaussian matrix.

    The rows of a ``[p, d]`` standard Gaussian matrix are orthonormalised one
    at a time, each projected off the earlier ones twice ("twice is enough",
    Giraud et al. 2005), which spans the same flag of subspaces as the Q of a
    QR decomposition (up to signs, which leave the vertices ``x +- r u_i``
    unchanged). Plain JAX ops: ``jnp.linalg.qr`` calls LAPACK through
    SciPy's OpenBLAS on CPU, which deadlocked when batched under ``vmap`` and
    ``jit`` beside other XLA work.
    """
    g = jax.random.normal(key, (p, d), dtype)

    def body(i, q):
        v = g[i]
        for _ in range(2):
            v = v - q.T @ (q @ v)  # rows not yet set are zero: they project nothing
        return q.at[i].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, p, body, jnp.zeros((p, d), dtype))


def _point(model, x: jax.Array, radii: jax.Array, key: jax.Array, p: int) -> list:
    """Per layer ``[R, *shape_t]`` crossed masks for one centre and its radii."""
    u = _frame(key, model.d, p, x.dtype)
    directions = jnp.concatenate([u, -u])  # [2P, d]
    vertices = x.reshape(-1)[None, None] + radii[:, None, None] * directions[None]  # [R, 2P, d]
    pre = jax.vmap(jax.vmap(lambda v: forward(model, v.reshape(model.input_shape))))(vertices)
    return [(jnp.max(z, axis=1) > 0) & (jnp.min(z, axis=1) < 0) for z in pre]


# Points per chunk: each carries R x 2P vertices through the network.
_POINTS_PER_CHUNK = 16


@functools.partial(jax.jit, static_argnames=("p",))
def _frame_jit(net, xs, radii, key, *, p):
    model = as_model(net)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(xs.shape[0]))
    crossed = map_points_in_chunks(
        lambda chunk: jax.vmap(lambda x, k: _point(model, x, radii, k, p))(*chunk), (xs, keys), _POINTS_PER_CHUNK
    )
    return FrameComplexity(count_unstable(crossed, lead=2), format_masks(model, crossed, lead=2))


def frame_complexity(network, xs: jax.Array, radii, *, key: jax.Array, num_vertices: int = 50) -> FrameComplexity:
    """The cross-polytope estimate of local complexity around every point, at every radius, jitted.

    For point ``n`` the directions are a standard Gaussian ``[P, d]`` matrix
    drawn from ``fold_in(key, n)`` (``P = num_vertices / 2``), orthonormalised
    row by row (Gram-Schmidt, the span of Q in its QR decomposition), shared by its radii; the
    vertices are ``x +- r u_i``. A lower estimate of Algorithm 1's ``C`` and
    of the tight bound's (module docstring): ``crossed`` is contained in both
    methods' ``unstable``.

    Args:
      network: ``layers`` or a :class:`lr_jax.Network` (as :func:`lr_jax.local_bounds`).
      xs: ``[N, d]`` centres (``[N, *input_shape]`` for a Network).
      radii: ``[R]`` radii (a scalar is taken as ``R = 1``).
      key: a ``jax.random`` key.
      num_vertices: ``2P``, even, with ``2 <= 2P <= 2d`` (the reference code
        of Humayun et al. uses 50).

    Returns:
      :class:`FrameComplexity` with leading axes ``[N, R]``; ``N = 0`` or
      ``R = 0`` give empty results.

    Raises:
      ValueError: as :func:`lr_jax.local_bounds` for bad shapes or values, or
        when ``num_vertices`` is odd, below 2 or above ``2d``.
    """
    net, xs, radii = prepare_inputs(network, xs, radii, batched=True)
    d = math.prod(xs.shape[1:])
    v = int(num_vertices)
    if v < 2 or v % 2 or v // 2 > d:
        raise ValueError(
            f"num_vertices must be even, at least 2 and at most 2d = {2 * d} (the vertices x +- r u_i of "
            f"orthonormal u_i in R^{d}), got {num_vertices}."
        )
    n, r = xs.shape[0], radii.shape[0]
    out = _frame_jit(net, pad_rows(xs, bucket(max(n, 1))), radii if r else jnp.zeros((1,), radii.dtype), key,
                     p=v // 2)
    return jax.tree.map(lambda a: a[:n, :r], out)
