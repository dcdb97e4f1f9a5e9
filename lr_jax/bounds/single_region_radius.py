"""A certified lower bound on the distance from a point to its nearest region boundary.

If Algorithm 1 returns ``C = 0`` for ``B_r(x)``, every hidden pre-activation keeps
its sign on the whole closed ball (condition S of section 4), so the ball lies in
one linear region and the distance from ``x`` to the nearest region boundary is
at least ``r``. The largest such ``r`` is therefore a certified lower bound on
that distance; the paper relates its trend to the trend of the bounds
(section 5.2).

We find it by evaluating the kernel on a grid of radii (vmapped) and refining by
bisection between the last radius with ``C = 0`` and the first with ``C > 0``.
Every returned value is a radius at which ``C = 0`` was actually verified (or
0), so the result is certified whether or not ``C`` is monotone in ``r``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lr_jax.bounds import algorithm1
from lr_jax.bounds.core import (
    as_model,
    bucket,
    concrete_int,
    default_chunk_size,
    forward,
    map_points_in_chunks,
    pad_rows,
    prepare_inputs,
)


class SingleRegionRadius(NamedTuple):
    """Result of :func:`single_region_radius`, one entry per point.

    Attributes:
      radius: ``[N]`` largest radius verified to give ``C = 0`` (a certified
        lower bound on the distance to the nearest region boundary).
      capped: ``[N]`` bool, True when ``C = 0`` held up to ``r_max``: the true
        distance may be larger than ``radius``.
    """

    radius: jax.Array
    capped: jax.Array


def _single_point(model, lin_in, x, grid, num_bisect):
    preacts = forward(model, x.reshape(model.input_shape))

    def is_single(r):
        return algorithm1.single_pair_count(model, lin_in, preacts, r) == 0

    single = jax.vmap(is_single)(grid)  # [G]
    first_bad = jnp.argmin(single)  # index of the first grid radius with C > 0
    all_single = jnp.all(single)
    lo = jnp.where(first_bad > 0, grid[jnp.maximum(first_bad - 1, 0)], 0.0)
    hi = grid[first_bad]

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        ok = is_single(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_bisect, bisect, (lo, hi))
    radius = jnp.where(all_single, grid[-1], lo)
    return SingleRegionRadius(radius.astype(grid.dtype), all_single)


@jax.jit(static_argnames=("num_grid", "num_bisect", "points_per_chunk"))
def _single_region_radius_jit(net, xs, r_max, num_grid, num_bisect, points_per_chunk):
    model = as_model(net)
    lin_in = algorithm1.input_maps(model)
    grid = r_max * jnp.arange(1, num_grid + 1, dtype=xs.dtype) / num_grid
    per_point = jax.vmap(lambda x: _single_point(model, lin_in, x, grid, num_bisect))
    return map_points_in_chunks(per_point, xs, points_per_chunk)


def single_region_radius(
    network,
    xs: jax.Array,
    r_max: float,
    num_grid: int = 16,
    num_bisect: int = 12,
    *,
    chunk_size: int | None = None,
) -> SingleRegionRadius:
    """Largest verified radius with a single linear region, for every point.

    Algorithm 1 is evaluated at the grid ``r_max * k / num_grid`` for
    ``k = 1..num_grid``; between the last grid radius with ``C = 0`` and the
    first with ``C > 0`` the bracket is halved ``num_bisect`` times. The result
    is within ``r_max / (num_grid * 2**num_bisect)`` of the largest ``C = 0``
    radius when ``C`` is monotone in the radius. Points are padded to a bucket
    and evaluated in fixed-size chunks, as in :func:`lr_jax.local_bounds`.

    Args:
      network: ``layers`` or a :class:`lr_jax.Network`.
      xs: ``[N, d]`` points (``[N, *input_shape]`` for a Network).
      r_max: largest radius tried (> 0).
      num_grid: grid size (static).
      num_bisect: bisection steps (static).
      chunk_size: (point, radius) pairs per chunk (each point counts
        ``num_grid`` pairs); default as :func:`lr_jax.local_bounds`.

    Returns:
      :class:`SingleRegionRadius` with ``[N]`` fields.
    """
    if not isinstance(r_max, jax.core.Tracer) and not r_max > 0:
        raise ValueError(f"r_max must be > 0, got {r_max}.")
    if num_grid < 1 or num_bisect < 0:
        raise ValueError(f"need num_grid >= 1 and num_bisect >= 0, got {num_grid}, {num_bisect}.")
    net, xs, r_max = prepare_inputs(network, xs, r_max, batched=True)
    if chunk_size is None:
        chunk_size = default_chunk_size(net, xs.dtype)
    chunk_size = concrete_int("chunk_size", chunk_size)
    n = xs.shape[0]
    out = _single_region_radius_jit(
        net, pad_rows(xs, bucket(n)), r_max[0], num_grid, num_bisect, max(1, chunk_size // num_grid)
    )
    return jax.tree.map(lambda a: a[:n], out)
