"""A certified lower bound on the number of linear regions meeting a ball, by sampling.

The bottom slice of the "certified sandwich" around Algorithm 1 (Zhu, Lin &
Tang, section 4)::

    sample_regions  <=  count_regions  <=  2 ** tight_bounds  <=  2 ** C   (Remark 2)

Every activation pattern (sign of every hidden pre-activation) observed at a
point of the closed ball ``B_r(x)`` that lies in no region boundary is the
pattern of a region meeting the ball, and distinct patterns are distinct
regions; so the number of distinct patterns seen is a lower bound on the
number of regions. Points fall on a boundary with probability 0 (boundaries
are finite unions of lower-dimensional pieces), so the bound holds almost
surely. Two sources of points per ball:

* ``num_samples`` points uniform in the ball: direction a normalised
  Gaussian, radius ``r U^(1/d)`` with ``U`` uniform on ``[0, 1]``.
* ``num_chords`` random diameters ``x + t v``, ``t in [-r, r]``, walked exactly
  in 1-D. Under a fixed pattern every pre-activation is affine in ``t``
  (eq. (2) of the paper), so from a probe point the next breakpoint is the
  nearest ``t`` where one of those affine functions crosses zero. Each step
  probes just past the last breakpoint (at ``t + r sqrt(eps)``) to read the
  next piece's pattern and slopes, finds that piece's end, and records the
  pattern at the piece's midpoint (the point of the piece farthest from both
  of its breakpoints, so the least exposed to rounding). A piece shorter than
  the probe step may be skipped, and a chord with more than
  ``max_breakpoints`` pieces is cut short; either only loses patterns, so the
  result stays a lower bound.

Distinct patterns are counted inside ``jit`` by hashing each pattern to two
``uint32`` values, ``sum_j bit_j w_j mod 2^32`` with independent random odd
weights ``w``, and counting distinct hash pairs after a lexicographic sort.
Hashing is a function of the pattern, so equal patterns always get equal
hashes; a collision can only merge two distinct patterns into one hash,
never split one pattern into two. The count of distinct hashes is therefore at
most the count of distinct patterns: collisions can only undercount, and the
result stays a lower bound. (Two patterns differing in a set of bits collide
in one hash with probability at most ``2^-31``, since one odd weight of the
set is uniform on the odd residues; in both with at most ``2^-62``.)

All randomness comes from the explicit ``key``: ball ``(n, k)`` (point ``n``,
radius ``k``) uses ``jax.random.fold_in(jax.random.fold_in(key, n), k)``, and
:func:`sample_region_count` with that key reproduces entry ``[n, k]``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from lr_jax.bounds.core import (
    Model,
    as_model,
    bucket,
    flat_preactivations,
    map_points_in_chunks,
    pad_rows,
    prepare_inputs,
)

# Points evaluated together by sample_regions (the rest wait their turn).
_POINTS_PER_CHUNK = 64


def _pattern_hash(preacts: jax.Array, weights: jax.Array) -> jax.Array:
    """Two 32-bit linear hashes of the activation pattern ``preacts > 0``.

    Args:
      preacts: ``[..., n]`` hidden pre-activations, all layers flattened.
      weights: ``[2, n]`` odd ``uint32`` weights.

    Returns:
      ``[..., 2]`` uint32 (integer arithmetic wraps modulo ``2^32``).
    """
    bits = (preacts > 0)[..., None, :].astype(jnp.uint32)
    return jnp.sum(bits * weights, axis=-1, dtype=jnp.uint32)


def _count_distinct(hashes: jax.Array) -> jax.Array:
    """Number of distinct rows of ``hashes`` ``[M, 2]`` (int32)."""
    first, second = jax.lax.sort((hashes[:, 0], hashes[:, 1]), num_keys=2)
    new = (first[1:] != first[:-1]) | (second[1:] != second[:-1])
    return 1 + jnp.sum(new, dtype=jnp.int32)


def _uniform_in_ball(x: jax.Array, radius: jax.Array, g: jax.Array) -> jax.Array:
    """Points uniform in the closed ball ``B_r(x)`` from standard normals.

    Args:
      x: ``[d]`` centre.
      radius: scalar ``r``.
      g: ``[num, d + 1]`` i.i.d. standard normals: the first ``d`` give the
        direction (a normalised Gaussian is uniform on the sphere), the last
        gives ``U = Phi(g) ~ Uniform(0, 1)`` and the radius ``r U^(1/d)``.

    Returns:
      ``[num, d]`` points.
    """
    d = x.shape[0]
    u = g[:, :d] / jnp.linalg.norm(g[:, :d], axis=-1, keepdims=True)
    rho = radius * jax.scipy.special.ndtr(g[:, d:]) ** (1.0 / d)
    return x + rho * u


def _walk_chord(
    model: Model,
    x: jax.Array,
    v: jax.Array,
    radius: jax.Array,
    weights: jax.Array,
    filler: jax.Array,
    max_breakpoints: int,
) -> jax.Array:
    """Hashes of the patterns met along the diameter ``x + t v``, ``t in [-r, r]``.

    Returns:
      ``[max_breakpoints, 2]`` uint32; slots after the walk reached ``t = r``
      hold ``filler`` (the hash of a pattern already counted).
    """
    step = radius * jnp.sqrt(jnp.finfo(x.dtype).eps)

    def preacts_at(t):
        return flat_preactivations(model, (x + t * v).reshape(model.input_shape))

    def body(i, state):
        t_lo, hashes = state
        done = t_lo >= radius
        probe = jnp.minimum(t_lo + step, 0.5 * (t_lo + radius))
        # Directional derivative along v under the probe's pattern (relu's jvp
        # is 0 at 0, matching the pattern convention h > 0).
        h, slope = jax.jvp(preacts_at, (probe,), (jnp.ones_like(probe),))
        ahead = h * slope < 0  # moving towards zero: a breakpoint after the probe
        crossing = jnp.where(ahead, probe - h / jnp.where(ahead, slope, 1.0), jnp.inf)
        t_end = jnp.minimum(jnp.min(crossing), radius)
        mid_hash = _pattern_hash(preacts_at(0.5 * (t_lo + t_end)), weights)
        hashes = hashes.at[i].set(jnp.where(done, filler, mid_hash))
        return jnp.where(done, t_lo, t_end), hashes

    hashes = jnp.broadcast_to(filler, (max_breakpoints, 2))
    _, hashes = jax.lax.fori_loop(0, max_breakpoints, body, (-radius, hashes))
    return hashes


def _count_one(
    model: Model,
    x: jax.Array,
    radius: jax.Array,
    key: jax.Array,
    num_samples: int,
    num_chords: int,
    max_breakpoints: int,
) -> jax.Array:
    """Distinct patterns in one ball; scalar int32."""
    # One normal draw serves the points and the chord directions: every
    # random-number call is another threefry instance for XLA to compile.
    k_hash, k_normal = jax.random.split(key)
    x = x.reshape(-1)  # the ball lives in the flattened input
    num_bits = sum(math.prod(node.shape) for node in model.nodes)
    weights = jax.random.bits(k_hash, (2, num_bits), jnp.uint32) | jnp.uint32(1)
    g = jax.random.normal(k_normal, (num_samples + num_chords, x.shape[0] + 1), x.dtype)

    points = _uniform_in_ball(x, radius, g[:num_samples])
    preacts = jax.vmap(lambda p: flat_preactivations(model, p.reshape(model.input_shape)))(points)
    hashes = _pattern_hash(preacts, weights)  # [S, 2]
    if num_chords:
        v = g[num_samples:, :-1]
        directions = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        walk = functools.partial(
            _walk_chord, model, x, radius=radius, weights=weights,
            filler=hashes[0], max_breakpoints=max_breakpoints,
        )
        chord_hashes = jax.vmap(walk)(directions).reshape(-1, 2)
        hashes = jnp.concatenate([hashes, chord_hashes])
    return _count_distinct(hashes)


@functools.partial(jax.jit, static_argnames=("num_samples", "num_chords", "max_breakpoints"))
def _sample_regions_jit(net, xs, radii, key, *, num_samples, num_chords, max_breakpoints):
    model = as_model(net)
    count = functools.partial(
        _count_one, num_samples=num_samples, num_chords=num_chords, max_breakpoints=max_breakpoints
    )

    def per_ball(x, n, radius, k):
        return count(model, x, radius, jax.random.fold_in(jax.random.fold_in(key, n), k))

    per_radius = jax.vmap(per_ball, in_axes=(None, None, 0, 0))
    per_point = jax.vmap(per_radius, in_axes=(0, 0, None, None))
    # Each ball holds num_samples + num_chords * max_breakpoints patterns: bound
    # the memory by evaluating a fixed number of points at a time.
    return map_points_in_chunks(
        lambda a: per_point(a[0], a[1], radii, jnp.arange(radii.shape[0])),
        (xs, jnp.arange(xs.shape[0])),
        _POINTS_PER_CHUNK,
    )


def _check_sizes(num_samples: int, num_chords: int, max_breakpoints: int) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if num_chords < 0:
        raise ValueError(f"num_chords must be >= 0, got {num_chords}.")
    if max_breakpoints < 1:
        raise ValueError(f"max_breakpoints must be >= 1, got {max_breakpoints}.")


def sample_regions(
    network,
    xs: jax.Array,
    radii,
    key: jax.Array,
    num_samples: int = 1024,
    num_chords: int = 16,
    max_breakpoints: int = 128,
) -> jax.Array:
    """A lower bound on the number of regions meeting each ball ``B_r(x)``, jitted.

    Counts the distinct activation patterns at ``num_samples`` uniform points
    and along ``num_chords`` random diameters of every ball (see the module
    docstring for why this is a lower bound, also under hash collisions).
    ``jax.vmap`` over radii, then over points, in chunks of
    ``_POINTS_PER_CHUNK`` points, so memory grows as
    ``_POINTS_PER_CHUNK * R * (num_samples + num_chords * max_breakpoints) * n_hidden``.

    Args:
      network: ``layers`` (``(W [fan_in, fan_out], b [fan_out])`` pairs, input
        to output; the last pair is the linear output layer, not counted) or
        a :class:`lr_jax.Network`.
      xs: ``[N, d]`` centres (``[N, *input_shape]`` for a Network).
      radii: ``[R]`` radii (a scalar is taken as ``R = 1``).
      key: a ``jax.random`` key; ball ``(n, k)`` uses
        ``fold_in(fold_in(key, n), k)``.
      num_samples: uniform points per ball (``>= 1``).
      num_chords: diameters walked exactly per ball (``>= 0``).
      max_breakpoints: static cap on the linear pieces walked per chord.

    Returns:
      int32 ``[N, R]``; every entry is at least 1 (the pattern of the first
      sample). At ``r = 0`` it is 1: the pattern at ``x``.

    Raises:
      ValueError: as :func:`lr_jax.local_bounds` for bad shapes or values, or
        for non-positive sizes.
    """
    net, xs, radii = prepare_inputs(network, xs, radii, batched=True)
    _check_sizes(num_samples, num_chords, max_breakpoints)
    n, r = xs.shape[0], radii.shape[0]
    out = _sample_regions_jit(
        net, pad_rows(xs, bucket(n)), radii if r else jnp.zeros((1,), radii.dtype), key,
        num_samples=num_samples, num_chords=num_chords, max_breakpoints=max_breakpoints,
    )
    return out[:n, :r]


@functools.partial(jax.jit, static_argnames=("num_samples", "num_chords", "max_breakpoints"))
def _sample_region_count_jit(net, x, radius, key, *, num_samples, num_chords, max_breakpoints):
    model = as_model(net)
    return _count_one(model, x, radius, key, num_samples, num_chords, max_breakpoints)


def sample_region_count(
    network,
    x: jax.Array,
    radius,
    key: jax.Array,
    num_samples: int = 1024,
    num_chords: int = 16,
    max_breakpoints: int = 128,
) -> jax.Array:
    """:func:`sample_regions` for one ball, with ``key`` used as the ball's own key.

    ``sample_region_count(network, xs[n], radii[k], fold_in(fold_in(key, n), k))``
    equals ``sample_regions(network, xs, radii, key)[n, k]``.

    Returns:
      Scalar int32.
    """
    net, x, radius = prepare_inputs(network, x, radius, batched=False)
    _check_sizes(num_samples, num_chords, max_breakpoints)
    return _sample_region_count_jit(
        net, x, radius, key,
        num_samples=num_samples, num_chords=num_chords, max_breakpoints=max_breakpoints,
    )
