"""A tighter certified upper bound on the linear regions meeting a ball.

Algorithm 1 of Zhu, Lin & Tang (section 4) certifies a neuron stable when
Lemma 1's deviation bound clears its centre value, and Remark 2 bounds the
regions meeting ``B_r(x)`` by ``2^C``. This module keeps both ideas and
sharpens each; the result is never above the paper's (same ``LocalBound``
fields; ``log2_bound <= C_paper``).

**1. Fewer unstable neurons (linear bound propagation).** CROWN-style backward
linear bounds over the L2 ball. For a hidden layer ``l`` we bound each
pre-activation ``z_l[j]`` below by a linear function of the input, by walking
``z_l = relu(z_{l-1}) K_l + b_l`` backwards: every ``relu(z_k[i])`` with a
coefficient ``lambda_i`` is replaced by a linear bound valid on the neuron's
interval ``[lo_i, hi_i]`` (certified earlier): ``relu(z) >= alpha z`` with
``alpha in {0, 1}`` when ``lambda_i >= 0``, and
``relu(z) <= s (z - lo)``, ``s = hi / (hi - lo)`` when ``lambda_i < 0``;
stable neurons are exact (``relu(z) = z`` or ``0``). Each replacement keeps the
inequality, so after reaching the input
``z_l[j](x') >= a . x' + c`` for every ``x'`` in the ball, and
``min_{||x' - x|| <= r} a . x' + c = a . x + c - r ||a||_2`` (Cauchy-Schwarz,
as in Lemma 1). Upper bounds are ``-`` the lower bounds of ``-z_l[j]``. The
first hidden layer's bounds ``A_j -+ r ||W_{:, j}||`` are exact. Each
neuron's interval is also intersected with Algorithm 1's own
``[A_j - U~_j, A_j + U~_j]`` (Lemma 1, with ``U~`` the deviation before the
``A_j < 0`` adjustment), and Algorithm 1's stable neurons enter the
relaxation as stable; both are sound, so the intersection is too. A neuron is
stable when the certified lower bound is ``> 0`` or the upper bound ``< 0``
(strict, like condition S: a pre-activation exactly 0 somewhere in the closed
ball is unstable). So ``S_tight = S_paper AND S_crown``: a neuron counts as
stable when either method certifies it, and ``C_tight <= C_paper``.

**2. Better counting than ``2^C``.** Let ``C_l`` be the unstable neurons of
hidden layer ``l``. Inside the ball, each region ``Q`` of the first ``l - 1``
layers is convex, and on it layer ``l``'s pre-activations are affine, of the
form ``g(phi(x))`` where ``phi`` (the layer ``l - 1`` output) is affine on
``Q`` with image in an affine space of dimension
``d_l <= min(d, alive_1, ..., alive_{l-1})``: the linear part is a product of
the kernels with the ReLU masks, whose rank is at most the number of neurons
switched on, and ``alive_k`` (neurons of layer ``k`` not certified dead on the
ball) bounds that on every region. Layer ``l``'s stable neurons keep their
sign on ``Q``; its ``C_l`` unstable ones are ``C_l`` affine hyperplanes of
that ``d_l``-dimensional space, and an arrangement of ``m`` hyperplanes in
``R^k`` has at most ``sum_{j <= k} binom(m, j)`` regions (Zaslavsky / Buck),
so they cut ``Q`` into at most that many pieces. By induction over layers::

    #regions meeting B_r(x)  <=  prod_l sum_{j <= min(d_l, C_l)} binom(C_l, j).

Each factor is ``<= 2^{C_l}``, with equality iff ``C_l <= d_l``; we return
``log2_bound = min(C_tight, sum_l log2 sum_j binom(C_l, j))``, computed with
``gammaln`` and ``logsumexp`` so it never overflows. With ``d_l = d`` this is
the plain per-layer binomial bound; ``d_l`` only makes it smaller. (When every
width is at most ``d``, e.g. the paper's 36-input nets of width 32, the
binomial factor only helps through the dead neurons in ``d_l``.)

**Graphs.** For a network with several sources per layer
(:mod:`lr_jax.bounds.core`) the backward pass walks the ReLU layers in
reverse order: the coefficient rows on ``z_t`` move to each source through
the transpose of that source's map (``rows M_src``, a transposed conv for a
conv), collect on every earlier ``h_k`` from all the layers that read it,
are relaxed there as above, and so on down to the input. The counting uses
the rank of what feeds each layer: with ``rk(x) = d``,
``rk(h_k) = min(alive_k, rk(z_k))`` (on a region ``h_k`` is ``z_k`` masked to
its switched-on neurons) and ``rk(z_t) = min(d, sum_src rk(src))``;
``d_t = rk(z_t)`` is at most the dimension of the affine image in which
layer ``t``'s hyperplanes live on each region of the earlier layers. For a
chain this is ``min(d, alive_1, ..., alive_{t-1})`` as above.

**At scale.** Algorithm 1 runs first; a neuron it certifies stable (``S =
0``) is stable whatever the bound propagation says, and it enters every
later relaxation exactly (slope 1 or 0, whatever its interval). So the
backward pass is run only for the ``C_t`` neurons Algorithm 1 leaves
unstable: their indices are gathered and bounded ``neuron_block`` at a time
(one-hot rows moved through each map's transpose, ``jax.linear_transpose``:
for a conv the transpose of whichever of XLA's conv, its taps form or its
banded-matmul form runs fastest, so mostly matmuls,
:func:`lr_jax.networks.tracing._conv_form`), so memory is ``O(neuron_block * n_k)`` per
earlier layer ``k`` and never ``[n_t x n_k]``. Every neuron's bound is the
number the all-neurons pass gives (the rows are independent). Through
convolutional layers the rows stay in each neuron's receptive field
(:mod:`lr_jax.bounds.receptive_fields`): the same numbers, on windows. A
Dense chain's narrow layers (at most ``neuron_block`` neurons) are bounded
whole, in one matmul. A layer that no later layer reads (the last ReLU layer)
needs no relaxation, so only the bound that can certify each neuron is
computed, one row per neuron: the lower one where ``A_j >= 0`` (only
``lo > 0`` can certify it), the upper one where ``A_j < 0``; the other side
is Algorithm 1's, and so enters the rounding guard's scale (in float32 this
withheld 1 certificate of 46,298 unstable neurons on LeNet-5, 2 of 298,733
on the Flax MNIST CNN; none in float64). A Dense chain keeps both rows.

``changed`` and ``deviation`` are Algorithm 1's, returned unchanged: the
bound propagation does not recompute ``P`` or ``U``.

Precision: as for Algorithm 1, products are pinned to ``Precision.HIGHEST``.
The bound propagation certifies a neuron only when its bound clears 0 by a
rounding guard, ``lo > g`` or ``hi < -g`` with
``g = 1024 eps (|lo| + |hi|)`` (``eps`` of the dtype: about ``1.2e-4`` of
the interval's size in float32): a float32 bound computed a hair below 0
for a hyperplane that enters the ball by ``2e-6 r`` once certified a
neuron stable that the exact count (float64) showed unstable. The guard
makes the bound slightly more conservative only for hyperplanes within
about ``1e-4 r`` of the sphere. Algorithm 1's own certification (the
paper's strict ``U < |A|``) is kept as the paper states it; a neuron within
rounding of that test may be classified either way in float32 (enable
``jax_enable_x64`` when that matters).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, logsumexp

from lr_jax.bounds import algorithm1, receptive_fields
from lr_jax.bounds.algorithm1 import LayerResult
from lr_jax.bounds.core import Model, count_unstable, matmul, safe_norm


class _Relaxation(NamedTuple):
    """Linear bounds ``lower_slope z <= relu(z) <= upper_slope z + upper_offset``, per neuron."""

    lower_slope: jax.Array
    upper_slope: jax.Array
    upper_offset: jax.Array


def _relaxation(lo, hi, active, dead) -> _Relaxation:
    """CROWN's linear bounds of ``relu`` on ``[lo, hi]``; exact for stable neurons.

    Unstable neurons (``lo <= 0 <= hi``): the chord ``s (z - lo)``,
    ``s = hi / (hi - lo)``, from above, and ``alpha z`` from below with
    ``alpha = 1`` when ``hi >= -lo`` else 0 (the adaptive choice; any
    ``alpha in [0, 1]`` is sound).
    """
    width = hi - lo
    chord = jnp.where(width > 0, hi / jnp.where(width > 0, width, 1.0), 0.0)
    chord = jnp.clip(chord, 0.0, 1.0)
    alpha = (hi >= -lo).astype(lo.dtype)
    unstable = ~(active | dead)
    one, zero = jnp.ones_like(lo), jnp.zeros_like(lo)
    return _Relaxation(
        lower_slope=jnp.where(active, one, jnp.where(dead, zero, alpha)),
        upper_slope=jnp.where(active, one, jnp.where(dead, zero, chord)),
        upper_offset=jnp.where(unstable, -chord * lo, zero),
    )


def _rows_dot(rows: jax.Array, v: jax.Array) -> jax.Array:
    """``sum_j rows[i, j] v[j]``: ``[m, ...] x [...] -> [m]``."""
    return matmul(rows.reshape(rows.shape[0], -1), v.reshape(-1))


def _backward_bounds(model: Model, relax: dict, offsets: dict, t: int, x, radius, idx=None, side=None):
    """Certified lower and upper bounds of neurons of ``z_t`` over the ball, by backward substitution.

    Args:
      model: the network.
      relax: relaxations of ReLU layers ``1 .. t - 1`` (flat ``[n_k]`` fields).
      offsets: the constant ``c_k`` of every layer's map.
      t: target layer (1-based).
      x: ``[d]`` centre, flattened.
      radius: scalar.
      idx: ``[B]`` flat indices of the target neurons to bound (a block), or
        None for every neuron of the layer. A block's coefficient rows are
        one-hot rows moved through each map's transpose (a transposed conv
        for a conv: ``jax.linear_transpose``), so memory is ``O(B n_k)`` per
        earlier layer ``k``, never ``[n_t, n_k]``.
      side: None for both bounds of every neuron; else ``[B]`` of +1 / -1:
        only the lower bound (+1) or only the upper bound (-1) of each
        neuron, one row each (the other bound is returned infinite).

    Returns:
      ``([B], [B])`` flat lower and upper bounds (``[n_t]`` each when ``idx`` is None).
    """
    node = model.nodes[t - 1]
    coef: dict = {}

    def push(k: int, rows: jax.Array, const: jax.Array) -> jax.Array:
        layer = model.nodes[k - 1]
        const = const + _rows_dot(rows, offsets[k])
        for s, c in layer.backward(rows).items():
            coef[s] = coef[s] + c if s in coef else c
        return const

    # Row m < B targets +z_m, row B + m targets -z_m: one pass gives both bounds.
    c_t = offsets[t].reshape(-1)
    if idx is None:  # the whole layer: the first step is M^T itself (no product with an identity)
        first = node.transposed()
    else:
        eye = jax.nn.one_hot(idx, c_t.shape[0], dtype=x.dtype).reshape(idx.shape + tuple(node.shape))
        first = node.backward(eye)
        c_t = c_t[idx]
    n = c_t.shape[0]
    if side is None:
        for s, m in first.items():
            coef[s] = jnp.concatenate([m, -m])
        const = jnp.concatenate([c_t, -c_t])
    else:  # row m targets side_m z_m
        for s, m in first.items():
            coef[s] = side.reshape((n,) + (1,) * (m.ndim - 1)).astype(m.dtype) * m
        const = side * c_t
    for k in range(t - 1, 0, -1):  # sources always precede their readers
        if k not in coef:
            continue
        c = coef.pop(k)
        rk = relax[k]
        shape = c.shape
        c = c.reshape(shape[0], -1)
        c, added = receptive_fields.relax_rows(c, rk.lower_slope, rk.upper_slope, rk.upper_offset)  # now on z_k
        const = const + added
        const = push(k, c.reshape(shape), const)
    c0 = coef[0].reshape(const.shape[0], -1)  # on the input, [2B, d] (or [B, d])
    lower = matmul(c0, x) + const - radius * safe_norm(c0)
    if side is None:
        return lower[:n], -lower[n:]
    return receptive_fields.one_sided(lower, side)


def _side(a: jax.Array) -> jax.Array:
    """The only bound that can certify a neuron with centre value ``a``: lower (+1) where ``a >= 0``, else upper."""
    return jnp.where(a >= 0, 1.0, -1.0).astype(a.dtype)


def _unstable_bounds(bound_fn, unstable, block: int, dtype):
    """Bounds of a layer's neurons that Algorithm 1 left unstable; ``-inf``/``+inf`` elsewhere.

    A neuron Algorithm 1 certifies is stable on the ball whatever CROWN says,
    so only the ``C_t`` unstable ones are bounded: their flat indices are
    gathered (unstable first) and bounded ``block`` at a time in a
    ``lax.fori_loop`` of ``ceil(C_t / block)`` steps (a dynamic trip count;
    under ``vmap`` the longest pair sets it). Memory is one block's rows.

    Args:
      bound_fn: ``idx [block] -> (lower [block], upper [block])``.
      unstable: ``[n_t]`` Algorithm 1's ``S`` for the layer.
      block: neurons per block (static).

    Returns:
      ``([n_t], [n_t])`` lower and upper bounds.
    """
    n = unstable.shape[0]
    count = jnp.sum(unstable, dtype=jnp.int32)
    steps = -(-n // block)
    order = jnp.nonzero(unstable, size=steps * block, fill_value=0)[0]
    lo0 = jnp.full((n,), -jnp.inf, dtype)
    hi0 = jnp.full((n,), jnp.inf, dtype)

    def body(b, carry):
        lo, hi = carry
        ids = jax.lax.dynamic_slice(order, (b * block,), (block,))
        l, h = bound_fn(ids)
        keep = jnp.where(b * block + jnp.arange(block) < count, ids, n)  # past the count: dropped
        return lo.at[keep].set(l, mode="drop"), hi.at[keep].set(h, mode="drop")

    return jax.lax.fori_loop(0, (count + block - 1) // block, body, (lo0, hi0))


def _padded_windows(model: Model, plan, relax: dict, offsets: dict, x) -> dict:
    """The per-layer arrays the receptive-field pass gathers from, padded for ``plan``'s boxes."""
    out = {}
    for k, window in plan.windows.items():
        if k == 0:
            data = jnp.stack([x.reshape(model.input_shape), jnp.ones(model.input_shape, x.dtype)], axis=-1)
        else:
            r = relax[k]
            shape = tuple(model.nodes[k - 1].shape)
            b = offsets[k].reshape(-1)
            # the constant a row picks up at layer k, per unit coefficient, by its sign (block_bounds)
            data = jnp.stack([r.lower_slope, r.upper_slope, r.lower_slope * b, r.upper_slope * b + r.upper_offset],
                             axis=-1)
            data = data.reshape(shape + (4,))
        out[k] = receptive_fields.pad_layer(data, window)
    return out


