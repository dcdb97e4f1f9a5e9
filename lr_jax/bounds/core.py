"""The core every bound shares: networks as graphs of affine maps between ReLU layers.

A piecewise-linear ReLU network, whether given as ``layers`` (a list of Dense
``(W, b)`` pairs) or as a traced :class:`lr_jax.Network`, is seen by every
bound as the same object, a :class:`Model`: ReLU layers ``t = 1 .. T`` (node
``0`` is the input ``x``), each with the pre-activation

    z_t = sum_{src in sources(t)} M_{src,t}^T h_src + c_t,      h_t = relu(z_t),

an affine map of its sources (the input or earlier ReLU outputs). The
affine map between ReLU layers is the paper's ``M^k`` (eq. (1)): two affine
maps in a row (pooling then dense, conv then batch norm) are one map. Each
node offers the few operations the methods need, without materialising
``M`` where its structure allows (:class:`AffineNode`).

This module also holds what every public bound does the same way: input
validation (values only when concrete: under a caller's ``jit`` they are
unknown), the centre's forward pass, fixed-size chunks of points, sharding
over devices, and padding the number of points to a bucket so that a new
``N`` does not recompile. It imports no method: the methods import it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from lr_jax.networks.layers import validate_layers
from lr_jax.networks.tracing import Network, graph_nodes

HIGHEST = jax.lax.Precision.HIGHEST


class LocalBound(NamedTuple):
    """A bound's result for one ball, or ``[N, R]`` balls when batched.

    Attributes:
      num_unstable: ``C``, the number of hidden neurons with ``S = 1``; int32 ``[...]``.
      log2_bound: ``log2`` of the bound on the number of regions meeting the
        ball; equals ``C`` for Algorithm 1 (Remark 2); float ``[...]``.
      unstable: ``S``. For ``layers``: bool ``[..., H, W]`` for ``H`` hidden
        layers padded to the widest width ``W`` (padding neurons are False).
        For a :class:`lr_jax.Network`: a tuple with one bool array per ReLU
        layer, ``[..., *layer_shape]``.
      changed: ``P``, in the same layout as ``unstable``.
      deviation: ``U``, float, in the same layout (padding 0).
    """

    num_unstable: jax.Array
    log2_bound: jax.Array
    unstable: Any
    changed: Any
    deviation: Any


def compute_dtype() -> jnp.dtype:
    """float32 by default, float64 when ``jax_enable_x64`` is on."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full precision (no TF32 on GPUs: it changes certificates)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def safe_norm(a: jax.Array, axis=-1) -> jax.Array:
    """``||a||_2`` along ``axis`` with a finite gradient at ``a = 0`` (where it is 0)."""
    sq = jnp.sum(a * a, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


# ---------------------------------------------------------------------------
# The model: ReLU layers as affine nodes


class DenseNode:
    """``z = h_src @ W + b`` from one 1-D source; ``M = W`` ``[n_src, n]``."""

    def __init__(self, W: jax.Array, b: jax.Array, source: int):
        self.W, self.b = W, b
        self.sources = (source,)
        self.shape = (W.shape[1],)

    def apply(self, vals):
        return matmul(vals[self.sources[0]], self.W) + self.b

    def linear_d(self, tans):
        """``M^T L`` for ``d`` directions: ``[d, n_src] -> [d, n]``."""
        return matmul(tans[self.sources[0]], self.W)

    def abs_linear(self, us):
        """``|M|^T u``: ``[n_src] -> [n]``."""
        return matmul(us[self.sources[0]], jnp.abs(self.W))

    def backward(self, rows):
        """``rows M^T``: ``[m, n] -> {src: [m, n_src]}`` (coefficients moved to the source)."""
        return {self.sources[0]: matmul(rows, self.W.T)}

    def transposed(self):
        """``M^T`` per source, ``{src: [n, n_src]}``: row ``j`` holds ``z_j``'s coefficients."""
        return {self.sources[0]: self.W.T}

    def offset(self):
        return self.b


class Model(NamedTuple):
    """A network as the bounds see it (built inside traced code; not a pytree).

    Attributes:
      input_shape: the shape of one input ``x``; the ball lives in its
        flattening, of dimension ``d``.
      nodes: the ReLU layers in order; node ``t`` (1-based) is ``nodes[t - 1]``.
      dense: the hidden ``(W, b)`` pairs when the network is a chain of
        Dense layers on a 1-D input (the fast, scanned path), else None.
      from_layers: True when built from ``layers`` (masks padded and stacked).
      dtype: the compute dtype.
    """

    input_shape: tuple
    nodes: tuple
    dense: tuple | None
    from_layers: bool
    dtype: Any

    @property
    def d(self) -> int:
        return math.prod(self.input_shape)

    @property
    def shapes(self) -> tuple:
        return tuple(node.shape for node in self.nodes)


def model_from_layers(layers) -> Model:
    """The :class:`Model` of validated, cast ``layers`` (the output layer dropped)."""
    hidden = tuple(layers[:-1])
    nodes = tuple(DenseNode(W, b, t) for t, (W, b) in enumerate(hidden))
    return Model((int(hidden[0][0].shape[0]),), nodes, hidden, True, hidden[0][0].dtype)


def model_from_network(net: Network) -> Model:
    """The :class:`Model` of a traced network; a plain Dense chain gets the fast path.

    A Dense chain reads the input flattened (``input_shape = (d,)``).
    """
    nodes, dense = graph_nodes(net)
    if dense is not None:
        nodes = tuple(DenseNode(W, b, t) for t, (W, b) in enumerate(dense))
        return Model((math.prod(net.input_shape),), nodes, dense, False, net.dtype)
    return Model(tuple(net.input_shape), tuple(nodes), None, False, net.dtype)


def as_model(net_or_layers) -> Model:
    """The :class:`Model` of ``layers`` or a :class:`Network` (inside traced code)."""
    if isinstance(net_or_layers, Network):
        return model_from_network(net_or_layers)
    return model_from_layers(net_or_layers)


def forward(model: Model, x: jax.Array) -> list:
    """Pre-activations ``A^t`` of every ReLU layer at ``x``, eqs. (1)/(3).

    Args:
      model: the network.
      x: one input, ``input_shape``.

    Returns:
      A list of ``[*shape_t]`` arrays, one per ReLU layer.
    """
    vals = {0: x}
    pre = []
    for t, node in enumerate(model.nodes, start=1):
        z = node.apply({s: vals[s] for s in node.sources})
        pre.append(z)
        vals[t] = jax.nn.relu(z)
    return pre


def flat_preactivations(model: Model, x: jax.Array) -> jax.Array:
    """All hidden pre-activations at ``x`` concatenated, ``[n_hidden]``."""
    return jnp.concatenate([z.reshape(-1) for z in forward(model, x)])


def format_masks(model: Model, per_layer: list, lead: int):
    """Per-layer ``[..., *shape_t]`` masks in the public layout.

    ``layers``: padded to the widest layer and stacked, ``[..., H, W]``
    (padding: False / 0). Networks: the tuple as it is.
    """
    if not model.from_layers:
        return tuple(per_layer)
    width = max(a.shape[-1] for a in per_layer)
    padded = [jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])]) for a in per_layer]
    return jnp.stack(padded, axis=lead)


