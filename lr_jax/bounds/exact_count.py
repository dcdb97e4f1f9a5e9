"""The exact number of linear regions meeting a ball, by search over activation patterns.

This is the top slice of the "certified sandwich" around Algorithm 1 (Zhu, Lin
& Tang, section 4)::

    sample_regions  <=  count_regions  <=  2 ** tight_bounds  <=  2 ** C   (Remark 2)

A *region* is a maximal open set on which the activation pattern (the sign of
every hidden pre-activation) is constant and which is full-dimensional. Once a
pattern ``s`` is fixed, every hidden pre-activation is an affine function of
the input, ``h_j(x) = a_j . x + c_j`` (the ReLUs become fixed masks), so the
region of ``s`` is the open polyhedron ``{x : s_j (a_j . x + c_j) > 0 for all j}``.
Remark 2 counts the regions meeting the closed ball ``B_r(x0)``; so do we.

Deciding one pattern: one small conic program (solved with Clarabel). With
unit normals ``â_j = a_j / ||a_j||``, the signed distance of a point to
hyperplane ``j`` on the side the pattern asks for is
``m_j(x) = s_j (â_j . x + c_j / ||a_j||)``, and::

    t* = max { t : m_j(x) >= t for every j,  ||x - x0||_2 <= r }

is the largest margin by which a point of the closed ball sits inside the
polyhedron. The open polyhedron meets the closed ball iff ``t* > 0`` (the
maximum is attained on the compact ball); for ``r > 0`` the intersection is
then automatically full-dimensional, since an open set meeting a ball meets its
interior. We count a pattern iff we hold a *witness*: a point of the closed
ball, re-evaluated in float64 from the solver's answer, whose margin to every
hyperplane exceeds the tolerance ``tol`` (default ``1e-9``, in input units).
Polyhedra with empty interior in the ball, or thinner than ``tol`` there
(``t* <= tol``), are not counted as regions. A counted pattern is therefore a
verified region; a region can only be missed if its largest inscribed margin
within the ball is within the solver's accuracy (about ``1e-8 r``) of ``tol``.

Rows with ``a_j = 0`` (a neuron whose every input is switched off under the
pattern) are constant, ``h_j = c_j``: they are not hyperplanes, and the pattern
must carry their constant sign (on iff ``c_j > 0``, the same convention as
``relu``'s ``h > 0``), else it describes no point at all.

Search: breadth-first over patterns, starting from the centre's region. The
regions meeting a convex ball are connected under crossings of single facets:
join two of them by a segment inside the ball, perturb it to avoid the
(lower-dimensional) intersections of two boundaries, and it crosses one
hyperplane piece at a time. For a network in general position (no two
neurons switching on the same hyperplane piece) such a crossing flips exactly
one neuron, so breadth-first search over single flips from any one region
finds every region meeting the ball. Neurons that share a hyperplane under
a pattern (``relu(relu(z))``, duplicated neurons) switch together when it is
crossed: they are flipped as one group. A neuron can flip across a facet inside
the ball only if its hyperplane *under the current pattern* meets the ball
(``|m_j(x0)| < r``); this per-region test is exact and implies ``S = 1`` in
Algorithm 1 whenever Algorithm 1 is sound, so the search does not take ``S``
from Algorithm 1: that keeps this count independent of the bound it is used
to check. If the centre lies (within ``tol``) on a boundary its own pattern is
not a region, and the search starts instead from the pattern of the first of
a few fixed points inside the ball that lies in one.

Cheap exact filters keep the conic programs small: under a pattern, a row
whose hyperplane is farther than ``r`` from ``x0`` is either satisfied on the
whole ball (dropped from the program) or nowhere on it (the pattern is
rejected without a solve).

Everything here is float64 NumPy on the host; it is a reference, not a kernel,
and is not jitted.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Callable, NamedTuple

import numpy as np

try:
    import clarabel
    import scipy.sparse as sp
except ModuleNotFoundError as _missing:  # the optional extra
    raise ImportError(
        f"lr_jax.count_regions needs the conic solver Clarabel and SciPy ({_missing.name} is not installed): "
        "pip install 'lr_jax[exact]' (or pip install clarabel scipy)."
    ) from _missing

from lr_jax.bounds.core import prepare_inputs
from lr_jax.networks.tracing import Network, graph_nodes

log = logging.getLogger(__name__)
# Seconds between two progress reports of a long search.
PROGRESS_SECONDS = 10.0

# A row counts as constant (a_j = 0) when its norm is below this fraction of
# the largest row norm in its layer: exact zeros (all inputs switched off) are
# the structural case; the relative slack only absorbs cancellation round-off.
_ZERO_ROW_RTOL = 1e-12
# Upper cap on the scaled margin t / r: it never binds for kept rows (their
# margin is at most about 2 r) and only keeps the program bounded.
_MARGIN_CAP = 4.0
# Two rows lie on one hyperplane when their unit normals and offsets agree to this (relative).
_COINCIDENT_RTOL = 1e-9
# Fallback seeds when the centre lies on a boundary: points at half the radius
# in fixed pseudo-random directions (a local generator: no global randomness).
_NUM_FALLBACK_SEEDS = 64
_FALLBACK_SEED = 20240607


class RegionCount(NamedTuple):
    """Result of :func:`count_regions`.

    Attributes:
      count: number of regions found meeting the closed ball.
      complete: False when the search stopped at ``max_regions`` (then
        ``count == max_regions`` and more regions exist) or at
        ``max_seconds``: then ``count`` is only a lower bound.
      patterns: bool ``[count, n_hidden_total]`` activation pattern of each
        region found (``True`` = pre-activation ``> 0``), hidden layers
        concatenated input to output, unpadded.
    """

    count: int
    complete: bool
    patterns: np.ndarray


class _Maps(NamedTuple):
    """Hidden pre-activations under a fixed pattern, relative to the centre.

    ``h(x0 + y) = value + y @ linear`` for every point where the pattern holds.
    """

    linear: list  # per layer [d, w_l]
    value: list  # per layer [w_l]: the pattern's affine map evaluated at x0


class _Rows(NamedTuple):
    """The pattern's constraints as unit-normal rows (over all hidden neurons)."""

    normals: np.ndarray  # [n, d] unit normals s_j â_j (zero for constant rows)
    centre_margin: np.ndarray  # [n] m_j(x0), signed distance of the centre
    constant: np.ndarray  # [n] bool, a_j = 0


