"""A NumPy reference of Algorithm 1 on graphs, from nets written as dense matrices.

Each test net is given as hand-written *segments*: for ReLU layer ``t`` a
plain JAX function of its sources' values returning ``z_t``. The composite
map between ReLU layers is obtained as a Jacobian of that function
(``jax.jacfwd``, float64) and the offset as its value at zero, so the reference
shares nothing with lr_jax's tracer or its structured maps. The recursion is
the paper's layer step with the multi-source rule (every source's
``P = 0`` neurons carry ``L``, ``P = 1`` neurons ``|M| U``; the input has
``L = I``, ``P = 0``), vectorised per layer in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def dense_segments(segments, shapes):
    """Dense ``(sources, {s: M [n_s, n_t]}, c [n_t])`` per layer.

    Args:
      segments: list of ``(sources, fn)``; ``fn(*values)`` maps the sources'
        values (in their shapes) to the layer's pre-activation.
      shapes: node shapes, ``shapes[0]`` the input's.
    """
    out = []
    for sources, fn in segments:
        zeros = [jnp.zeros(shapes[s]) for s in sources]  # float64 under enable_x64
        c = np.asarray(fn(*zeros), np.float64).reshape(-1)
        maps = {}
        for i, s in enumerate(sources):
            def part(v, i=i):
                args = list(zeros)
                args[i] = v
                return fn(*args)

            jac = jax.jacfwd(part)(zeros[i])  # [*S_t, *S_s]
            maps[s] = np.asarray(jac, np.float64).reshape(c.size, -1).T
        out.append((tuple(sources), maps, c))
    return out


def graph_algorithm1(dense, x, r: float):
    """Algorithm 1 with the multi-source step; returns ``(C, [S_t], [P_t], [U_t])`` (flat per layer)."""
    x = np.asarray(x, np.float64).reshape(-1)
    d = x.size
    h, L = {0: x}, {0: np.eye(d)}
    P, U = {0: np.zeros(d, bool)}, {0: np.zeros(d)}
    S_all, P_all, U_all = [], [], []
    for t, (sources, maps, c) in enumerate(dense, start=1):
        a = c + sum(h[s] @ maps[s] for s in sources)
        lin = sum((maps[s] * ~P[s][:, None]).T @ L[s] for s in sources)  # [n, d]
        usum = sum((np.abs(maps[s]) * P[s][:, None]).T @ U[s] for s in sources)
        u = r * np.linalg.norm(lin, axis=1) + usum
        neg = a < 0
        dead = neg & (u + a < 0)
        pos_stable = ~neg & (u < a)
        linear = pos_stable & (usum == 0)
        S = ~(dead | pos_stable)
        Pt = ~(dead | linear)
        Ut = np.where(dead, 0.0, np.where(neg, u + a, u))
        L[t] = np.where(linear[:, None], lin, 0.0)
        P[t], U[t] = Pt, Ut
        h[t] = np.maximum(a, 0.0)
        S_all.append(S)
        P_all.append(Pt)
        U_all.append(Ut)
    return int(sum(s.sum() for s in S_all)), S_all, P_all, U_all


def graph_patterns(dense, xs):
    """Activation patterns (``z > 0``, all layers flattened) of points ``[n, d]``."""
    out = []
    for x in np.asarray(xs, np.float64):
        h = {0: x.reshape(-1)}
        bits = []
        for t, (sources, maps, c) in enumerate(dense, start=1):
            a = c + sum(h[s] @ maps[s] for s in sources)
            bits.append(a > 0)
            h[t] = np.maximum(a, 0.0)
        out.append(np.concatenate(bits))
    return np.array(out)


def _relaxation(lo, hi, active, dead):
    width = hi - lo
    chord = np.clip(np.where(width > 0, hi / np.where(width > 0, width, 1.0), 0.0), 0.0, 1.0)
    alpha = (hi >= -lo).astype(float)
    unstable = ~(active | dead)
    lower = np.where(active, 1.0, np.where(dead, 0.0, alpha))
    upper = np.where(active, 1.0, np.where(dead, 0.0, chord))
    return lower, upper, np.where(unstable, -chord * lo, 0.0)


def graph_crown(dense, x, r: float, guard: float = 1024 * np.finfo(np.float64).eps):
    """The tight bound's certified masks from dense matrices (float64): ``[S_tight_t]`` flat per layer.

    CROWN's backward linear bounds with every neuron's rows as dense rows,
    intersected with Algorithm 1's intervals ``A -+ U~``, certified past the
    rounding guard, never above the paper's ``S``: the rule of
    :mod:`lr_jax.bounds.tight_bound`, written independently on the dense maps.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    _, S_paper, _, U = graph_algorithm1(dense, x, r)
    h, relax, out = {0: x}, {}, []
    for t, (sources, maps, c) in enumerate(dense, start=1):
        a = c + sum(h[s] @ maps[s] for s in sources)
        h[t] = np.maximum(a, 0.0)
        n = a.size
        coef = {s: np.concatenate([maps[s].T, -maps[s].T]) for s in sources}
        const = np.concatenate([c, -c])
        for k in range(t - 1, 0, -1):
            if k not in coef:
                continue
            ck = coef.pop(k)
            lower, upper, offset = relax[k]
            positive = ck >= 0
            const = const + np.sum(np.where(positive, 0.0, ck * offset), axis=1)
            ck = np.where(positive, ck * lower, ck * upper)
            src, kmaps, kc = dense[k - 1]
            const = const + ck @ kc
            for s in src:
                coef[s] = coef.get(s, 0.0) + ck @ kmaps[s].T
        c0 = coef[0]
        bound = c0 @ x + const - r * np.linalg.norm(c0, axis=1)
        lo, hi = bound[:n], -bound[n:]
        spread = np.where(a < 0, U[t - 1] - a, U[t - 1])
        lo, hi = np.maximum(lo, a - spread), np.minimum(hi, a + spread)
        g = guard * (np.abs(lo) + np.abs(hi))
        stable = ~S_paper[t - 1]
        active = (stable & (a > 0)) | (lo > g)
        dead = (stable & (a < 0)) | (hi < -g)
        relax[t] = _relaxation(lo, hi, active, dead)
        out.append(~(active | dead) & S_paper[t - 1])
    return out
