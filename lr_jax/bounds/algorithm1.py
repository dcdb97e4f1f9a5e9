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
``|M|^T U`` uses the map's structure (:mod:`lr_jax.networks.tracing`).

Precision: every product is pinned to ``Precision.HIGHEST`` (full float32 on
GPUs rather than TF32). In float32 a certificate is exact for the rounded
arithmetic; a neuron whose margin ``|A_j| - U_j`` is within a few ulps of
``|A_j| + U_j`` (its hyperplane within about ``1e-6`` relative of the ball's
surface) may be classified either way. Enable ``jax_enable_x64`` to compute in
float64 when such near-boundary cases matter.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

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


def input_maps(model: Model) -> dict:
    """``M_{0,t}^T I`` ``[d, *shape_t]`` and its column norms, per layer reading the input.

    Constant for a network: computed once per call, outside the pairs.
    """
    if model.dense is not None:
        return {}
    d = model.d
    eye = jnp.eye(d, dtype=model.dtype).reshape((d,) + model.input_shape)
    maps = {t: node.linear_d({0: eye}) for t, node in enumerate(model.nodes, start=1) if 0 in node.sources}
    return {t: (m, safe_norm(m, axis=0)) for t, m in maps.items()}


def graph_pair(model: Model, lin_in: dict, preacts: list, radius) -> list:
    """Algorithm 1 with the multi-source step, for one centre and one radius.

    Args:
      model: a graph model (``model.dense is None``).
      lin_in: from :func:`input_maps`.
      preacts: per layer ``[*shape_t]`` centre pre-activations.
      radius: scalar.

    Returns:
      One :class:`LayerResult` per layer, fields ``[*shape_t]``.
    """
    L, P, U, outs = {}, {}, {}, []
    for t, node in enumerate(model.nodes, start=1):
        relu_sources = [s for s in node.sources if s != 0]
        lin, norm = lin_in.get(t, (None, None))
        dev_sum = jnp.zeros(node.shape, preacts[t - 1].dtype)
        if relu_sources:
            part = node.linear_d({s: L[s] for s in relu_sources})  # [d, *shape_t]
            lin = part if lin is None else lin + part
            norm = safe_norm(lin, axis=0)
            dev_sum = node.abs_linear({s: jnp.where(P[s], U[s], 0.0) for s in relu_sources})
        unstable, changed, deviation, linear = neuron_update(preacts[t - 1], norm, dev_sum, radius)
        L[t] = jnp.where(linear[None], lin, 0.0)
        P[t], U[t] = changed, deviation
        outs.append(LayerResult(unstable, changed, deviation))
    return outs


# ---------------------------------------------------------------------------
# The method's entry points


def pair_results(model: Model, lin_in: dict, preacts: list, radius) -> list:
    """Per-layer :class:`LayerResult` for one centre (its pre-activations) and one radius."""
    if model.dense is not None:
        out = dense_pairs(model.dense, [a[None] for a in preacts], jnp.reshape(radius, (1,)))
        return [jax.tree.map(lambda a: a[0], o) for o in out]
    return graph_pair(model, lin_in, preacts, radius)


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
        lin_in = input_maps(model)
        per_radius = jax.vmap(lambda p, rad: graph_pair(model, lin_in, p, rad), in_axes=(None, 0))
        per_point = jax.vmap(per_radius, in_axes=(0, None))
        return preacts, per_point(preacts, radii)
    return preacts, [jax.tree.map(lambda a: a.reshape((c, r) + a.shape[1:]), o) for o in pairs]


def paper_points(model: Model, xs: jax.Array, radii: jax.Array):
    """``(num_unstable [c, R], log2_bound [c, R], per-layer results)`` of Algorithm 1."""
    _, results = points_results(model, xs, radii)
    c = count_unstable([o.unstable for o in results], lead=2)
    return c, c.astype(xs.dtype), results


def single_pair_count(model: Model, lin_in: dict, preacts: list, radius) -> jax.Array:
    """``C`` for one centre and radius (scalar int32)."""
    return count_unstable([o.unstable for o in pair_results(model, lin_in, preacts, radius)])

