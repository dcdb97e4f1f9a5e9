"""Backward bound propagation in receptive-field form, through convolutional layers.

The tight bound (:mod:`lr_jax.bounds.tight_bound`) bounds a neuron ``z_t[j]``
by moving a coefficient row from ``z_t`` back to the input through every map
in between. As a dense row, ``rows M_k`` costs a whole transposed convolution
of layer ``k`` per neuron, although the row is non-zero only on the neuron's
receptive field: a few positions of each earlier layer. This module keeps the
rows in that window (auto_LiRPA calls it "patches" mode).

**Windows.** Let layer ``t`` and every layer it reads, down to the input, be
*local*: their maps are translation-equivariant stencils (convolutions,
window sums, sums, per-feature scales: :meth:`lr_jax.networks.tracing._Graph.local`).
Then the coefficients of neuron ``j = (p, c)`` (position ``p`` on the spatial
axes, ``c`` on the others) on layer ``k`` vanish outside a box
``B_k(p) = start_k + D_k (p - p0)`` of fixed size, and the restriction of
``M_{s,k}`` to ``B_k(p) x B_s(p)`` is one matrix ``K_{s,k}`` for every ``p``
(the stencil), where positions outside a layer are read as zero padding.
Boxes, shifts ``D_k`` and the axes that move them are measured once, at
tracing, from the graph's structure: the support of a one-hot row moved back
through the ``"ones"`` structure of every map (every constant factor 1, so
nothing cancels), at a reference position ``p0`` and its neighbours; a plan is
made only when the boxes are interior at ``p0``, move affinely, and are at
most half of their layer.

**The pass.** A block of neurons of layer ``t`` starts from the rows of
``K_{s,t}`` for their features; at each earlier layer ``k`` the window of the
relaxation (slopes and offsets, zero outside the layer) is gathered at
``B_k(p)``, and the row moves on as ``rows K_{s,k}``; at the input the
window is masked to the input's extent. Every step is the one of the dense
pass restricted to the rows' support, so the bounds are the same numbers up
to floating-point summation order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.bounds.core import Model, matmul


class Window(NamedTuple):
    """A layer's box for the target's neurons (static Python ints).

    Attributes:
      start: first index of the box per axis of the layer, at the reference position.
      size: the box's extent per axis.
      shift: per spatial axis of the target, the box's move per axis of the
        layer for one step of the target's position.
      pad_lo: zeros before each axis so that every box lies inside.
      pad_hi: zeros after each axis.
    """

    start: tuple
    size: tuple
    shift: tuple
    pad_lo: tuple
    pad_hi: tuple


class Plan(NamedTuple):
    """How layer ``target``'s neurons are bounded in receptive-field form (static).

    Attributes:
      target: the layer (1-based).
      spatial: the target's axes along which the boxes move.
      p0: the reference position (on the spatial axes; 0 elsewhere).
      slab: the target's own box at ``p0``: 1 on spatial axes, whole on the others.
      layers: the ReLU layers the pass walks, ``target`` first, then decreasing.
      windows: ``{k: Window}`` for every earlier layer and the input (``0``).
    """

    target: int
    spatial: tuple
    p0: tuple
    slab: tuple
    layers: tuple
    windows: dict


def _reach(model: Model, t: int) -> list:
    """Every node (layers and the input ``0``) that layer ``t``'s map reads, directly or not."""
    seen, stack = set(), [t]
    while stack:
        for s in model.nodes[stack.pop() - 1].sources:
            if s not in seen:
                seen.add(s)
                if s:
                    stack.append(s)
    return sorted(seen, reverse=True)


def _support(model: Model, t: int, layers: tuple, rows: np.ndarray) -> dict:
    """Structural support of ``rows`` ``[m, *S_t]`` on every node below ``t``: ``{k: [m, *S_k]}``."""
    coef: dict = {}

    def push(k, c):
        for s, cs in model.nodes[k - 1].support_backward(c).items():
            coef[s] = coef[s] + cs if s in coef else cs

    push(t, rows)
    for k in layers[1:]:
        push(k, coef[k])
    return coef


def _boxes(support: np.ndarray):
    """Per row of ``[m, *S]``: (start, end) per axis of its non-zeros, or None when empty."""
    out = []
    for row in support:
        nz = np.argwhere(row > 0)
        out.append(None if nz.size == 0 else (tuple(nz.min(0)), tuple(nz.max(0))))
    return out