class _Region(NamedTuple):
    pattern: np.ndarray  # [n] bool
    maps: _Maps
    rows: _Rows


class _Dag(NamedTuple):
    """The hidden layers as dense float64 maps: ``z_t = sum_s h_s @ maps[t][s] + offsets[t]``.

    ``maps[t]`` maps a source node (``0``: the input, flattened; ``k``: hidden
    layer ``k``, 1-based) to its ``[n_s, n_t]`` matrix; layers are in order,
    so every source precedes its reader.
    """

    maps: list
    offsets: list


def _dag_from_layers(layers) -> _Dag:
    hidden = [(np.asarray(W, np.float64), np.asarray(b, np.float64)) for W, b in layers[:-1]]
    return _Dag([{t: W} for t, (W, _) in enumerate(hidden)], [b for _, b in hidden])


def _dag_from_network(net: Network) -> _Dag:
    """The traced maps materialised (in the dtype the network was traced with), then float64."""
    nodes, dense = graph_nodes(net)
    if dense is not None:
        return _dag_from_layers(list(dense) + [None])
    maps, offsets = [], []
    for node in nodes:
        maps.append({
            s: np.asarray(node.materialise(s), np.float64).reshape(-1, math.prod(node.shape))
            for s in node.sources
        })
        offsets.append(np.asarray(node.offset(), np.float64).reshape(-1))
    return _Dag(maps, offsets)


