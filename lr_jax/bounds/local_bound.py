"""The public bound functions: ``local_bound``, ``local_bounds`` and ``tight_bounds``.

Every method maps ``(model, points [c, ...], radii [R])`` to per-layer results
(:mod:`lr_jax.bounds.algorithm1` for ``"paper"``, :mod:`lr_jax.bounds.tight_bound`
for ``"tight"``); this module validates the input, pads the number of points to
a bucket, splits the points into fixed-size chunks and over devices
(:mod:`lr_jax.bounds.core`), and puts the masks in the public layout.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from lr_jax.bounds import algorithm1, tight_bound
from lr_jax.bounds.core import (
    LocalBound,
    as_model,
    bucket,
    checkify_inputs,
    concrete_int,
    default_chunk_size,
    format_masks,
    map_points_in_chunks,
    pad_rows,
    points_mesh,
    prepare_inputs,
    shard_points,
)

# The method table: name -> (model, xs [c, ...], radii [R]) -> (C [c, R], log2 [c, R], per-layer results).
METHODS = {
    "paper": algorithm1.paper_points,
    "tight": tight_bound.tight_points,
}


def _bounds_impl(net, xs, radii, *, chunk_size, masks, mesh, method, neuron_block):
    model = as_model(net)
    fn = METHODS[method]
    if method == "tight":
        fn = functools.partial(fn, neuron_block=neuron_block)

    def chunk(x):
        c, log2, results = fn(model, x, radii)
        if not masks:
            return c, log2
        return c, log2, [r.unstable for r in results], [r.changed for r in results], [r.deviation for r in results]

    points_per_chunk = max(1, chunk_size // radii.shape[0])
    out = shard_points(lambda x: map_points_in_chunks(chunk, x, points_per_chunk), xs, mesh)
    if not masks:
        return LocalBound(out[0], out[1], None, None, None)
    c, log2, s, p, u = out
    return LocalBound(c, log2, *(format_masks(model, m, lead=2) for m in (s, p, u)))


_bounds_jit = jax.jit(_bounds_impl, static_argnames=("chunk_size", "masks", "mesh", "method", "neuron_block"))


def local_bounds(
    network,
    xs: jax.Array,
    radii,
    *,
    method: str = "paper",
    chunk_size: int | None = None,
    masks: bool = True,
    devices: Sequence[jax.Device] | None = None,
    validate: bool = False,
    neuron_block: int | None = None,
) -> LocalBound:
    """Bounds on the linear regions meeting ``B_r(x)`` for every point and radius, jitted.

    The single-pair layer steps are ``jax.vmap``-ed over (point, radius)
    pairs; the centre's forward pass is computed once per point and shared by
    its radii. Points are padded to a bucket (1, 2, 4, 8, 16, then the next
    number with four significant bits: 18, 20, .., 32, 36, ..; beyond 16 at
    most 1/8 more work) so that a new ``N`` rarely recompiles, processed in
    fixed-size chunks (``lax.map``) of ``max(1, chunk_size // R)`` points so
    that memory is bounded by one chunk, and sharded over ``devices`` along
    the point axis (``jax.shard_map``; with one device no sharding is used).
    Counts and masks depend on none of these (``deviation`` up to the last float
    bit, where XLA fuses multiply-adds differently for another batch shape).

    Safe inside a caller's ``jit``, ``vmap``, ``grad`` and training step:
    shapes are checked at trace time; the values (NaN/inf points, negative
    radii) only when they are concrete. Under ``jit`` pass ``validate=True``
    and wrap the call in ``jax.experimental.checkify.checkify`` to check them.

    Args:
      network: ``layers`` (``(W [fan_in, fan_out], b [fan_out])`` pairs, input
        to output; the last pair is the linear output layer) or a
        :class:`lr_jax.Network` from :func:`lr_jax.trace_network`.
      xs: ``[N, d]`` centres (``[N, *input_shape]`` for a Network).
      radii: ``[R]`` radii (a scalar is taken as ``R = 1``).
      method: ``"paper"`` (default): Algorithm 1 exactly; ``"tight"``: the
        tighter certified bound of :mod:`lr_jax.bounds.tight_bound` (same
        fields, ``log2_bound`` never above the paper's).
      chunk_size: (point, radius) pairs per chunk and device; default
        :func:`lr_jax.bounds.core.default_chunk_size`.
      masks: False to return only ``num_unstable`` and ``log2_bound`` (the
        mask fields are None), which keeps the output ``O(N R)``.
      devices: devices to shard the points over; default all of ``jax.devices()``.
      validate: add ``checkify`` checks of the values (for use under
        ``checkify.checkify`` when the inputs are traced).
      neuron_block: ``method="tight"`` only: how many neurons of one layer
        the bound propagation bounds together (default
        ``lr_jax.bounds.tight_bound.NEURON_BLOCK``, 128). Its memory per
        (point, radius) pair grows with the block times the width of the
        earlier layers, never with the square of a layer's width; only the
        neurons Algorithm 1 leaves unstable are bounded (a Dense chain's
        layers of at most this many neurons whole).

    Returns:
      :class:`LocalBound` whose fields have leading axes ``[N, R]``; masks
      ``[N, R, H, W]`` for ``layers``, a tuple of ``[N, R, *shape_t]`` for a
      Network. ``N = 0`` or ``R = 0`` give empty results of those shapes.

    Raises:
      ValueError: on inconsistent layer shapes, a wrong ``xs`` shape, concrete
        NaN/inf in ``xs`` or the weights, a concrete negative or non-finite
        radius, an unknown method or a chunk size below 1.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}.")
    net, xs, radii = prepare_inputs(network, xs, radii, batched=True)
    if validate:
        checkify_inputs(xs, radii, net)
    n, r = xs.shape[0], radii.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(net, xs.dtype)
    chunk_size = concrete_int("chunk_size", chunk_size)
    neuron_block = concrete_int("neuron_block", tight_bound.NEURON_BLOCK if neuron_block is None else neuron_block)
    # Empty batches run one padded point / radius and keep none of it.
    padded_xs = pad_rows(xs, bucket(max(n, 1)))
    padded_radii = radii if r else jnp.zeros((1,), radii.dtype)
    out = _bounds_jit(
        net, padded_xs, padded_radii,
        chunk_size=chunk_size, masks=bool(masks), mesh=points_mesh(devices), method=method,
        neuron_block=neuron_block if method == "tight" else None,
    )
    return jax.tree.map(lambda a: a[:n, :r], out)


def local_bound(network, x: jax.Array, radius, *, method: str = "paper") -> LocalBound:
    """The bound for the ball ``B_r(x)`` around one point.

    Args:
      network: ``layers`` or a :class:`lr_jax.Network` (see :func:`local_bounds`).
      x: ``[d]`` centre (``input_shape`` for a Network).
      radius: scalar ``r >= 0``.
      method: ``"paper"`` (Algorithm 1) or ``"tight"``.

    Returns:
      :class:`LocalBound` with scalar ``num_unstable``/``log2_bound`` and
      masks ``[H, W]`` (``layers``) or one array per ReLU layer (Network).
      At most ``2 ** log2_bound`` open linear regions meet the closed ball
      (Remark 2).

    Raises:
      ValueError: as :func:`local_bounds`.
    """
    prepare_inputs(network, x, radius, batched=False)
    out = local_bounds(network, jnp.asarray(x)[None], jnp.reshape(jnp.asarray(radius), (1,)), method=method)
    return jax.tree.map(lambda a: a[0, 0], out)


def tight_bounds(network, xs: jax.Array, radii, **kwargs) -> LocalBound:
    """Tighter certified bounds than Algorithm 1 for every point and radius, jitted.

    The same as ``lr_jax.local_bounds(network, xs, radii, method="tight")``
    (``kwargs`` are its ``chunk_size``, ``masks``, ``devices``, ``validate``).

    Returns:
      :class:`LocalBound` with leading axes ``[N, R]``: ``unstable`` is
      ``S_tight``, ``num_unstable`` its count,
      ``log2_bound <= num_unstable <= C_paper``; ``changed`` and
      ``deviation`` are Algorithm 1's.
    """
    return local_bounds(network, xs, radii, method="tight", **kwargs)