def plan_for(model: Model, t: int) -> Plan | None:
    """A receptive-field plan for layer ``t``, or None where it does not apply or would not pay.

    Runs at tracing on the graph's structure only (concrete, whatever the
    params); see the module docstring for the conditions.
    """
    if model.dense is not None:
        return None
    reach = _reach(model, t)
    layers = (t,) + tuple(k for k in reach if k)
    if not all(getattr(model.nodes[k - 1], "local", False) for k in layers):
        return None
    shape_t = tuple(model.nodes[t - 1].shape)
    shapes = {k: tuple(model.nodes[k - 1].shape) for k in layers}
    shapes[0] = tuple(model.input_shape)
    p0 = tuple(n // 2 for n in shape_t)
    probes = [p0]
    for a, n in enumerate(shape_t):
        if n > 1:
            probes.append(tuple(v - (i == a) for i, v in enumerate(p0)))
            if p0[a] + 1 < n:
                probes.append(tuple(v + (i == a) for i, v in enumerate(p0)))
    rows = np.zeros((len(probes),) + shape_t, np.float32)
    for i, p in enumerate(probes):
        rows[(i,) + p] = 1.0
    coef = _support(model, t, layers, rows)
    boxes = {k: _boxes(coef[k]) for k in reach}
    if any(b is None for k in reach for b in boxes[k]):
        return None
    shifts = {k: [] for k in reach}  # per target axis, the box move per axis of k
    for a, n in enumerate(shape_t):
        for k in reach:
            if n == 1:
                shifts[k].append((0,) * len(shapes[k]))
                continue
            centre = boxes[k][0]
            lower = boxes[k][probes.index(tuple(v - (i == a) for i, v in enumerate(p0)))]
            step = tuple(s1 - s0 for s1, s0 in zip(centre[0], lower[0]))
            if tuple(e1 - e0 for e1, e0 in zip(centre[1], lower[1])) != step:
                return None  # the box changed size: clipped by a border
            up = tuple(v + (i == a) for i, v in enumerate(p0))
            if up in probes:
                upper = boxes[k][probes.index(up)]
                if tuple(s1 - s0 for s1, s0 in zip(upper[0], centre[0])) != step:
                    return None
                if tuple(e1 - e0 for e1, e0 in zip(upper[1], centre[1])) != step:
                    return None
            shifts[k].append(step)
    spatial = tuple(a for a in range(len(shape_t)) if any(any(shifts[k][a]) for k in reach))
    if not spatial:
        return None
    slab = tuple(1 if a in spatial else n for a, n in enumerate(shape_t))
    slab_rows = np.zeros((1,) + shape_t, np.float32)
    slab_rows[(0,) + tuple(slice(p0[a], p0[a] + 1) if a in spatial else slice(None) for a in range(len(shape_t)))] = 1.0
    slab_cover = _support(model, t, layers, slab_rows)
    windows = {}
    for k in reach:
        start, end = _boxes(slab_cover[k])[0]
        size = tuple(e - s + 1 for s, e in zip(start, end))
        moving = [any(shifts[k][a][b] for a in spatial) for b in range(len(shapes[k]))]
        for b, n in enumerate(shapes[k]):
            if moving[b] and (start[b] <= 0 or end[b] >= n - 1):
                return None  # a box at the border at p0: its extent elsewhere is unknown
        if 2 * math.prod(size) > math.prod(shapes[k]):
            return None  # no smaller than half the layer: the dense rows are as cheap
        pad_lo, pad_hi = [], []
        for b, n in enumerate(shapes[k]):
            lo = start[b] + sum(min(-p0[a] * shifts[k][a][b], (shape_t[a] - 1 - p0[a]) * shifts[k][a][b]) for a in spatial)
            hi = start[b] + sum(max(-p0[a] * shifts[k][a][b], (shape_t[a] - 1 - p0[a]) * shifts[k][a][b]) for a in spatial)
            pad_lo.append(max(0, -lo))
            pad_hi.append(max(0, hi + size[b] - n))
        windows[k] = Window(start, size, tuple(shifts[k][a] for a in spatial), tuple(pad_lo), tuple(pad_hi))
    p0 = tuple(p0[a] if a in spatial else 0 for a in range(len(shape_t)))
    return Plan(t, spatial, p0, slab, layers, windows)


def _place(basis: jax.Array, start: tuple, shape: tuple) -> jax.Array:
    """``[m, *box] -> [m, *shape]``: the box's rows put at ``start``, zeros elsewhere."""
    widths = [(0, 0)] + [(s, n - s - b) for s, b, n in zip(start, basis.shape[1:], shape)]
    return jnp.pad(basis, widths)


def _crop(a: jax.Array, start: tuple, size: tuple) -> jax.Array:
    """``[m, *shape] -> [m, prod(size)]``: the box at ``start``."""
    index = (slice(None),) + tuple(slice(s, s + b) for s, b in zip(start, size))
    return a[index].reshape(a.shape[0], -1)


def stencils(model: Model, plan: Plan) -> dict:
    """``K_{s,k}`` ``[|B_k|, |B_s|]`` for every map the plan walks (traced: from the params).

    The exact restriction of ``M_{s,k}`` to the boxes at the reference
    position, taken from the map itself: through its transpose from the
    ``|B_k|`` one-hot rows of layer ``k``'s box, or through the map from the
    ``|B_s|`` one-hots of the source's box, whichever is fewer.
    """
    t = plan.target
    shape_t = tuple(model.nodes[t - 1].shape)
    boxes = {t: (plan.p0, plan.slab)}
    boxes.update({k: (w.start, w.size) for k, w in plan.windows.items()})
    dtype = model.dtype
    out = {}
    for k in plan.layers:
        node = model.nodes[k - 1]
        shape_k = shape_t if k == t else tuple(node.shape)
        start_k, size_k = boxes[k]
        mk = math.prod(size_k)
        for s in node.sources:
            start_s, size_s = boxes[s]
            shape_s = tuple(model.input_shape) if s == 0 else tuple(model.nodes[s - 1].shape)
            ms = math.prod(size_s)
            if mk <= ms:
                rows = _place(jnp.eye(mk, dtype=dtype).reshape((mk,) + size_k), start_k, shape_k)
                out[(s, k)] = _crop(node.backward(rows)[s], start_s, size_s)
            else:
                basis = _place(jnp.eye(ms, dtype=dtype).reshape((ms,) + size_s), start_s, shape_s)
                cols = jax.vmap(lambda e: node.linear({s: e}))(basis)
                out[(s, k)] = _crop(cols, start_k, size_k).T
    return out


def pad_layer(a: jax.Array, window: Window) -> jax.Array:
    """``[*S_k, F] -> [*padded, F]``: zeros around the layer, so every box can be sliced."""
    return jnp.pad(a, list(zip(window.pad_lo, window.pad_hi)) + [(0, 0)])


def _gather(padded: jax.Array, starts: jax.Array, window: Window) -> jax.Array:
    """``[B, rank] starts -> [B, |box|, F]`` windows of a padded ``[*S, F]`` array."""
    f = padded.shape[-1]

    def one(st):
        return jax.lax.dynamic_slice(padded, tuple(st) + (jnp.zeros((), st.dtype),), window.size + (f,)).reshape(-1, f)

    return jax.vmap(one)(starts)


def box_starts(window: Window, plan: Plan, pos: tuple, xp=jnp):
    """Box starts (in padded coordinates) for target positions ``pos``, ``[B, rank]``.

    ``pos``: one ``[B]`` index array per axis of the target layer (only its
    spatial axes are read; the others may be None). ``xp``: ``jax.numpy`` for traced positions (the
    tight bound's neuron indices), ``numpy`` for static geometry
    (:mod:`lr_jax.bounds.algorithm1`'s receptive-field form).
    """
    shape = next(p for p in pos if p is not None).shape
    cols = []
    for b in range(len(window.start)):
        v = window.start[b] + window.pad_lo[b]
        for i, a in enumerate(plan.spatial):
            v = v + (pos[a] - plan.p0[a]) * window.shift[i][b]
        cols.append(xp.broadcast_to(xp.asarray(v, xp.int32), shape))
    return xp.stack(cols, axis=-1)


def _row_sums(a: jax.Array) -> jax.Array:
    """``sum_j a[..., j]``, as a product with a vector of ones.

    The same sum in another order; XLA's CPU runs this reduction of many
    short rows (the window of each neuron's coefficient row) several times
    slower than the matrix-vector product (measured in the tight bound's
    pass on the conv + BatchNorm net).
    """
    return matmul(a, jnp.ones(a.shape[-1:], a.dtype))


def _row_norms(a: jax.Array) -> jax.Array:
    """``||a[..., :]||_2`` by :func:`_row_sums`, with a finite gradient at 0 (as ``core.safe_norm``)."""
    sq = _row_sums(a * a)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def relax_rows(c: jax.Array, lower_slope, upper_slope, upper_offset):
    """Coefficient rows on ``relu(z_k)`` moved onto ``z_k`` through CROWN's relaxation.

    A lower bound of ``c * relu(z)`` takes the lower relaxation where
    ``c >= 0`` and the upper one (with its offset) where ``c < 0``.

    Returns:
      ``(rows on z_k, constant [...])``: the constant is summed over the last axis.
    """
    positive = c >= 0
    const = jnp.sum(jnp.where(positive, 0.0, c * upper_offset), axis=-1)
    return jnp.where(positive, c * lower_slope, c * upper_slope), const


def one_sided(lower: jax.Array, side: jax.Array):
    """``(lo, hi)`` from the lower bounds of ``side * z``: one side bounded, the other infinite."""
    inf = jnp.asarray(jnp.inf, lower.dtype)
    return jnp.where(side > 0, lower, -inf), jnp.where(side < 0, -lower, inf)


def block_bounds(model: Model, plan: Plan, kmaps: dict, padded: dict, offset_t: jax.Array, radius, idx: jax.Array,
                 side: jax.Array | None = None):
    """Lower and upper bounds of the neurons ``idx`` ``[B]`` (flat) of layer ``plan.target``.

    Args:
      model: the network.
      plan: from :func:`plan_for`.
      kmaps: from :func:`stencils`.
      padded: ``{k: [*S_k padded, 4]}``: lower slope ``l``, upper slope
        ``s``, and the constants ``l c_k`` and ``s c_k + u`` (``c_k`` the
        map's constant, ``u`` the upper offset of the relaxation) that a
        unit coefficient of either sign adds, zero outside the layer;
        ``{0: [*input padded, 2]}``: the centre ``x`` and 1 inside the input.
      offset_t: ``[n_t]`` the target map's constant.
      radius: scalar.
      idx: ``[B]`` int.
      side: None for both bounds; else ``[B]`` of +1 / -1, only the lower
        (+1) or upper (-1) bound of each neuron (the other infinite).

    Returns:
      ``([B], [B])``: the lower and upper bounds, as the dense pass of
      :func:`lr_jax.bounds.tight_bound._backward_bounds` gives them.
    """
    t = plan.target
    shape_t = tuple(model.nodes[t - 1].shape)
    pos = jnp.unravel_index(idx, shape_t)
    feature = jnp.ravel_multi_index(
        tuple(jnp.zeros_like(pos[a]) if a in plan.spatial else pos[a] for a in range(len(shape_t))),
        plan.slab, mode="clip",
    )
    # Axis 0: the row of +z_j (its lower bound) and of -z_j (minus its upper bound), or one row
    # side_j z_j; the windows gathered once per neuron serve both.
    if side is None:
        sign = jnp.asarray([1.0, -1.0], offset_t.dtype)[:, None, None]
    else:
        sign = side.astype(offset_t.dtype)[None, :, None]
    coef: dict = {}
    for s in model.nodes[t - 1].sources:
        coef[s] = sign * kmaps[(s, t)][feature][None]
    const = sign[:, :, 0] * offset_t[idx][None]
    for k in plan.layers[1:]:
        c = coef.pop(k)  # [2, B, |B_k|]
        w = _gather(padded[k], box_starts(plan.windows[k], plan, pos), plan.windows[k])[None]
        # Relaxed, a coefficient c on relu(z_k) becomes c s on z_k and adds c s c_k (+ c u for c < 0:
        # the upper offset) to the constant: one product with the window's column for c's sign.
        positive = c >= 0
        const = const + _row_sums(c * jnp.where(positive, w[..., 2], w[..., 3]))
        c = jnp.where(positive, c * w[..., 0], c * w[..., 1])
        for s in model.nodes[k - 1].sources:
            moved = matmul(c, kmaps[(s, k)])
            coef[s] = coef[s] + moved if s in coef else moved
    w0 = _gather(padded[0], box_starts(plan.windows[0], plan, pos), plan.windows[0])[None]
    c0 = coef[0] * w0[..., 1]  # positions past the input's border are padding, not directions
    lower = _row_sums(c0 * w0[..., 0]) + const - radius * _row_norms(c0)
    if side is not None:
        return one_sided(lower[0], side)
    return lower[0], -lower[1]