def count_unstable(unstable: list, lead: int = 0) -> jax.Array:
    """``C = sum_t sum_j S_j`` over per-layer masks whose first ``lead`` axes are batch axes."""
    return sum(
        jnp.sum(s.reshape(s.shape[:lead] + (-1,)), axis=-1, dtype=jnp.int32) for s in unstable
    )


# ---------------------------------------------------------------------------
# Validation (before anything is traced)


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_finite(name: str, a) -> None:
    """Raises when a concrete ``a`` holds NaN/inf; tracers pass (unknown under ``jit``)."""
    if _is_concrete(a) and not np.all(np.isfinite(np.asarray(a))):
        raise ValueError(f"{name} contains NaN or inf; pass finite inputs.")


def check_radii(radii) -> None:
    """Raises on a concrete negative or non-finite radius; tracers pass."""
    if not _is_concrete(radii):
        return
    r = np.asarray(radii)
    if not np.all(np.isfinite(r)):
        raise ValueError(f"radius must be finite, got {r}.")
    if np.any(r < 0):
        raise ValueError(f"radius must be >= 0, got {r[r < 0]}.")


def _input_shape(net_or_layers) -> tuple:
    if isinstance(net_or_layers, Network):
        return tuple(net_or_layers.input_shape)
    return (int(np.shape(net_or_layers[0][0])[0]),)


