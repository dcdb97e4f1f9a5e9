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

``changed`` and ``deviation`` are Algorithm 1's, returned unchanged: the
bound propagation does not recompute ``P`` or ``U``.

Precision: as for Algorithm 1, products are pinned to ``Precision.HIGHEST``;
a neuron whose certified margin is within rounding of 0 may be classified
either way in float32 (enable ``jax_enable_x64`` when that matters).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, logsumexp

from lr_jax.networks.layers import Layer
from lr_jax.bounds.local_bound import LocalBound, PackedLayers, bound_at_radius, local_bounds

_HIGHEST = jax.lax.Precision.HIGHEST


class _Relaxation(NamedTuple):
    """Linear bounds ``lower_slope z <= relu(z) <= upper_slope z + upper_offset``, per neuron ``[W]``."""

    lower_slope: jax.Array
    upper_slope: jax.Array
    upper_offset: jax.Array


def _matmul(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


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


def _backward_lower(packed: PackedLayers, relax: list, layer: int, x, radius):
    """Certified lower bounds of ``+-z_layer`` over the ball, by backward substitution.

    Args:
      packed: from :func:`pack_layers`.
      relax: relaxations of hidden layers ``0 .. layer - 1``.
      layer: target hidden layer (``>= 1``), 0-based.
      x: ``[d]`` centre.
      radius: scalar.

    Returns:
      ``([W], [W])``: lower bounds of ``z_layer`` and upper bounds.
    """
    kernel, bias = packed.kernels[layer - 1], packed.biases[layer - 1]
    # Row m < W targets +z_m, row W + m targets -z_m: one pass gives both bounds.
    coef = jnp.concatenate([kernel.T, -kernel.T])  # on relu(z_{layer - 1}), [2W, W]
    const = jnp.concatenate([bias, -bias])
    for k in range(layer - 1, -1, -1):
        rk = relax[k]
        positive = coef >= 0
        # Lower bound of coef * relu(z): the lower relaxation where coef >= 0,
        # the upper one where coef < 0.
        const = const + jnp.sum(jnp.where(positive, 0.0, coef * rk.upper_offset), axis=-1)
        coef = jnp.where(positive, coef * rk.lower_slope, coef * rk.upper_slope)  # now on z_k
        if k > 0:
            const = const + _matmul(coef, packed.biases[k - 1])
            coef = _matmul(coef, packed.kernels[k - 1].T)
        else:
            const = const + _matmul(coef, packed.first_bias)
            coef = _matmul(coef, packed.first_kernel.T)  # on the input, [2W, d]
    lower = _matmul(coef, x) + const - radius * jnp.linalg.norm(coef, axis=-1)
    width = kernel.shape[1]
    return lower[:width], -lower[width:]


def _paper_intervals(preacts, paper: LocalBound):
    """Lemma 1's pre-activation intervals ``A -+ U~`` (meaningful where ``S = 1``).

    Algorithm 1 stores ``U = U~ + A`` for ``A < 0`` unstable neurons and
    ``U = U~`` for ``A >= 0``; undo the adjustment to recover ``U~``.
    """
    spread = jnp.where(preacts < 0, paper.deviation - preacts, paper.deviation)
    return preacts - spread, preacts + spread


def _crown_unstable(packed: PackedLayers, x, preacts, radius, paper: LocalBound):
    """``S_tight`` ``[H, W]`` and certified-dead mask ``[H, W]``."""
    paper_lo, paper_hi = _paper_intervals(preacts, paper)
    paper_active = ~paper.unstable & (preacts > 0)
    paper_dead = ~paper.unstable & (preacts < 0)
    spread = radius * packed.first_norms
    lo, hi = preacts[0] - spread, preacts[0] + spread  # exact on the ball
    relax, unstable, dead = [], [], []
    for layer in range(preacts.shape[0]):
        if layer > 0:
            lo, hi = _backward_lower(packed, relax, layer, x, radius)
            lo = jnp.maximum(lo, paper_lo[layer])
            hi = jnp.minimum(hi, paper_hi[layer])
        active_l = paper_active[layer] | (lo > 0)
        dead_l = paper_dead[layer] | (hi < 0)
        relax.append(_relaxation(lo, hi, active_l, dead_l))
        unstable.append(~(active_l | dead_l))
        dead.append(dead_l)
    return jnp.stack(unstable), jnp.stack(dead)


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


def _log2_region_bound(unstable, dead, input_dim: int, dtype):
    """``min(C, sum_l log2 sum_{j <= d_l} binom(C_l, j))`` (module docstring, part 2)."""
    per_layer = jnp.sum(unstable, axis=-1, dtype=jnp.int32)  # C_l, [H]
    alive = unstable.shape[-1] - jnp.sum(dead, axis=-1, dtype=jnp.int32)  # padding is dead
    # d_l = min(d, alive_1, ..., alive_{l-1}): the rank the first l-1 layers can pass on.
    rank = jnp.minimum(input_dim, jax.lax.cummin(alive))
    dims = jnp.concatenate([jnp.array([input_dim], jnp.int32), rank[:-1]])
    width = unstable.shape[-1]
    logs = jax.vmap(lambda n, k: _log2_binomial_prefix(n, k, width, dtype))(per_layer, dims)
    total = jnp.sum(per_layer)
    return jnp.minimum(jnp.sum(logs), total.astype(logs.dtype))


def tight_bound_at_radius(packed: PackedLayers, x, preacts, radius) -> LocalBound:
    """:func:`tight_bounds` for one centre and one radius.

    Args:
      packed: from :func:`pack_layers`.
      x: ``[d]`` centre.
      preacts: ``[H, W]`` from :func:`centre_preactivations`.
      radius: scalar ``r >= 0``.

    Returns:
      :class:`LocalBound` with scalar counts and ``[H, W]`` masks.
    """
    radius = jnp.asarray(radius, preacts.dtype)
    paper = bound_at_radius(packed, preacts, radius)
    unstable, dead = _crown_unstable(packed, x, preacts, radius, paper)
    unstable = unstable & paper.unstable  # never above the paper, also under rounding
    return LocalBound(
        num_unstable=jnp.sum(unstable, dtype=jnp.int32),
        log2_bound=_log2_region_bound(unstable, dead, x.shape[0], preacts.dtype),
        unstable=unstable,
        changed=paper.changed,
        deviation=paper.deviation,
    )


def tight_bounds(layers: Sequence[Layer], xs: jax.Array, radii, **kwargs) -> LocalBound:
    """Tighter certified bounds than Algorithm 1 for every point and radius, jitted.

    The same as ``lr_jax.local_bounds(layers, xs, radii, method="tight")``:
    :func:`tight_bound_at_radius` ``vmap``-ed over (point, radius) pairs, in
    chunks and sharded over devices like Algorithm 1 (``kwargs`` are
    ``local_bounds``'s ``chunk_size``, ``masks``, ``devices``).

    Args:
      layers: ``(W [fan_in, fan_out], b [fan_out])`` pairs, input to output;
        the last pair is the linear output layer (not counted).
      xs: ``[N, d]`` centres.
      radii: ``[R]`` radii (a scalar is taken as ``R = 1``).

    Returns:
      :class:`LocalBound` with leading axes ``[N, R]``: ``unstable`` is
      ``S_tight`` (``[N, R, H, W]``), ``num_unstable`` its count,
      ``log2_bound <= num_unstable <= C_paper``; ``changed`` and ``deviation``
      are Algorithm 1's.

    Raises:
      ValueError: as :func:`lr_jax.local_bounds`.
    """
    return local_bounds(layers, xs, radii, method="tight", **kwargs)