def _forward_pattern(dag: _Dag, x) -> np.ndarray:
    """Activation pattern (``h > 0``) of the point ``x``, all hidden layers."""
    h = {0: x}
    bits = []
    for t, (maps, c) in enumerate(zip(dag.maps, dag.offsets), start=1):
        z = c + sum(h[s] @ M for s, M in maps.items())
        bits.append(z > 0)
        h[t] = np.maximum(z, 0.0)
    return np.concatenate(bits)


def _maps_under_pattern(dag: _Dag, x0, masks, start: int = 0, prefix: _Maps | None = None) -> _Maps:
    """Affine maps of every hidden layer once the ReLU masks are fixed.

    Layers before ``start`` (0-based) are taken from ``prefix`` (they do not
    depend on the masks of layer ``start`` onward), so flipping one neuron of
    layer ``l`` only recomputes layers ``l + 1, ...``.
    """
    linear = list(prefix.linear[:start]) if prefix else []
    value = list(prefix.value[:start]) if prefix else []
    for k in range(start, len(dag.maps)):
        lin, val = 0.0, dag.offsets[k]
        for s, M in dag.maps[k].items():
            if s == 0:
                lin = lin + M
                val = val + x0 @ M
            else:
                m = masks[s - 1]
                lin = lin + (linear[s - 1] * m) @ M
                val = val + (value[s - 1] * m) @ M
        linear.append(lin)
        value.append(val)
    return _Maps(linear, value)


def _rows(maps: _Maps, pattern: np.ndarray) -> _Rows:
    """Unit-normal rows ``m_j(x0 + y) = centre_margin_j + normals_j . y`` of a pattern."""
    normals, margins, constant = [], [], []
    for A, v in zip(maps.linear, maps.value):
        norms = np.linalg.norm(A, axis=0)
        const = norms <= _ZERO_ROW_RTOL * norms.max(initial=0.0)
        safe = np.where(const, 1.0, norms)
        normals.append(np.where(const, 0.0, A / safe).T)
        margins.append(np.where(const, 0.0, v / safe))
        constant.append(const)
    sign = np.where(pattern, 1.0, -1.0)
    return _Rows(
        normals=np.concatenate(normals) * sign[:, None],
        centre_margin=np.concatenate(margins) * sign,
        constant=np.concatenate(constant),
    )


def _constant_rows_agree(maps: _Maps, rows: _Rows, pattern: np.ndarray) -> bool:
    """Constant rows must carry their constant's sign (on iff ``c_j > 0``)."""
    value = np.concatenate(maps.value)
    return bool(np.all(pattern[rows.constant] == (value[rows.constant] > 0)))


class _Oracle:
    """Decides patterns for one ball; holds the solver settings and counters."""

    def __init__(self, radius: float, tol: float):
        self.radius, self.tol = radius, tol
        self.num_programs = 0
        self._settings = clarabel.DefaultSettings()
        self._settings.verbose = False
        self._tight = clarabel.DefaultSettings()
        self._tight.verbose = False
        for name in ("tol_gap_abs", "tol_gap_rel", "tol_feas", "tol_ktratio"):
            setattr(self._tight, name, 1e-11)

    def is_region(self, rows: _Rows) -> bool:
        """True iff a point of the closed ball has margin ``> tol`` to every row."""
        r, tol = self.radius, self.tol
        live = ~rows.constant
        best = rows.centre_margin[live] + r  # the largest margin of each row on the ball
        if np.any(best <= tol):
            return False  # one hyperplane alone keeps the pattern's side out of the ball
        kept = live & (rows.centre_margin - r <= tol)  # the others hold on the whole ball
        if not np.any(kept):
            return True  # witness: x0 itself
        normals, margins = rows.normals[kept], rows.centre_margin[kept]
        witness_margin, t_solver = self._solve(normals, margins, self._settings)
        if witness_margin <= tol < t_solver:
            # The solver claims a region its point does not certify: a sliver
            # near the tolerance; decide it again with tighter solver accuracy.
            witness_margin, _ = self._solve(normals, margins, self._tight)
        return witness_margin > tol

    def _solve(self, normals, margins, settings) -> tuple[float, float]:
        """Returns (margin of the projected witness, solver's t*), both in input units.

        Variables ``(u, tau)`` with ``x = x0 + r u``: maximise ``tau`` subject
        to ``margins / r + normals . u >= tau``, ``tau <= cap``, ``||u|| <= 1``.
        Scaling by ``r`` keeps the program well conditioned for any radius.
        """
        self.num_programs += 1
        r = self.radius
        m, d = normals.shape
        A = _constraint_matrix(normals)
        b = np.concatenate([margins / r, [_MARGIN_CAP, 1.0], np.zeros(d)])
        q = np.zeros(d + 1)
        q[d] = -1.0  # maximise tau
        P = sp.csc_matrix((d + 1, d + 1))  # a linear objective
        cones = [clarabel.NonnegativeConeT(m + 1), clarabel.SecondOrderConeT(d + 1)]
        solution = clarabel.DefaultSolver(P, q, A, b, cones, settings).solve()
        z = np.asarray(solution.x)
        if not np.all(np.isfinite(z)):
            return -np.inf, -np.inf  # a failed solve certifies nothing
        u = z[:d]
        norm = np.linalg.norm(u)
        if norm > 1.0:
            u = u / norm  # back into the closed ball; the margin is re-evaluated below
        witness = float(np.min(margins + r * (normals @ u)))
        return witness, float(r * z[d])