def prepare_inputs(net_or_layers, xs, radii, *, batched: bool):
    """Validates and casts ``(network, xs, radii)``; raises ValueError early.

    Shared by every public bound so that they reject bad input identically.
    Shapes are always checked; values (NaN/inf, negative radii) only when
    concrete: inside a caller's ``jit`` they are tracers whose values are
    unknown (use ``validate=True`` under ``checkify`` there).

    Returns:
      ``(network, xs, radii)`` cast to the compute dtype; ``layers`` as a
      tuple of pairs; ``radii`` 1-D when ``batched``.
    """
    if isinstance(net_or_layers, Network):
        net = net_or_layers
        for leaf in jax.tree.leaves(net):
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
                if _is_concrete(leaf) and not np.all(np.isfinite(np.asarray(leaf))):
                    raise ValueError("the network's params contain NaN or inf; pass finite weights.")
    else:
        net = validate_layers(net_or_layers)
    in_shape = _input_shape(net)
    x_shape = tuple(np.shape(xs))
    k = len(in_shape)
    if isinstance(net, Network):
        want = f"[N, *{in_shape}] (the network's input shape)"
        one = f"{in_shape}"
    else:
        want, one = "2-D [N, d]", "1-D [d]"
    if batched:
        if len(x_shape) != k + 1:
            raise ValueError(
                f"xs must be {want}, got shape {x_shape}; for one point use "
                "local_bound(network, x, radius) or pass xs[None]."
            )
        if np.ndim(radii) > 1:
            raise ValueError(f"radii must be 1-D [R] (or a scalar), got shape {np.shape(radii)}.")
        got = x_shape[1:]
    else:
        if len(x_shape) != k:
            raise ValueError(f"x must be {one}, got shape {x_shape}; use local_bounds for batches.")
        if np.ndim(radii) != 0:
            raise ValueError(f"radius must be a scalar, got shape {np.shape(radii)}; use local_bounds.")
        got = x_shape
    if got != in_shape:
        if isinstance(net, Network):
            raise ValueError(f"points have shape {got} but the network was traced for inputs of shape {in_shape}.")
        raise ValueError(f"points have dimension {got[0]} but the first layer expects d = {in_shape[0]}.")
    check_finite("xs" if batched else "x", xs)
    check_radii(radii)
    if isinstance(net, Network):
        dtype = net.dtype  # the traced function computes in the dtype it was traced with
    else:
        dtype = compute_dtype()
        net = tuple((jnp.asarray(W, dtype), jnp.asarray(b, dtype)) for W, b in net)
    xs = jnp.asarray(xs, dtype)
    radii = jnp.asarray(radii, dtype)
    if batched:
        radii = jnp.atleast_1d(radii)
    return net, xs, radii


def checkify_inputs(xs: jax.Array, radii: jax.Array, net=None) -> None:
    """``checkify`` checks for NaN/inf points, weights and negative or non-finite radii.

    For ``validate=True`` under ``jax.experimental.checkify.checkify``: the
    checks run on traced values and surface through the returned error. The
    weights (``net``: ``layers`` or a Network) are checked too: inside a
    training step they are traced, and a diverged step's NaN weights would
    otherwise give normal-looking counts.
    """
    if net is not None:
        floats = [leaf for leaf in jax.tree.leaves(net) if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]
        if floats:
            finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in floats]))
            checkify.check(finite, "lr_jax: the network's params contain NaN or inf")
    checkify.check(jnp.all(jnp.isfinite(xs)), "lr_jax: xs contains NaN or inf")
    checkify.check(jnp.all(jnp.isfinite(radii)), "lr_jax: a radius is NaN or inf")
    checkify.check(jnp.all(radii >= 0), "lr_jax: a radius is negative")


# ---------------------------------------------------------------------------
# Batches: buckets, chunks, devices


def bucket(n: int) -> int:
    """The padded number of points: 1, 2, 4, 8, 16, then the next number with four significant bits.

    16, 18, 20, .., 32, 36, 40, .., 64, 72, ..: ``N`` and ``N + 1`` share a
    compiled kernel except at those steps, and beyond 16 padding costs at
    most 1/8 more work (``N >= 1``).
    """
    n = max(1, int(n))
    if n <= 16:
        return 1 << (n - 1).bit_length()
    shift = n.bit_length() - 4
    return ((n + (1 << shift) - 1) >> shift) << shift


