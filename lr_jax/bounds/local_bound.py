"""Algorithm 1 of Zhu, Lin & Tang: an upper bound on the linear regions meeting a ball.

For a ReLU MLP and the closed L2 ball ``B_r(x)``, the paper carries, for every
hidden neuron ``j`` of layer ``k``, four quantities (section 4, "Algorithm 1
Induction of one layer"):

* ``P_j`` (``changed``): 0 when the neuron is the same affine function of the
  input on the whole ball, with linear map ``L_j`` (condition P(k, r));
* ``S_j`` (``unstable``): 0 when the pre-activation keeps its sign on the whole
  ball (condition S(k, r));
* ``U_j`` (``deviation``): ``|X'_j - X_j| <= U_j`` for every ``x'`` in the ball
  (condition U(k, r)).

One layer step (the pseudocode, with ``M = W`` and ``A_j`` the centre's
pre-activation, eq. (3))::

    L    = sum_{i: P_i = 0} W_ij L_i          # a vector in R^d
    Usum = sum_{i: P_i = 1} |W_ij| U_i
    U_j  = r ||L||_2 + Usum                  # Lemma 1 bounds |A'_j - A_j| by this
    A_j <  0: dead (P=S=0, U=0, L_j=0)  if U_j + A_j < 0,  else P=S=1, U_j += A_j
    A_j >= 0: P=S=0 (L_j = L)  if U_j < A_j and Usum == 0
              P=1, S=0         if U_j < A_j and Usum != 0
              P=S=1            otherwise

The input layer starts the induction with ``L = I`` and ``P = 0``, so the first
hidden layer needs no product: its ``L`` is the kernel's column and its norm a
constant of the weights. Remark 2: with ``C`` the number of hidden neurons with
``S = 1``, at most ``2^C`` open linear regions meet ``B_r(x)``. The output
layer is linear and is not counted.

Implementation: the centre's forward pass runs once per point and is shared by
every radius; hidden-to-hidden layers are stacked (padded to a common width
with provably dead neurons: zero weights and bias -1, so ``A = -1 < 0`` and
``U = 0``) and run as one ``jax.lax.scan``. Under ``vmap`` the product
``W^T L`` of every (point, radius) pair shares ``W``, so XLA emits a single
large matrix multiply per layer across the batch.

Precision: every product is pinned to ``Precision.HIGHEST`` (full float32 on
GPUs rather than TF32). In float32 a certificate is exact for the rounded
arithmetic; a neuron whose margin ``|A_j| - U_j`` is within a few ulps of
``|A_j| + U_j`` (its hyperplane within about ``1e-6`` relative of the ball's
surface) may be classified either way. Enable ``jax_enable_x64`` to compute in
float64 when such near-boundary cases matter.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.networks.layers import Layer, validate_layers

_HIGHEST = jax.lax.Precision.HIGHEST
# Bias of padding neurons: A = -1 < 0 with zero weights, so U = 0 and the
# neuron is dead at every radius; padding never changes C.
_PAD_BIAS = -1.0


class LocalBound(NamedTuple):
    """Algorithm 1's result for one ball, or ``[N, R]`` balls when batched.

    Attributes:
      num_unstable: ``C``, the number of hidden neurons with ``S = 1``; int32 ``[...]``.
      log2_bound: ``log2`` of the bound on the number of regions meeting the
        ball; equals ``C`` for Algorithm 1 (Remark 2); float ``[...]``.
      unstable: ``S``; bool ``[..., H, W]`` for ``H`` hidden layers padded to
        the widest width ``W`` (padding neurons are False).
      changed: ``P``; bool ``[..., H, W]`` (padding False).
      deviation: ``U``; float ``[..., H, W]`` (padding 0).
    """

    num_unstable: jax.Array
    log2_bound: jax.Array
    unstable: jax.Array
    changed: jax.Array
    deviation: jax.Array


class PackedLayers(NamedTuple):
    """Hidden layers in the stacked, padded form the kernel scans over.

    Attributes:
      first_kernel: ``[d, W]`` first hidden layer's kernel, padded columns 0.
      first_bias: ``[W]``, padded entries ``-1``.
      first_norms: ``[W]`` column norms ``||W_{:, j}||_2`` (the first layer's ``||L||``).
      kernels: ``[H - 1, W, W]`` hidden-to-hidden kernels, zero padded.
      biases: ``[H - 1, W]``, padded entries ``-1``.
    """

    first_kernel: jax.Array
    first_bias: jax.Array
    first_norms: jax.Array
    kernels: jax.Array
    biases: jax.Array


class _LayerState(NamedTuple):
    linear: jax.Array  # [W, d]: L_j for P_j = 0 neurons that are alive, else 0
    changed: jax.Array  # [W] bool, P
    deviation: jax.Array  # [W], U


def compute_dtype() -> jnp.dtype:
    """float32 by default, float64 when ``jax_enable_x64`` is on."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def pack_layers(layers: Sequence[Layer], dtype=None) -> PackedLayers:
    """Pads the hidden layers to a common width and stacks layers 2..H.

    Traceable (called inside ``jit``). The output layer is dropped: it is linear
    and does not enter the bound.
    """
    dtype = dtype or compute_dtype()
    hidden = [(jnp.asarray(W, dtype), jnp.asarray(b, dtype)) for W, b in layers[:-1]]
    width = max(W.shape[1] for W, _ in hidden)

    def pad(W, b, rows):
        W = jnp.pad(W, ((0, rows - W.shape[0]), (0, width - W.shape[1])))
        b = jnp.pad(b, (0, width - b.shape[0]), constant_values=_PAD_BIAS)
        return W, b

    W1, b1 = pad(*hidden[0], hidden[0][0].shape[0])
    rest = [pad(W, b, width) for W, b in hidden[1:]]
    if rest:
        kernels = jnp.stack([W for W, _ in rest])
        biases = jnp.stack([b for _, b in rest])
    else:
        kernels = jnp.zeros((0, width, width), dtype)
        biases = jnp.zeros((0, width), dtype)
    return PackedLayers(W1, b1, jnp.linalg.norm(W1, axis=0), kernels, biases)


def centre_preactivations(packed: PackedLayers, x: jax.Array) -> jax.Array:
    """Pre-activations ``A^k`` of every hidden layer at the centre, eq. (1)/(3).

    Args:
      packed: from :func:`pack_layers`.
      x: ``[d]`` centre.

    Returns:
      ``[H, W]`` pre-activations (padding neurons ``-1``).
    """
    a1 = jnp.matmul(x, packed.first_kernel, precision=_HIGHEST) + packed.first_bias

    def step(a, wb):
        W, b = wb
        a_next = jnp.matmul(jax.nn.relu(a), W, precision=_HIGHEST) + b
        return a_next, a_next

    _, rest = jax.lax.scan(step, a1, (packed.kernels, packed.biases))
    return jnp.concatenate([a1[None], rest], axis=0)


def _neuron_update(a, lin_norm, dev_sum, radius):
    """The per-neuron branch of Algorithm 1 after ``L`` and ``U`` are summed.

    Returns ``(unstable S, changed P, deviation U, linear)`` where ``linear``
    marks the P=0 neurons that are alive (their ``L_j`` is carried on).
    """
    dev = radius * lin_norm + dev_sum  # U_j <- r ||L||_2 + U
    neg = a < 0
    dead = neg & (dev + a < 0)  # strict: a hyperplane at distance exactly r is not cleared
    pos_stable = ~neg & (dev < a)
    linear = pos_stable & (dev_sum == 0)
    unstable = ~(dead | pos_stable)
    changed = ~(dead | linear)
    deviation = jnp.where(dead, 0.0, jnp.where(neg, dev + a, dev)).astype(dev.dtype)
    return unstable, changed, deviation, linear


def _hidden_step(radius, state: _LayerState, layer):
    """Algorithm 1 from hidden layer k to k+1 (the scan body)."""
    W, a = layer
    lin = jnp.matmul(W.T, state.linear, precision=_HIGHEST)  # sum_{P_i=0} W_ij L_i
    moving = jnp.where(state.changed, state.deviation, 0.0)
    dev_sum = jnp.matmul(jnp.abs(W).T, moving, precision=_HIGHEST)  # sum_{P_i=1} |W_ij| U_i
    unstable, changed, deviation, linear = _neuron_update(
        a, jnp.linalg.norm(lin, axis=-1), dev_sum, radius
    )
    new_state = _LayerState(jnp.where(linear[:, None], lin, 0.0), changed, deviation)
    return new_state, (unstable, changed, deviation)


def _first_layer(packed: PackedLayers, a1: jax.Array, radius: jax.Array):
    """Layer 1 -> 2: ``L^1 = I`` and ``P^1 = 0``, so ``L = W_{:, j}`` and ``Usum = 0`` exactly."""
    unstable, changed, deviation, linear = _neuron_update(
        a1, packed.first_norms, jnp.zeros_like(packed.first_norms), radius
    )
    state = _LayerState(jnp.where(linear[:, None], packed.first_kernel.T, 0.0), changed, deviation)
    return state, (unstable, changed, deviation)


def _finish(unstable, changed, deviation, dtype) -> LocalBound:
    num_unstable = jnp.sum(unstable, axis=(-2, -1), dtype=jnp.int32)
    return LocalBound(num_unstable, num_unstable.astype(dtype), unstable, changed, deviation)


def bound_at_radius(packed: PackedLayers, preacts: jax.Array, radius: jax.Array) -> LocalBound:
    """Algorithm 1 for one centre (given its pre-activations) and one radius.

    Args:
      packed: from :func:`pack_layers`.
      preacts: ``[H, W]`` from :func:`centre_preactivations`.
      radius: scalar ``r >= 0``.

    Returns:
      A :class:`LocalBound` with scalar counts and ``[H, W]`` masks.
    """
    radius = jnp.asarray(radius, preacts.dtype)
    state, first = _first_layer(packed, preacts[0], radius)
    _, rest = jax.lax.scan(
        lambda s, l: _hidden_step(radius, s, l), state, (packed.kernels, preacts[1:])
    )
    stacked = [jnp.concatenate([f[None], r], axis=0) for f, r in zip(first, rest)]
    return _finish(*stacked, preacts.dtype)


# Pairs ride on axis 1 of every per-neuron array ([W, P] and [W, P, d]): W^T @ L
# is then one [W, W] x [W, P * d] matrix multiply for the whole batch, and the
# masks line up with it, so XLA inserts no transposes inside the scan.
_STATE_AXES = _LayerState(linear=1, changed=1, deviation=1)


def bounds_for_pairs(packed: PackedLayers, preacts: jax.Array, radii: jax.Array) -> LocalBound:
    """Algorithm 1 for ``P`` (centre, radius) pairs at once.

    The single-pair layer steps (:func:`_first_layer`, :func:`_hidden_step`)
    are ``vmap``-ed over pairs inside one ``lax.scan`` over the layers, so each
    layer's product is a single large matmul across the batch.

    Args:
      packed: from :func:`pack_layers`.
      preacts: ``[P, H, W]`` centre pre-activations of each pair.
      radii: ``[P]`` radius of each pair.

    Returns:
      :class:`LocalBound` with leading axis ``[P]``.
    """
    preacts = jnp.transpose(preacts, (1, 2, 0))  # [H, W, P]
    first_fn = jax.vmap(_first_layer, in_axes=(None, 1, 0), out_axes=(_STATE_AXES, 1))
    state, first = first_fn(packed, preacts[0], radii)
    step = jax.vmap(_hidden_step, in_axes=(0, _STATE_AXES, (None, 1)), out_axes=(_STATE_AXES, 1))
    _, rest = jax.lax.scan(lambda s, l: step(radii, s, l), state, (packed.kernels, preacts[1:]))
    # [W, P] and [H - 1, W, P] -> [P, H, W]
    stacked = [
        jnp.transpose(jnp.concatenate([f[None], r], axis=0), (2, 0, 1)) for f, r in zip(first, rest)
    ]
    return _finish(*stacked, preacts.dtype)


def _local_bound_impl(layers, x, radius):
    packed = pack_layers(layers, x.dtype)
    return bound_at_radius(packed, centre_preactivations(packed, x), radius)


def _pad_to_chunks(a: jax.Array, chunk: int) -> jax.Array:
    """``[P, ...] -> [ceil(P / chunk), chunk, ...]``, padding with the last row."""
    extra = -a.shape[0] % chunk
    if extra:
        a = jnp.concatenate([a, jnp.broadcast_to(a[-1:], (extra,) + a.shape[1:])], axis=0)
    return a.reshape((-1, chunk) + a.shape[1:])


def map_points_in_chunks(fn, xs, points_per_chunk: int):
    """Applies ``fn(xs_chunk)`` over fixed-size chunks of points.

    ``xs`` is an array ``[N, ...]`` or a pytree of them (e.g. points and their
    indices). A ``lax.map`` over chunks of one static size: memory stays
    bounded by one chunk's state, the last (padded) chunk reuses the same
    compiled body, and on CPU a chunk small enough for the cache runs faster
    than one huge batch. Returns ``fn``'s pytree with leading axis ``[N]``.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    chunk = max(1, min(points_per_chunk, n))
    out = jax.lax.map(fn, jax.tree.map(lambda a: _pad_to_chunks(a, chunk), xs))
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)


def _bounds_for_points(
    packed: PackedLayers, xs: jax.Array, radii: jax.Array, masks: bool, method: str
) -> LocalBound:
    """``[c]`` points x ``[R]`` radii; the centre's pass is shared by its radii."""
    preacts = jax.vmap(centre_preactivations, in_axes=(None, 0))(packed, xs)  # [c, H, W]
    n, r = xs.shape[0], radii.shape[0]
    if method == "paper":
        out = bounds_for_pairs(packed, jnp.repeat(preacts, r, axis=0), jnp.tile(radii, n))
    else:
        # Imported here: tight_bound builds on this module.
        from lr_jax.bounds.tight_bound import tight_bound_at_radius

        pair = jax.vmap(tight_bound_at_radius, in_axes=(None, 0, 0, 0))
        out = pair(packed, jnp.repeat(xs, r, axis=0), jnp.repeat(preacts, r, axis=0), jnp.tile(radii, n))
    if not masks:
        out = out._replace(unstable=None, changed=None, deviation=None)
    return jax.tree.map(lambda a: a.reshape((n, r) + a.shape[1:]), out)


_POINTS = "points"


def _local_bounds_impl(layers, xs, radii, chunk_size, masks, mesh, method):
    packed = pack_layers(layers, xs.dtype)
    points_per_chunk = max(1, chunk_size // radii.shape[0])
    n, num_devices = xs.shape[0], mesh.devices.size
    # Every device gets the same number of points; the padding rows are dropped.
    xs = _pad_to_chunks(xs, -(-n // num_devices)).reshape((-1,) + xs.shape[1:])

    def local(xs_shard):
        return map_points_in_chunks(
            lambda x: _bounds_for_points(packed, x, radii, masks, method), xs_shard, points_per_chunk
        )

    spec = jax.sharding.PartitionSpec(_POINTS)
    out = jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(xs)
    return jax.tree.map(lambda a: a[:n], out)


_local_bound_jit = jax.jit(_local_bound_impl)
_local_bounds_jit = jax.jit(_local_bounds_impl, static_argnames=("chunk_size", "masks", "mesh", "method"))
METHODS = ("paper", "tight")


def points_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: all) whose axis shards the points."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.sharding.Mesh(np.asarray(devices), (_POINTS,))


# Per-chunk working set on CPU: a few [W, c, d] arrays that should stay in cache.
_CPU_CHUNK_BYTES = 8 * 2**20
# Elsewhere: a fraction of the device memory (whole memory when unknown: 16 GiB).
_DEVICE_MEMORY_FRACTION = 0.25
_LIVE_STATE_ARRAYS = 4


def default_chunk_size(layers: Sequence[Layer], dtype=None, device=None) -> int:
    """Pairs per chunk for ``local_bounds``, from the model's size and the device.

    A pair's state is a ``[W, d]`` matrix (``L``) plus a few ``[W, d]``
    temporaries. On CPU the chunk is sized to keep them in cache
    (``8 MiB``), which is also the fastest setting measured; on accelerators it
    is a quarter of the device memory. Always a power of two, at least 1.
    """
    dtype = jnp.dtype(dtype or compute_dtype())
    device = device or jax.devices()[0]
    width = max(np.shape(W)[1] for W, _ in layers[:-1])
    d = np.shape(layers[0][0])[0]
    per_pair = _LIVE_STATE_ARRAYS * width * d * dtype.itemsize
    if device.platform == "cpu":
        budget = _CPU_CHUNK_BYTES
    else:
        stats = device.memory_stats() or {}
        budget = _DEVICE_MEMORY_FRACTION * stats.get("bytes_limit", 16 * 2**30)
    pairs = max(1, int(budget // per_pair))
    return 1 << (pairs.bit_length() - 1)


def _check_finite(name: str, a) -> None:
    if not isinstance(a, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(a))):
        raise ValueError(f"{name} contains NaN or inf; pass finite inputs.")


def _check_radii(radii) -> None:
    if isinstance(radii, jax.core.Tracer):
        return
    r = np.asarray(radii)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"radius must be finite, got {r}.")
    if np.any(r < 0):
        raise ValueError(f"radius must be >= 0, got {r[r < 0]}.")


def prepare_inputs(layers, xs, radii, *, batched: bool):
    """Validates and casts ``(layers, xs, radii)``; raises ValueError early.

    Shared by every public bound so that they reject bad input identically.
    """
    layers = validate_layers(layers)
    d = np.shape(layers[0][0])[0]
    x_shape = np.shape(xs)
    if batched:
        if len(x_shape) != 2:
            raise ValueError(
                f"xs must be 2-D [N, d], got shape {x_shape}; for one point use "
                "local_bound(layers, x, radius) or pass xs[None]."
            )
        if np.ndim(radii) > 1:
            raise ValueError(f"radii must be 1-D [R] (or a scalar), got shape {np.shape(radii)}.")
    else:
        if len(x_shape) != 1:
            raise ValueError(f"x must be 1-D [d], got shape {x_shape}; use local_bounds for batches.")
        if np.ndim(radii) != 0:
            raise ValueError(f"radius must be a scalar, got shape {np.shape(radii)}; use local_bounds.")
    if x_shape[-1] != d:
        raise ValueError(f"points have dimension {x_shape[-1]} but the first layer expects d = {d}.")
    _check_finite("x" if not batched else "xs", xs)
    _check_radii(radii)
    dtype = compute_dtype()
    layers = tuple((jnp.asarray(W, dtype), jnp.asarray(b, dtype)) for W, b in layers)
    xs = jnp.asarray(xs, dtype)
    radii = jnp.asarray(radii, dtype)
    if batched:
        radii = jnp.atleast_1d(radii)
    return layers, xs, radii


def local_bound(layers: Sequence[Layer], x: jax.Array, radius) -> LocalBound:
    """Algorithm 1's bound for the ball ``B_r(x)`` around one point.

    Args:
      layers: ``(W [fan_in, fan_out], b [fan_out])`` pairs, input to output;
        the last pair is the linear output layer (not counted).
      x: ``[d]`` centre.
      radius: scalar ``r >= 0``.

    Returns:
      :class:`LocalBound` with scalar ``num_unstable``/``log2_bound`` and
      ``[H, W]`` masks. At most ``2 ** num_unstable`` open linear regions meet
      the closed ball (Remark 2).

    Raises:
      ValueError: on inconsistent layer shapes, a wrong ``x`` shape, NaN/inf in
        ``x``, or a negative or non-finite radius.
    """
    layers, x, radius = prepare_inputs(layers, x, radius, batched=False)
    return _local_bound_jit(layers, x, radius)


def local_bounds(
    layers: Sequence[Layer],
    xs: jax.Array,
    radii,
    *,
    method: str = "paper",
    chunk_size: int | None = None,
    masks: bool = True,
    devices: Sequence[jax.Device] | None = None,
) -> LocalBound:
    """:func:`local_bound` for every point and every radius, jitted.

    The single-pair layer steps are ``jax.vmap``-ed over (point, radius)
    pairs; the centre's forward pass is computed once per point and shared by
    its radii. Points are processed in fixed-size chunks (``lax.map``) of
    ``max(1, chunk_size // R)`` points, so memory is bounded by one chunk, and
    sharded over ``devices`` along the point axis (``jax.shard_map`` on a 1-D
    mesh; one device runs the same path). The result depends on neither.

    Args:
      layers: as in :func:`local_bound`.
      xs: ``[N, d]`` centres.
      radii: ``[R]`` radii (a scalar is taken as ``R = 1``).
      method: ``"paper"`` (default): Algorithm 1 exactly; ``"tight"``: the
        tighter certified bound of :mod:`lr_jax.bounds.tight_bound` (same fields,
        ``log2_bound`` never above the paper's).
      chunk_size: (point, radius) pairs per chunk and device; default
        :func:`default_chunk_size`.
      masks: False to return only ``num_unstable`` and ``log2_bound`` (the
        mask fields are None), which keeps the output ``O(N R)`` for large runs.
      devices: devices to shard the points over; default all of
        ``jax.devices()``.

    Returns:
      :class:`LocalBound` whose fields have leading axes ``[N, R]``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    layers, xs, radii = prepare_inputs(layers, xs, radii, batched=True)
    if chunk_size is None:
        chunk_size = default_chunk_size(layers, xs.dtype)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    mesh = points_mesh(devices)
    return _local_bounds_jit(
        layers, xs, radii, chunk_size=int(chunk_size), masks=bool(masks), mesh=mesh, method=method
    )