def _paper_intervals(preacts, paper: LayerResult):
    """Lemma 1's pre-activation intervals ``A -+ U~`` (meaningful where ``S = 1``).

    Algorithm 1 stores ``U = U~ + A`` for ``A < 0`` unstable neurons and
    ``U = U~`` for ``A >= 0``; undo the adjustment to recover ``U~``.
    """
    spread = jnp.where(preacts < 0, paper.deviation - preacts, paper.deviation)
    return preacts - spread, preacts + spread


def input_norms(model: Model) -> dict:
    """``||M_{0,t}[:, j]||`` for every layer that reads only the input (once per call).

    Such a layer is affine in ``x``: ``A_j -+ r ||M_{0,t}[:, j]||`` are its exact
    bounds on the ball, with no backward pass. The norms are those of
    Algorithm 1's input maps (the map applied to the ``d`` input directions,
    :func:`lr_jax.bounds.algorithm1.input_maps`), never of an ``[n_t, n_t]`` matrix.
    """
    if model.dense is not None:
        W = model.dense[0][0]
        return {1: safe_norm(W.T)}
    return {
        t: norm.reshape(-1)
        for t, (_, norm) in algorithm1.input_maps(model).items()
        if model.nodes[t - 1].sources == (0,)
    }


# CROWN certifies a neuron only when its bound clears 0 by this many ulps of |lo| + |hi|.
_ROUNDING_GUARD = 1024