def _constraint_matrix(normals: np.ndarray) -> sp.csc_matrix:
    """``A`` of Clarabel's ``A z + s = b`` for ``z = (u, tau)``, built column-wise.

    Rows: ``m`` margin rows ``[-normals, 1]``, the cap row ``[0, 1]``, then the
    second-order cone ``(1, u)``: a zero row and ``-I``. Assembling the CSC
    arrays directly avoids SciPy's dense-to-sparse conversion, which otherwise
    costs about as much as the solve itself.
    """
    m, d = normals.shape
    u_cols = np.hstack([-normals.T, -np.ones((d, 1))])  # [d, m + 1]
    u_rows = np.hstack([np.tile(np.arange(m), (d, 1)), (m + 2 + np.arange(d))[:, None]])
    data = np.concatenate([u_cols.ravel(), np.ones(m + 1)])
    indices = np.concatenate([u_rows.ravel(), np.arange(m + 1)])
    indptr = np.concatenate([np.arange(d + 1) * (m + 1), [d * (m + 1) + m + 1]])
    return sp.csc_matrix((data, indices, indptr), shape=(m + 2 + d, d + 1))


def _same_hyperplane(cos, margin_a, margin_b):
    """Rows ``a`` and ``b`` (unit normals with cosine ``cos``, centre margins) lie on one hyperplane.

    The normals are parallel or opposite and the offsets agree up to that
    sign, both to :data:`_COINCIDENT_RTOL` (relative to ``1 + |margin_a|``).
    Broadcasts over its arguments.
    """
    return (np.abs(cos) > 1.0 - _COINCIDENT_RTOL) & (
        np.abs(margin_a - np.sign(cos) * margin_b) <= _COINCIDENT_RTOL * (1.0 + np.abs(margin_a))
    )


def _masks(pattern: np.ndarray, offsets) -> list:
    return [pattern[a:b].astype(np.float64) for a, b in zip(offsets[:-1], offsets[1:])]


