"""Algorithm 1 of Zhu, Lin & Tang: an upper bound on the linear regions meeting a ball.

For a ReLU network and the closed L2 ball ``B_r(x)``, the paper carries, for
every hidden neuron ``j``, three quantities (section 4, "Algorithm 1 Induction
of one layer"):

* ``P_j`` (``changed``): 0 when the neuron is the same affine function of the
  input on the whole ball, with linear map ``L_j`` (condition P(k, r));
* ``S_j`` (``unstable``): 0 when the pre-activation keeps its sign on the whole
  ball (condition S(k, r));
* ``U_j`` (``deviation``): ``|X'_j - X_j| <= U_j`` for every ``x'`` in the ball
  (condition U(k, r)).

One layer step (the pseudocode, with ``M = W`` and ``A_j`` the centre's
pre-activation, eq. (3))::

    L    = sum_{i: P_i = 0} M_ij L_i          # a vector in R^d
    Usum = sum_{i: P_i = 1} |M_ij| U_i
    U_j  = r ||L||_2 + Usum                  # Lemma 1 bounds |A'_j - A_j| by this
    A_j <  0: dead (P=S=0, U=0, L_j=0)  if U_j + A_j < 0,  else P=S=1, U_j += A_j
    A_j >= 0: P=S=0 (L_j = L)  if U_j < A_j and Usum == 0
              P=1, S=0         if U_j < A_j and Usum != 0
              P=S=1            otherwise

The input starts the induction with ``L = I`` and ``P = 0``. Remark 2: with
``C`` the number of hidden neurons with ``S = 1``, at most ``2^C`` open linear
regions meet ``B_r(x)``. The output map is affine and is not counted.

**Graphs (several sources per layer).** For a network whose ReLU layer ``t``
reads several earlier layers (residual connections, skips from the input),
``z_t = sum_src M_{src,t}^T h_src + c_t`` (:mod:`lr_jax.bounds.core`), the
step sums over every source::

    L_j    = sum_src sum_{i in src: P_i = 0} M_src[i, j] L_i
    Usum_j = sum_src sum_{i in src: P_i = 1} |M_src[i, j]| U_i
    U_j    = r ||L_j|| + Usum_j,  then the same branch on A_j.

*Lemma 1 for several sources.* If every source neuron satisfies P, S and U
(by induction; the input trivially: ``h_0(x') - h_0(x) = I (x' - x)``), then
for ``x'`` in the ball
``z_j(x') - z_j(x) = sum_src sum_i M_src[i, j] (h_i(x') - h_i(x))``; the
terms with ``P_i = 0`` sum to ``L_j . (x' - x)`` exactly, the others are at
most ``|M_src[i, j]| U_i`` in size, so
``|z_j(x') - z_j(x)| <= r ||L_j|| + Usum_j = U_j`` (Cauchy-Schwarz). The
branch on ``A_j`` then establishes P, S and U for neuron ``j`` exactly as in
the paper's proof (with ``Usum_j = 0`` every term is exact, so ``z_j`` is
the affine function ``A_j + L_j . (x' - x)`` on the ball). With one source per
layer this is Algorithm 1 itself, and on a layered network it gives exactly
what Algorithm 1 gives on the same network written as dense matrices (the
composite ``M`` between two ReLU layers is what the paper calls ``M^k``).

Implementation: the centre's forward pass runs once per point and is shared
by every radius. For a chain of Dense layers (``layers``, or a traced MLP)
the pairs ride on axis 1 of every per-neuron array (``[n, P]``, ``[n, P, d]``),
so each layer's product ``W^T L`` is one large matmul across the batch, and a
run of equal-shaped hidden layers is one ``jax.lax.scan``; layers are never
padded to a common width. For other graphs each map is applied as it is (a
conv to the ``d`` directions of ``L``), ``vmap``-ed over pairs, and
``|M|^T U`` uses the map's structure (:mod:`lr_jax.networks.tracing`). On
conv nets the first layers stay in receptive-field form
(:func:`window_maps`): a conv layer reading only the input gets its column
norms from its stencil, and a conv layer reading such layers builds
``L_j`` on its input box ``B_0(p)`` by one matmul with the stencils of
:mod:`lr_jax.bounds.receptive_fields`, so the first layers' ``[d, *shape]``
arrays (on LeNet-5 ``[784, 24, 24, 6]`` per pair, masked, pooled and
convolved in three unfused passes) are never formed.

Precision: every product is pinned to ``Precision.HIGHEST`` (full float32 on
GPUs rather than TF32). In float32 a certificate is exact for the rounded
arithmetic; a neuron whose margin ``|A_j| - U_j`` is within a few ulps of
``|A_j| + U_j`` (its hyperplane within about ``1e-6`` relative of the ball's
surface) may be classified either way. Enable ``jax_enable_x64`` to compute in
float64 when such near-boundary cases matter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lr_jax.bounds import receptive_fields
from lr_jax.bounds.core import Model, count_unstable, forward, matmul, safe_norm


class LayerResult(NamedTuple):
    """Algorithm 1's masks for one ReLU layer, ``[..., *shape_t]``."""

    unstable: jax.Array  # S
    changed: jax.Array  # P
    deviation: jax.Array  # U