def _crown(model: Model, x, preacts: list, radius, paper: list, prep: "Prepared", block: int):
    """``S_tight`` and the certified-dead mask, flat ``[n_t]`` per layer.

    Only Algorithm 1's unstable neurons are bounded, ``block`` at a time,
    except the layers of a Dense chain of at most ``block`` neurons, bounded
    whole in one pass.
    Layers with a receptive-field plan move their rows in windows
    (:mod:`lr_jax.bounds.receptive_fields`), the others as dense rows.
    """
    norms = prep.norms
    offsets = {t: node.offset() for t, node in enumerate(model.nodes, start=1)}
    # A layer no later layer reads: its relaxation is never used, so only the bound that can
    # certify each neuron is needed (lower where A >= 0, upper where A < 0), one row, not two.
    # The rounding guard then scales with Algorithm 1's bound on the other side: in float32 it
    # can withhold a certificate within the guard (1 neuron of 46,298 unstable on LeNet-5).
    read = {s for node in model.nodes for s in node.sources}
    relax, unstable, dead = {}, [], []
    for t in range(1, len(model.nodes) + 1):
        a = preacts[t - 1].reshape(-1)
        p = jax.tree.map(lambda v: v.reshape(-1), paper[t - 1])
        paper_lo, paper_hi = _paper_intervals(a, p)
        plan = prep.plans.get(t)
        terminal = t not in read

        def side(idx=None, a=a, terminal=terminal):
            return (_side(a) if idx is None else _side(a[idx])) if terminal else None

        if t in norms:  # affine in x: exact
            lo, hi = a - radius * norms[t], a + radius * norms[t]
        elif plan is not None:
            padded = _padded_windows(model, plan, relax, offsets, x)

            def windowed(idx, plan=plan, padded=padded, c_t=offsets[t].reshape(-1)):
                return receptive_fields.block_bounds(model, plan, prep.kmaps[t], padded, c_t, radius, idx, side(idx))

            lo, hi = _unstable_bounds(windowed, p.unstable, min(block, a.shape[0]), x.dtype)
        elif model.dense is not None and a.shape[0] <= block:
            # A narrow Dense layer: all its rows in one matmul costs less than gathering the unstable
            # ones, and both bounds keep the rounding guard's scale (|lo| + |hi|) as it always was.
            lo, hi = _backward_bounds(model, relax, offsets, t, x, radius)
        else:
            lo, hi = _unstable_bounds(
                lambda idx: _backward_bounds(model, relax, offsets, t, x, radius, idx, side(idx)),
                p.unstable, min(block, a.shape[0]), x.dtype,
            )
        lo, hi = jnp.maximum(lo, paper_lo), jnp.minimum(hi, paper_hi)
        # A bound within rounding of 0 certifies nothing: a hyperplane 2e-6 r inside the ball
        # came out "stable" in float32 (tests/test_tight_bound.py, the near-tangent net).
        guard = _ROUNDING_GUARD * jnp.finfo(lo.dtype).eps * (jnp.abs(lo) + jnp.abs(hi))
        active = (~p.unstable & (a > 0)) | (lo > guard)
        dead_t = (~p.unstable & (a < 0)) | (hi < -guard)
        relax[t] = _relaxation(lo, hi, active, dead_t)
        unstable.append(~(active | dead_t))
        dead.append(dead_t)
    return unstable, dead