class _Search:
    """Breadth-first search over activation patterns for one ball."""

    def __init__(self, dag: _Dag, x0, radius, tol):
        self.dag, self.x0, self.radius = dag, x0, radius
        widths = [c.shape[0] for c in dag.offsets]
        self.offsets = np.concatenate([[0], np.cumsum(widths)])
        self.layer_of = np.repeat(np.arange(len(widths)), widths)
        self.oracle = _Oracle(radius, tol)

    def evaluate(self, pattern, start=0, parent: _Region | None = None) -> _Region | None:
        maps = _maps_under_pattern(
            self.dag, self.x0, _masks(pattern, self.offsets), start, parent.maps if parent else None
        )
        rows = _rows(maps, pattern)
        if not _constant_rows_agree(maps, rows, pattern) or not self.oracle.is_region(rows):
            return None
        return _Region(pattern, maps, rows)

    def seed(self) -> _Region | None:
        region = self.evaluate(_forward_pattern(self.dag, self.x0))
        if region is not None or self.radius == 0.0:
            return region
        d = self.x0.shape[0]
        directions = np.random.default_rng(_FALLBACK_SEED).normal(size=(_NUM_FALLBACK_SEEDS, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        for v in directions:
            region = self.evaluate(_forward_pattern(self.dag, self.x0 + 0.5 * self.radius * v))
            if region is not None:
                return region
        return None

    def flip_candidates(self, region: _Region) -> list:
        """Groups of neurons to flip: those whose hyperplane under this pattern enters the ball.

        Neurons sharing one hyperplane (``relu(relu(z))``, duplicated
        neurons) switch together when it is crossed, so they form one group;
        flipping one of them alone describes no point.
        """
        rows = region.rows
        idx = np.flatnonzero(~rows.constant & (rows.centre_margin < self.radius - self.oracle.tol))
        if idx.size < 2:
            return [idx[i:i + 1] for i in range(idx.size)]
        normals, margins = rows.normals[idx], rows.centre_margin[idx]
        cos = normals @ normals.T
        same = _same_hyperplane(cos, margins[:, None], margins[None, :])
        groups, seen = [], np.zeros(idx.size, bool)
        for i in range(idx.size):
            if not seen[i]:
                members = np.flatnonzero(same[i] & ~seen)
                seen[members] = True
                groups.append(idx[members])
        return groups

    def align_coincident(self, pattern, group, start: int, parent: _Region) -> np.ndarray:
        """Puts later neurons that, after the flip, lie on the flipped hyperplane on its new side.

        A neuron downstream can be constant under the old pattern and share
        the flipped neuron's hyperplane under the new one (``relu(relu(z))``:
        the outer ReLU reads ``z`` only once the inner one is on); crossing the
        hyperplane switches it too. Repeated once per layer, as each switch can
        expose the next.
        """
        pattern = pattern.copy()
        j = int(group[0])
        for _ in range(len(self.offsets) - 1):
            maps = _maps_under_pattern(self.dag, self.x0, _masks(pattern, self.offsets), start, parent.maps)
            rows = _rows(maps, pattern)
            later = np.flatnonzero(~rows.constant & (self.layer_of > self.layer_of[j]))
            cos = rows.normals[later] @ rows.normals[j]
            on_plane = _same_hyperplane(cos, rows.centre_margin[j], rows.centre_margin[later])
            wrong_side = later[on_plane & (cos < 0)]
            if wrong_side.size == 0:
                break
            pattern[wrong_side] = ~pattern[wrong_side]
        return pattern

    def run(self, max_regions: int, max_seconds: float | None = None, progress: Callable | None = None,
            every: float = 10.0) -> RegionCount:
        """Breadth-first search; stops at ``max_regions`` regions or after ``max_seconds`` (incomplete)."""
        n = int(self.offsets[-1])
        t0 = last = time.monotonic()
        first = self.seed()
        if first is None:
            # For r > 0 some region always meets the ball (their closures cover
            # it), so finding none means the seeding failed: not complete.
            return RegionCount(0, self.radius == 0.0, np.zeros((0, n), bool))
        visited = {first.pattern.tobytes()}
        found = [first.pattern]
        queue = deque([first])
        while queue:
            now = time.monotonic()
            if now - last >= every:  # a long count says that it is working
                last = now
                if progress is not None:
                    progress(len(found), len(queue), now - t0)
                log.info("count_regions: %d regions found, %d to expand, %.0fs", len(found), len(queue), now - t0)
            if max_seconds is not None and now - t0 > max_seconds:
                log.info("count_regions: stopped after %.1fs with %d regions (a lower bound)", now - t0, len(found))
                return RegionCount(len(found), False, np.stack(found))
            region = queue.popleft()
            for group in self.flip_candidates(region):
                pattern = region.pattern.copy()
                pattern[group] = ~pattern[group]
                key = pattern.tobytes()
                if key in visited:
                    continue
                visited.add(key)
                # Layers up to the group's first keep their maps; only later ones change.
                start = int(self.layer_of[group].min()) + 1
                neighbour = self.evaluate(pattern, start, region)
                if neighbour is None:
                    pattern = self.align_coincident(pattern, group, start, region)
                    key = pattern.tobytes()
                    if key in visited:
                        continue
                    visited.add(key)
                    neighbour = self.evaluate(pattern, start, region)
                if neighbour is None:
                    continue
                if len(found) == max_regions:
                    return RegionCount(len(found), False, np.stack(found))
                found.append(pattern)
                queue.append(neighbour)
        return RegionCount(len(found), True, np.stack(found))


def count_regions(
    network,
    x,
    radius,
    max_regions: int = 100_000,
    *,
    tol: float = 1e-9,
    max_seconds: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> RegionCount:
    """Counts the linear regions meeting the closed ball ``B_r(x)`` exactly.

    Breadth-first search over activation patterns from the centre's region,
    one conic feasibility program per candidate pattern (see the module
    docstring for the program, the tolerance and the proof that the search is
    complete for networks in general position). This is the quantity that
    Remark 2 of section 4 bounds by ``2^C``.

    Args:
      network: ``layers`` (``(W [fan_in, fan_out], b [fan_out])`` pairs, input
        to output; the last pair is the linear output layer, not counted) or
        a :class:`lr_jax.Network` (its maps are materialised as dense
        matrices in the dtype it was traced with, then searched in float64;
        trace it under ``jax.enable_x64`` for float64 maps).
      x: ``[d]`` centre (``input_shape`` for a Network; the ball is in the
        flattened input).
      radius: scalar ``r >= 0``. For ``r = 0`` the count is 1 when ``x`` is
        farther than ``tol`` from every boundary and 0 when it lies on one
        (no open region contains it).
      max_regions: stop after this many regions (``complete=False``).
      tol: a pattern counts only with a witness point in the closed ball at
        distance ``> tol`` from each of its hyperplanes (input units).
      max_seconds: stop after about this many seconds; the result then has
        ``complete=False`` and ``count`` is a lower bound. None: no limit.
      progress: called as ``progress(regions_found, patterns_queued,
        seconds)`` about every 10 s of a long search (the same is logged at
        INFO on the ``lr_jax.bounds.exact_count`` logger).

    The cost is one small conic program per candidate neighbour of every
    region found, about a millisecond each on a 2-core CPU (the README's
    measurement on a 36-32-32-32-2 net: 1,982 regions, 7,058 programs, 7.6 s
    at r = 0.05); the number of regions grows quickly with the radius, so a
    count at a radius where ``C`` is large can run for many minutes: pass
    ``max_seconds``.

    Returns:
      :class:`RegionCount`.

    Raises:
      ValueError: as :func:`lr_jax.bounds.local_bound` for bad shapes or values, or
        when ``max_regions < 1``.
    """
    result, _ = _count(network, x, radius, max_regions, tol, max_seconds, progress)
    return result


def count_regions_with_stats(network, x, radius, max_regions: int = 100_000, *, tol: float = 1e-9):
    """:func:`count_regions` and the number of conic programs it solved (for benchmarks)."""
    return _count(network, x, radius, max_regions, tol)


def _count(network, x, radius, max_regions, tol, max_seconds=None, progress=None) -> tuple[RegionCount, int]:
    prepare_inputs(network, x, radius, batched=False)  # identical validation to the kernel
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1, got {max_regions}.")
    # prepare_inputs casts to the JAX compute dtype (float32 by default); the
    # search keeps the caller's values in float64 instead.
    if isinstance(network, Network):
        dag = _dag_from_network(network)
    else:
        dag = _dag_from_layers([(W, b) for W, b in network])
    search = _Search(dag, np.asarray(x, np.float64).reshape(-1), float(radius), float(tol))
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}.")
    return search.run(int(max_regions), max_seconds, progress, PROGRESS_SECONDS), search.oracle.num_programs