def pad_rows(a: jax.Array, n: int) -> jax.Array:
    """``[N, ...] -> [n, ...]`` repeating the last row (zeros when ``N = 0``)."""
    extra = n - a.shape[0]
    if extra <= 0:
        return a
    fill = a[-1:] if a.shape[0] else jnp.zeros((1,) + a.shape[1:], a.dtype)
    return jnp.concatenate([a, jnp.broadcast_to(fill, (extra,) + a.shape[1:])], axis=0)


def _pad_to_chunks(a: jax.Array, chunk: int) -> jax.Array:
    """``[P, ...] -> [ceil(P / chunk), chunk, ...]``, padding with the last row."""
    return pad_rows(a, -(-a.shape[0] // chunk) * chunk).reshape((-1, chunk) + a.shape[1:])


def map_points_in_chunks(fn: Callable, xs, points_per_chunk: int):
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


POINTS_AXIS = "points"


def points_mesh(devices=None) -> jax.sharding.Mesh | None:
    """A 1-D mesh over ``devices`` whose axis shards the points; None for one device.

    With one device there is nothing to shard, and no ``shard_map`` is used:
    its outputs would carry a mesh sharding that a caller's next ``jit``
    (fed those outputs back) can trip over.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if len(devices) <= 1:
        return None
    return jax.sharding.Mesh(np.asarray(devices), (POINTS_AXIS,))


def shard_points(fn: Callable, xs, mesh):
    """``fn(xs)`` with the points (leading axis of every leaf) split over ``mesh``.

    Every device gets the same number of points (padding rows are dropped).
    One device (``mesh is None``): ``fn(xs)`` itself.
    """
    if mesh is None:
        return fn(xs)
    n = jax.tree.leaves(xs)[0].shape[0]
    per = -(-n // mesh.devices.size)
    xs = jax.tree.map(lambda a: pad_rows(a, per * mesh.devices.size), xs)
    spec = jax.sharding.PartitionSpec(POINTS_AXIS)
    out = jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(xs)
    return jax.tree.map(lambda a: a[:n], out)


# Per-chunk working set on CPU: a few [n_t, c, d] arrays that should stay in cache.
_CPU_CHUNK_BYTES = 8 * 2**20
# The same for a net with convolutional (multi-axis) layers: their per-pair state is mostly kept
# in receptive-field form, far below the [n_t, d] of the estimate, and many small operations per
# chunk are amortised over larger chunks. Measured on this project's four conv nets (both methods,
# 2-core CPU): 16-32 pairs per chunk fastest on the 14x14 nets, 4 on LeNet-5 and the Flax MNIST
# CNN, which this budget gives.
_CPU_CONV_CHUNK_BYTES = 128 * 2**20
# Elsewhere: a fraction of the device memory (whole memory when unknown: 16 GiB).
_DEVICE_MEMORY_FRACTION = 0.25
_LIVE_STATE_ARRAYS = 4


def default_chunk_size(net_or_layers, dtype=None, device=None) -> int:
    """Pairs per chunk, from the model's size and the device.

    A pair's state is the ``[n_t, d]`` matrices ``L`` of its layers plus a
    few temporaries of the widest. On CPU the chunk is sized to keep them in
    cache (``8 MiB``), which is also the fastest setting measured; for a
    Network with convolutional layers (any layer with more than one axis)
    ``128 MiB``, the fastest measured on conv nets; on accelerators it is a
    quarter of the device memory. Always a power of two, at least 1.
    """
    dtype = jnp.dtype(dtype or compute_dtype())
    device = device or jax.devices()[0]
    conv = False
    if isinstance(net_or_layers, Network):
        sizes = [math.prod(s) for s in net_or_layers.layer_shapes]
        d = math.prod(net_or_layers.input_shape)
        conv = any(len(s) > 1 for s in net_or_layers.layer_shapes)
    else:
        sizes = [np.shape(W)[1] for W, _ in net_or_layers[:-1]]
        d = np.shape(net_or_layers[0][0])[0]
    per_pair = _LIVE_STATE_ARRAYS * max(sizes) * d * dtype.itemsize
    if device.platform == "cpu":
        budget = _CPU_CONV_CHUNK_BYTES if conv else _CPU_CHUNK_BYTES
    else:
        stats = device.memory_stats() or {}
        budget = _DEVICE_MEMORY_FRACTION * stats.get("bytes_limit", 16 * 2**30)
    pairs = max(1, int(budget // per_pair))
    return 1 << (pairs.bit_length() - 1)


def concrete_int(name: str, value) -> int:
    """A static size argument as a Python int (>= 1)."""
    v = int(value)
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {value}.")
    return v