def _log2_binomial_prefix(n, k, max_n: int, dtype=jnp.float32):
    """``log2 sum_{j=0}^{min(k, n)} binom(n, j)`` for integers ``0 <= n <= max_n``.

    Exactly ``n`` when ``k >= n`` (the sum is ``2^n``); otherwise through
    ``gammaln`` and ``logsumexp``, so no binomial is ever formed.
    """
    j = jnp.arange(max_n + 1, dtype=dtype)
    nf = n.astype(dtype)
    log_binom = gammaln(nf + 1) - gammaln(j + 1) - gammaln(jnp.maximum(nf - j, 0.0) + 1)
    terms = jnp.where(j <= jnp.minimum(k, n), log_binom, -jnp.inf)
    partial = logsumexp(terms) / jnp.log(2.0)
    return jnp.where(k >= n, nf, jnp.minimum(partial, nf))


def _log2_region_bound(model: Model, unstable: list, dead: list, dtype):
    """``min(C, sum_t log2 sum_{j <= d_t} binom(C_t, j))`` (module docstring, part 2)."""
    d = model.d
    rank = {0: jnp.asarray(d, jnp.int32)}
    logs = []
    for t, node in enumerate(model.nodes, start=1):
        s, dd = unstable[t - 1], dead[t - 1]
        c_t = jnp.sum(s, dtype=jnp.int32)
        rk_z = jnp.minimum(d, sum(rank[src] for src in node.sources))
        # A layer splits a region into at least one piece: log2 >= 0 (logsumexp rounds below 0).
        logs.append(jnp.maximum(_log2_binomial_prefix(c_t, rk_z, s.shape[-1], dtype), 0.0))
        alive = s.shape[-1] - jnp.sum(dd, dtype=jnp.int32)
        rank[t] = jnp.minimum(alive, rk_z)
    total = count_unstable(unstable)
    return jnp.minimum(sum(logs), total.astype(dtype))