def neuron_update(a, lin_norm, dev_sum, radius):
    """The per-neuron branch of Algorithm 1 after ``L`` and ``Usum`` are summed.

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


# ---------------------------------------------------------------------------
# Dense chains: pairs on axis 1, runs of equal layers scanned


class _LayerState(NamedTuple):
    linear: jax.Array  # [n, d]: L_j for P_j = 0 neurons that are alive, else 0
    changed: jax.Array  # [n] bool, P
    deviation: jax.Array  # [n], U


def _hidden_step(radius, state: _LayerState, layer):
    """Algorithm 1 from one Dense layer to the next (the scan body)."""
    W, a = layer
    lin = matmul(W.T, state.linear)  # sum_{P_i=0} W_ij L_i
    moving = jnp.where(state.changed, state.deviation, 0.0)
    dev_sum = matmul(jnp.abs(W).T, moving)  # sum_{P_i=1} |W_ij| U_i
    unstable, changed, deviation, linear = neuron_update(a, safe_norm(lin), dev_sum, radius)
    new_state = _LayerState(jnp.where(linear[:, None], lin, 0.0), changed, deviation)
    return new_state, LayerResult(unstable, changed, deviation)


def _first_layer(W1, norms, a1, radius):
    """Input -> layer 1: ``L = I`` and ``P = 0``, so ``L_j = W_{:, j}`` and ``Usum = 0`` exactly."""
    unstable, changed, deviation, linear = neuron_update(a1, norms, jnp.zeros_like(norms), radius)
    state = _LayerState(jnp.where(linear[:, None], W1.T, 0.0), changed, deviation)
    return state, LayerResult(unstable, changed, deviation)


_STATE_AXES = _LayerState(linear=1, changed=1, deviation=1)


def _runs(dense) -> list:
    """Indices of layers 2..H grouped into runs of equal square kernels (scanned together)."""
    runs = []
    for i in range(1, len(dense)):
        shape = dense[i][0].shape
        if runs and shape[0] == shape[1] and dense[runs[-1][-1]][0].shape == shape:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def dense_pairs(dense, preacts: list, radii: jax.Array) -> list:
    """Algorithm 1 for ``P`` (centre, radius) pairs of a Dense chain.

    Args:
      dense: hidden ``(W [n_{t-1}, n_t], b)`` pairs.
      preacts: per layer ``[P, n_t]`` centre pre-activations of each pair.
      radii: ``[P]``.

    Returns:
      One :class:`LayerResult` per layer, fields ``[P, n_t]``.
    """
    W1 = dense[0][0]
    first_fn = jax.vmap(_first_layer, in_axes=(None, None, 1, 0), out_axes=(_STATE_AXES, 1))
    state, first = first_fn(W1, safe_norm(W1, axis=0), preacts[0].T, radii)
    outs = [first]
    step = jax.vmap(_hidden_step, in_axes=(0, _STATE_AXES, (None, 1)), out_axes=(_STATE_AXES, 1))
    for run in _runs(dense):
        if len(run) == 1:
            i = run[0]
            state, out = step(radii, state, (dense[i][0], preacts[i].T))
            outs.append(out)
            continue
        kernels = jnp.stack([dense[i][0] for i in run])
        centre = jnp.stack([preacts[i].T for i in run])
        state, out = jax.lax.scan(lambda s, layer: step(radii, s, layer), state, (kernels, centre))
        outs.extend(jax.tree.map(lambda a, k=k: a[k], out) for k in range(len(run)))
    return [jax.tree.map(lambda a: a.T, o) for o in outs]  # [n, P] -> [P, n]


# ---------------------------------------------------------------------------
# Graphs: one pair at a time, vmapped


def input_maps(model: Model, boxes: bool = True) -> dict:
    """``M_{0,t}^T I`` ``[d, *shape_t]`` and its column norms, per layer reading the input.

    Constant for a network: computed once per call, outside the pairs. With
    ``boxes``, the norms of a conv layer reading only the input come from its
    stencil (:func:`_input_norms`), so that the dense map, when no layer
    reads it densely (see :func:`window_maps`), is never computed under jit.
    """
    if model.dense is not None:
        return {}
    d = model.d
    eye = jnp.eye(d, dtype=model.dtype).reshape((d,) + model.input_shape)
    out = {}
    for t, node in enumerate(model.nodes, start=1):
        if 0 in node.sources:
            m = node.linear_d({0: eye})
            norms = _input_norms(model, t) if boxes else None
            out[t] = (m, safe_norm(m, axis=0) if norms is None else norms)
    return out


# Boxes are cut and placed by one static slice and pad per target position: a cap on the program's size.
_MAX_WINDOW_POSITIONS = 4096


class WindowMap(NamedTuple):
    """How layer ``t``'s ``L`` is built in receptive-field form (see :func:`window_maps`); static but the stencils.

    Attributes:
      stencils: ``{s: (K_{s,t} [F, |B_s|], K_{0,s} [|B_s|, |B_0|])}`` per source.
      boxes: ``{s: (Window, starts [n_pos, rank_s])}``: where each target
        position's box of layer ``s`` starts, in the layer padded by the window.
      box: the input box's size ``B_0``.
      place: ``[n_pos, rank_0]`` where each position's input box starts in the
        input (negative or past the end where the box crosses the border).
      layout: ``(sizes, perm)``: ``[d, *sizes] -> [d, *shape_t]`` by ``perm``
        (``sizes``: the target's spatial axes, then the others).
      inside: ``[|B_0|, n_pos, 1]``, 1 where a box element lies inside the
        input, 0 past its border (None when every box lies inside).
    """

    stencils: dict
    boxes: dict
    box: tuple
    place: np.ndarray
    layout: tuple
    inside: np.ndarray | None


def _geometry(model: Model, t: int, plan):
    """Static box geometry of layer ``t``'s plan, for :class:`WindowMap`.

    Returns:
      ``(starts, place, layout, inside)``: ``starts(window)`` ``[n_pos, rank]``
      the box starts of every target position (C order over the spatial
      axes) in the layer padded by ``window``; ``place`` the input box's
      starts in the unpadded input; ``layout`` as in :class:`WindowMap`;
      ``inside`` ``[|B_0|, n_pos]`` bool, the input box elements inside the input.
    """
    shape_t = tuple(model.nodes[t - 1].shape)
    sizes = tuple(shape_t[a] for a in plan.spatial)
    grid = np.indices(sizes).reshape(len(sizes), -1)
    pos = [None] * len(shape_t)  # one index array per axis; only the spatial ones are read
    for i, a in enumerate(plan.spatial):
        pos[a] = grid[i]

    def starts(window):  # static (NumPy), whatever the caller traces
        return receptive_fields.box_starts(window, plan, pos, xp=np).astype(np.int64)  # static sizes: Python-wide ints

    window0 = plan.windows[0]
    place = starts(window0) - np.asarray(window0.pad_lo)
    order = list(plan.spatial) + [a for a in range(len(shape_t)) if a not in plan.spatial]
    perm = (0,) + tuple(1 + order.index(a) for a in range(len(shape_t)))
    layout = (sizes + tuple(shape_t[a] for a in order[len(sizes):]), perm)
    element = np.indices(window0.size).reshape(len(window0.size), -1)  # [rank_0, |B_0|]
    at = place.T[:, None, :] + element[:, :, None]  # [rank_0, |B_0|, n_pos]
    inside = np.all((at >= 0) & (at < np.asarray(model.input_shape)[:, None, None]), axis=0)
    return starts, place, layout, inside


def _input_norms(model: Model, t: int) -> jax.Array | None:
    """``||M_{0,t}[:, j]||`` ``[*shape_t]`` from the stencil, for a layer reading only the input; or None.

    Column ``j = (p, f)`` of the input map is non-zero only on the input box
    ``B_0(p)``, where it is row ``f`` of the stencil ``K_{0,t}`` ``[F, |B_0|]``
    (box elements past the input's border are padding, not directions), so
    ``||M_{0,t}[:, j]||^2 = sum_w inside[w, p] K_{0,t}[f, w]^2``: a
    ``[n_pos, |B_0|] x [|B_0|, F]`` product instead of the map applied to the
    ``d`` directions of the identity (on LeNet-5 a ``[784, 24, 24, 6]``
    array each call). The same terms as the dense norm, in another order.
    """
    node = model.nodes[t - 1]
    if tuple(node.sources) != (0,):
        return None
    plan = receptive_fields.plan_for(model, t)
    if plan is None or math.prod(node.shape[a] for a in plan.spatial) > _MAX_WINDOW_POSITIONS:
        return None
    k = receptive_fields.stencils(model, plan)[(0, t)]
    _, _, layout, inside = _geometry(model, t, plan)
    sq = matmul(jnp.asarray(inside.T, k.dtype), (k * k).T)  # [n_pos, F]
    positive = sq > 0
    norms = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
    sizes, perm = layout
    return jnp.transpose(norms.reshape(sizes), tuple(q - 1 for q in perm[1:]))


def _window_map(model: Model, t: int) -> WindowMap | None:
    """A :class:`WindowMap` for layer ``t``, or None when its ``L`` is built as a dense map.

    It applies when every ReLU layer ``s`` that ``t`` reads reads only the
    input (so ``L_s = diag(linear_s) M_{0,s}``, a constant masked per neuron)
    and :func:`lr_jax.bounds.receptive_fields.plan_for` finds boxes for ``t``.
    """
    node = model.nodes[t - 1]
    relu_sources = [s for s in node.sources if s != 0]
    if not relu_sources or any(tuple(model.nodes[s - 1].sources) != (0,) for s in relu_sources):
        return None
    plan = receptive_fields.plan_for(model, t)
    if plan is None or math.prod(node.shape[a] for a in plan.spatial) > _MAX_WINDOW_POSITIONS:
        return None
    kmaps = receptive_fields.stencils(model, plan)
    starts, place, layout, inside = _geometry(model, t, plan)
    boxes = {s: (plan.windows[s], starts(plan.windows[s])) for s in relu_sources}
    stencils = {s: (kmaps[(s, t)], kmaps[(0, s)]) for s in relu_sources}
    inside = None if inside.all() else jnp.asarray(inside[..., None], model.dtype)
    return WindowMap(stencils, boxes, tuple(plan.windows[0].size), place, layout, inside)


def window_maps(model: Model) -> dict:
    """``{t: WindowMap}`` for the layers whose ``L`` is built in receptive-field form.

    For such a layer ``t`` (a conv layer reading first layers, e.g. LeNet's
    second conv), with ``B_s(p)``, ``B_0(p)`` the boxes of layer ``s`` and of
    the input that target position ``p`` reads, and ``K`` the stencils of
    :func:`lr_jax.bounds.receptive_fields.stencils`::

        L_t[B_0(p), (p, f)] = sum_s K_{s,t}[f, :] diag(linear_s[B_s(p)]) K_{0,s}

    since ``L_s = diag(linear_s) M_{0,s}`` and both maps restricted to the
    boxes are the stencils (positions outside a layer read as zeros, masked
    by the zero padding of ``linear_s``). It is one matmul of
    ``[n_pos F, |B_s|] x [|B_s|, |B_0|]`` per source, and the rows are then
    placed at their boxes in ``[d, *shape_t]`` by one-hot products (exact:
    each output is one product by 1), which drops the box entries past the
    input's border (padding, not directions). The dense path instead writes
    ``L_s`` ``[d, *shape_s]``, masks it, and runs ``M_{s,t}`` over all ``d``
    directions: three passes over the largest array of the recursion, which
    XLA-CPU does not fuse. The sums are the same terms in another order.

    Constant for a network: built once per call, outside the pairs.
    """
    if model.dense is not None:
        return {}
    out = {}
    for t in range(1, len(model.nodes) + 1):
        wmap = _window_map(model, t)
        if wmap is not None:
            out[t] = wmap
    return out


def _window_cols(wmap: WindowMap, linear: dict) -> jax.Array:
    """``L_t`` restricted to each neuron's input box, ``[|B_0|, n_pos, F]`` (see :func:`window_maps`)."""
    cols = None
    for s, (k_st, k_0s) in wmap.stencils.items():
        window, starts = wmap.boxes[s]
        keep = receptive_fields.pad_layer(linear[s][..., None].astype(k_st.dtype), window)[..., 0]
        # Static slices (XLA-CPU runs a gather of these small boxes several times slower).
        mask = jnp.stack([jax.lax.slice(keep, tuple(st), tuple(st + np.asarray(window.size))).reshape(-1)
                          for st in starts], axis=-1)  # [|B_s|, n_pos]: linear_s on each position's box
        coef = k_st.T[:, None, :] * mask[:, :, None]  # [|B_s|, n_pos, F]
        # K_{0,s}^T coef: the directions lead, as in the dense path's L; both operands row-major.
        part = matmul(k_0s.T, coef.reshape(coef.shape[0], -1))  # [|B_0|, n_pos F]
        cols = part if cols is None else cols + part
    return cols.reshape(cols.shape[0], len(wmap.place), -1)


def _to_layer(wmap: WindowMap, a: jax.Array) -> jax.Array:
    """``[..., n_pos, F] -> [..., *shape_t]``."""
    sizes, perm = wmap.layout
    lead = a.ndim - 2
    a = a.reshape(a.shape[:lead] + sizes)
    return jnp.transpose(a, tuple(range(lead)) + tuple(lead - 1 + q for q in perm[1:]))


def _from_layer(wmap: WindowMap, a: jax.Array) -> jax.Array:
    """``[*shape_t] -> [n_pos, F]``, the inverse of :func:`_to_layer`."""
    sizes, perm = wmap.layout
    inverse = np.argsort(np.asarray(perm[1:]) - 1)
    return jnp.transpose(a, tuple(int(q) for q in inverse)).reshape(len(wmap.place), -1)


def _window_norms(wmap: WindowMap, cols: jax.Array) -> jax.Array:
    """``||L_j||`` ``[*shape_t]`` from the boxes; box entries past the input's border are not directions."""
    if wmap.inside is not None:
        cols = cols * wmap.inside
    return _to_layer(wmap, safe_norm(cols, axis=0))


def _place(wmap: WindowMap, cols: jax.Array, input_shape: tuple) -> jax.Array:
    """``[|B_0|, n_pos, F] -> [d, *shape_t]``: each position's box put at its place in the input.

    One static pad per position; negative pads crop what crosses the border.
    """
    cols = cols.reshape(wmap.box + cols.shape[1:])
    zero = jnp.zeros((), cols.dtype)
    placed = []
    for p, st in enumerate(wmap.place):
        config = [(int(lo), int(n - lo - w), 0) for lo, w, n in zip(st, wmap.box, input_shape)] + [(0, 0, 0)]
        placed.append(jax.lax.pad(cols[..., p, :], zero, config))
    x = jnp.stack(placed, axis=-2)  # [*input, n_pos, F]
    return _to_layer(wmap, x.reshape((-1,) + x.shape[-2:]))


def graph_pair(model: Model, lin_in: dict, preacts: list, radius, windows: dict | None = None) -> list:
    """Algorithm 1 with the multi-source step, for one centre and one radius.

    Args:
      model: a graph model (``model.dense is None``).
      lin_in: from :func:`input_maps`.
      preacts: per layer ``[*shape_t]`` centre pre-activations.
      radius: scalar.
      windows: from :func:`window_maps` (None: every ``L`` as a dense map).
        The layers listed there build ``L`` in receptive-field form: the same
        sums in another order.

    Returns:
      One :class:`LayerResult` per layer, fields ``[*shape_t]``.
    """
    windows = windows or {}
    L, P, U, alive, outs = {}, {}, {}, {}, []
    for t, node in enumerate(model.nodes, start=1):
        relu_sources = [s for s in node.sources if s != 0]
        lin, norm = lin_in.get(t, (None, None))
        dev_sum = jnp.zeros(node.shape, preacts[t - 1].dtype)
        cols = None  # L_t on its input boxes, [|B_0|, n_pos, F], for a windowed layer
        if relu_sources:
            if t in windows:
                cols = _window_cols(windows[t], alive)
                if lin is None:
                    norm = _window_norms(windows[t], cols)  # the boxes hold every non-zero of L_j
                else:  # it also reads the input: L_j summed densely
                    lin, cols = lin + _place(windows[t], cols, tuple(model.input_shape)), None
                    norm = safe_norm(lin, axis=0)
            else:
                part = node.linear_d({s: L[s] for s in relu_sources})  # [d, *shape_t]
                lin = part if lin is None else lin + part
                norm = safe_norm(lin, axis=0)
            dev_sum = node.abs_linear({s: jnp.where(P[s], U[s], 0.0) for s in relu_sources})
        unstable, changed, deviation, linear = neuron_update(preacts[t - 1], norm, dev_sum, radius)
        if cols is not None:
            # Masked in the boxes, then placed: one pass over the dense L_t instead of two.
            kept = cols * _from_layer(windows[t], linear).astype(cols.dtype)[None]
            L[t] = _place(windows[t], kept, tuple(model.input_shape))
        else:
            # A layer read only in receptive-field form never needs this dense L: jit drops it.
            L[t] = jnp.where(linear[None], lin, 0.0)
        alive[t] = linear
        P[t], U[t] = changed, deviation
        outs.append(LayerResult(unstable, changed, deviation))
    return outs


# ---------------------------------------------------------------------------
# The method's entry points


def pair_results(model: Model, lin_in: dict, preacts: list, radius, windows: dict | None = None) -> list:
    """Per-layer :class:`LayerResult` for one centre (its pre-activations) and one radius.

    ``windows``: from :func:`window_maps`, for graph models (see :func:`graph_pair`).
    """
    if model.dense is not None:
        out = dense_pairs(model.dense, [a[None] for a in preacts], jnp.reshape(radius, (1,)))
        return [jax.tree.map(lambda a: a[0], o) for o in out]
    return graph_pair(model, lin_in, preacts, radius, windows)


def points_results(model: Model, xs: jax.Array, radii: jax.Array) -> tuple[list, list]:
    """Algorithm 1 for ``[c]`` points x ``[R]`` radii; the centre's pass is shared by its radii.

    Returns:
      ``(preacts, results)``: per layer ``[c, *shape_t]`` pre-activations and
      :class:`LayerResult` with fields ``[c, R, *shape_t]``.
    """
    c, r = xs.shape[0], radii.shape[0]
    xs = xs.reshape((c,) + model.input_shape)
    preacts = jax.vmap(lambda x: forward(model, x))(xs)
    if model.dense is not None:
        pairs = dense_pairs(model.dense, [jnp.repeat(a, r, axis=0) for a in preacts], jnp.tile(radii, c))
    else:
        lin_in, windows = input_maps(model), window_maps(model)
        per_radius = jax.vmap(lambda p, rad: graph_pair(model, lin_in, p, rad, windows), in_axes=(None, 0))
        per_point = jax.vmap(per_radius, in_axes=(0, None))
        return preacts, per_point(preacts, radii)
    return preacts, [jax.tree.map(lambda a: a.reshape((c, r) + a.shape[1:]), o) for o in pairs]


def paper_points(model: Model, xs: jax.Array, radii: jax.Array):
    """``(num_unstable [c, R], log2_bound [c, R], per-layer results)`` of Algorithm 1."""
    _, results = points_results(model, xs, radii)
    c = count_unstable([o.unstable for o in results], lead=2)
    return c, c.astype(xs.dtype), results


def single_pair_count(model: Model, lin_in: dict, preacts: list, radius, windows: dict | None = None) -> jax.Array:
    """``C`` for one centre and radius (scalar int32); ``windows`` as in :func:`pair_results`."""
    return count_unstable([o.unstable for o in pair_results(model, lin_in, preacts, radius, windows)])

