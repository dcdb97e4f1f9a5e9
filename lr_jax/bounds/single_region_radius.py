"""The distance from a point to its nearest region boundary: the largest radius with ``C = 0``.

If Algorithm 1 returns ``C = 0`` for ``B_r(x)``, every hidden pre-activation keeps
its sign on the whole closed ball (condition S of section 4), so the ball lies in
one linear region. The paper relates the trend of the largest such ``r`` to the
trend of the bounds (section 5.2). That radius has a closed form.

**Claim.** Let ``g_j = grad z_j(x)`` be the gradient of hidden neuron ``j``'s
pre-activation at ``x`` inside ``x``'s own region (the ReLU masks fixed to
``x``'s pattern, ``relu'(0) = 0``) and ``A_j = z_j(x)``. Then

    C(r) = 0   iff   r < r* = min_j |A_j| / ||g_j||_2

(a ratio ``|A_j| / 0`` is ``+inf``, and ``0 / 0`` is ``0``), and ``r*`` is the
distance from ``x`` to the nearest hyperplane ``{x' : A_j + g_j . (x' - x) = 0}``
bounding its region: the distance to the nearest region boundary.

*Proof.* By induction over the layers (in order; with several sources per
layer the same argument runs over every source). Suppose ``r < r*`` and every
neuron before ``j`` has ``S = P = 0`` with ``L_i = g_i`` if it is on and
``L_i = 0`` if it is off. Then ``Usum_j = 0`` (no source has ``P = 1``) and
``L_j = sum_src sum_{i: on} M[i, j] g_i = g_j`` (the chain rule under the
pattern), so ``U_j = r ||g_j|| < |A_j|``: a neuron with ``A_j > 0`` takes the
branch ``P = S = 0`` with ``L_j = g_j``, one with ``A_j < 0`` is dead
(``U_j + A_j < 0``: ``P = S = 0``, ``L_j = 0 = `` its output's gradient). So
every neuron is stable and ``C = 0``. Conversely, at ``r >= r*`` let ``j`` be
the first neuron (in layer order) with ``r ||g_j|| >= |A_j|``; everything
before it is as above, so ``U_j = r ||g_j|| >= |A_j|`` and neither stable
branch's strict inequality holds (for ``A_j = 0`` the positive branch needs
``U_j < 0``): ``S_j = 1`` and ``C > 0``. Finally, inside the region every
``z_j`` is the affine function ``A_j + g_j . (x' - x)``, which vanishes first at
distance ``|A_j| / ||g_j||``; the region is the intersection of these
half-spaces, so the distance to its boundary is the smallest of them. QED.

So one forward-mode pass (the Jacobian of the pre-activations at ``x``)
replaces the grid of radii and the bisection. ``method="bisection"`` keeps
the older search (a grid of radii, then bisection between the last ``C = 0``
and the first ``C > 0``), a lower bound within
``r_max / (num_grid * 2**num_bisect)`` of ``r*`` for comparison.

Precision: ``r*`` is computed in the compute dtype; Algorithm 1 run at a
radius within a few ulps (relative) of ``r*`` may classify the closest neuron
either way.
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
    flat_preactivations,
    forward,
    map_points_in_chunks,
    pad_rows,
    prepare_inputs,
    safe_norm,
)


class SingleRegionRadius(NamedTuple):
    """Result of :func:`single_region_radius`, one entry per point.

    Attributes:
      radius: ``[N]`` the distance to the nearest region boundary ``r*``
        (``C = 0`` exactly for radii below it), capped at ``r_max`` when one is
        given; with ``method="bisection"`` the largest radius verified to give
        ``C = 0``, a lower bound on ``r*``.
      capped: ``[N]`` bool, True when ``r*`` (or ``C = 0`` in the search)
        reached ``r_max``: the distance may be larger than ``radius``.
    """

    radius: jax.Array
    capped: jax.Array


def _distance(model, x):
    """``r* = min_j |A_j| / ||g_j||`` for one point (module docstring)."""
    x = x.reshape(model.input_shape)

    def preacts(v):
        return flat_preactivations(model, v).astype(v.dtype)

    a = preacts(x)
    grads = jax.jacfwd(preacts)(x).reshape(a.shape[0], -1)  # [n_hidden, d]; relu's jvp is 0 at 0
    norm = safe_norm(grads)
    ratio = jnp.where(norm > 0, jnp.abs(a) / jnp.where(norm > 0, norm, 1.0), jnp.where(a == 0, 0.0, jnp.inf))
    return jnp.min(ratio)


def _single_point(model, lin_in, windows, x, grid, num_bisect):
    preacts = forward(model, x.reshape(model.input_shape))

    def is_single(r):
        return algorithm1.single_pair_count(model, lin_in, preacts, r, windows) == 0

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


@jax.jit(static_argnames=("num_grid", "num_bisect", "points_per_chunk", "method"))
def _single_region_radius_jit(net, xs, r_max, num_grid, num_bisect, points_per_chunk, method):
    model = as_model(net)
    if method == "exact":
        def per_point(xc):
            r = jax.vmap(lambda x: _distance(model, x))(xc)
            return SingleRegionRadius(jnp.minimum(r, r_max).astype(xs.dtype), r >= r_max)
    else:
        lin_in, windows = algorithm1.input_maps(model), algorithm1.window_maps(model)
        grid = r_max * jnp.arange(1, num_grid + 1, dtype=xs.dtype) / num_grid
        per_point = jax.vmap(lambda x: _single_point(model, lin_in, windows, x, grid, num_bisect))
    return map_points_in_chunks(per_point, xs, points_per_chunk)


METHODS = ("exact", "bisection")


def single_region_radius(
    network,
    xs: jax.Array,
    r_max=None,
    num_grid: int = 16,
    num_bisect: int = 12,
    *,
    method: str = "exact",
    chunk_size: int | None = None,
) -> SingleRegionRadius:
    """The distance to the nearest region boundary (the largest radius with ``C = 0``), per point.

    ``method="exact"`` (default): the closed form ``r* = min_j |A_j| / ||g_j||``
    of the module docstring, one forward-mode pass per point.
    ``method="bisection"``: Algorithm 1 evaluated at the grid
    ``r_max * k / num_grid`` for ``k = 1..num_grid``, then the bracket between
    the last grid radius with ``C = 0`` and the first with ``C > 0`` halved
    ``num_bisect`` times: a verified radius within
    ``r_max / (num_grid * 2**num_bisect)`` below ``r*``. Points are padded to
    a bucket and evaluated in fixed-size chunks, as in :func:`lr_jax.local_bounds`.

    Args:
      network: ``layers`` or a :class:`lr_jax.Network`.
      xs: ``[N, d]`` points (``[N, *input_shape]`` for a Network).
      r_max: cap on the radius (> 0); required for ``"bisection"``, optional
        (None: no cap) for ``"exact"``.
      num_grid: grid size for ``"bisection"`` (static).
      num_bisect: bisection steps for ``"bisection"`` (static).
      method: ``"exact"`` or ``"bisection"``.
      chunk_size: (point, radius) pairs per chunk (a point counts ``num_grid``
        pairs); default as :func:`lr_jax.local_bounds`.

    Returns:
      :class:`SingleRegionRadius` with ``[N]`` fields.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if r_max is None:
        if method == "bisection":
            raise ValueError("method='bisection' needs r_max (> 0), the largest radius tried.")
        r_max = float("inf")
    elif not isinstance(r_max, jax.core.Tracer) and not r_max > 0:
        raise ValueError(f"r_max must be > 0, got {r_max}.")
    if num_grid < 1 or num_bisect < 0:
        raise ValueError(f"need num_grid >= 1 and num_bisect >= 0, got {num_grid}, {num_bisect}.")
    net, xs, _ = prepare_inputs(network, xs, 0.0, batched=True)
    r_max = jnp.asarray(r_max, xs.dtype)
    if chunk_size is None:
        chunk_size = default_chunk_size(net, xs.dtype)
    chunk_size = concrete_int("chunk_size", chunk_size)
    n = xs.shape[0]
    per_chunk = max(1, chunk_size // (num_grid if method == "bisection" else 1))
    out = _single_region_radius_jit(
        net, pad_rows(xs, bucket(n)), r_max, num_grid, num_bisect, per_chunk, method
    )
    return jax.tree.map(lambda a: a[:n], out)