# Neurons of one layer bounded together by CROWN (the rows of one backward pass).
NEURON_BLOCK = 128


class Prepared(NamedTuple):
    """What the tight bound computes once per call, not per (point, radius) pair.

    Attributes:
      norms: ``{t: [n_t]}`` column norms of the layers that read only the input.
      plans: ``{t: Plan}`` receptive-field plans (static), for the layers that have one.
      kmaps: ``{t: {(s, k): K}}`` their stencils.
    """

    norms: dict
    plans: dict
    kmaps: dict


def prepare(model: Model) -> Prepared:
    """The per-call constants of :func:`tight_pair` (inside traced code: the params may be tracers)."""
    norms = input_norms(model)
    plans = {}
    for t in range(1, len(model.nodes) + 1):
        if t not in norms:
            plan = receptive_fields.plan_for(model, t)
            if plan is not None:
                plans[t] = plan
    kmaps = {t: receptive_fields.stencils(model, plan) for t, plan in plans.items()}
    return Prepared(norms, plans, kmaps)


def tight_pair(model: Model, x, preacts: list, paper: list, radius, prep: Prepared | None = None,
               neuron_block: int = NEURON_BLOCK):
    """The tight bound for one centre and radius, given Algorithm 1's results for it.

    ``neuron_block``: Algorithm 1's unstable neurons are bounded this many at
    a time (memory ``O(neuron_block * n_k)`` per earlier layer ``k``); a
    Dense chain's layers of at most this many neurons whole, in one pass.

    Returns:
      ``(num_unstable, log2_bound, per-layer LayerResult)``: ``S_tight`` in
      each layer's shape; ``changed`` and ``deviation`` are the paper's.
    """
    x = x.reshape(-1)
    prep = prepare(model) if prep is None else prep
    unstable, dead = _crown(model, x, preacts, radius, paper, prep, neuron_block)
    # never above the paper, also under rounding
    unstable = [u & p.unstable.reshape(-1) for u, p in zip(unstable, paper)]
    log2 = _log2_region_bound(model, unstable, dead, x.dtype)
    results = [
        LayerResult(u.reshape(p.unstable.shape), p.changed, p.deviation) for u, p in zip(unstable, paper)
    ]
    return count_unstable(unstable), log2, results


def tight_points(model: Model, xs: jax.Array, radii: jax.Array, neuron_block: int = NEURON_BLOCK,
                 prep: Prepared | None = None):
    """``(num_unstable [c, R], log2_bound [c, R], per-layer results)`` of the tight bound.

    One ``vmap`` over the ``c * R`` (point, radius) pairs: a flat batch lets
    XLA fuse each layer's backward products into one matmul for the chunk.
    """
    preacts, paper = algorithm1.points_results(model, xs, radii)
    c, r = xs.shape[0], radii.shape[0]
    xs = xs.reshape((c,) + model.input_shape)

    def pairs(a):  # [c, ...] -> [c * R, ...], the point repeated for each radius
        return jnp.repeat(a, r, axis=0)

    flat = jax.tree.map(lambda a: a.reshape((c * r,) + a.shape[2:]), paper)
    prep = prepare(model) if prep is None else prep
    out = jax.vmap(lambda x, pre, pap, rad: tight_pair(model, x, pre, pap, rad, prep, neuron_block))(
        pairs(xs), jax.tree.map(pairs, preacts), flat, jnp.tile(radii, c)
    )
    return jax.tree.map(lambda a: a.reshape((c, r) + a.shape[1:]), out)
