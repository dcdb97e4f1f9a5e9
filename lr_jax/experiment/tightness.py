"""How tight each bound is: the sandwich sampled <= exact <= 2^tight <= 2^C per ball.

:func:`sandwich_rows` evaluates every bound around given points and radii and
summarises them per radius; :func:`grid_count` counts regions in a disk by a
dense grid, an independent check of the exact counter in two dimensions.
Pure functions (no file I/O); ``scripts/tightness.py`` writes the report.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from lr_jax import count_regions, local_bounds, sample_regions


# The bounds come out of float32 kernels (the tight bound's log2 of a sum of binomials
# through logsumexp): a violation must exceed float32 rounding to count.
_LOG2_TOL = 1e-5


def sandwich_rows(
    layers,
    xs: np.ndarray,
    radii: Sequence[float],
    key: jax.Array,
    *,
    num_samples: int = 1024,
    num_chords: int = 16,
    max_regions: int = 20_000,
) -> list[dict]:
    """Every bound around ``xs [n, d]`` at every radius, summarised per radius.

    Returns one dict per radius with the means over points of
    ``log2`` of each bound (``paper`` = C, ``tight``, ``exact``, ``sampled``),
    ``paper_over_exact`` and ``tight_over_exact`` (means of the log2 ratios,
    i.e. log2 of the geometric-mean ratio), the number of points whose exact
    count completed within ``max_regions``, and ``violations``: points where
    the sandwich ``sampled <= exact <= 2^tight <= 2^paper`` failed (must be 0).
    """
    radii = list(radii)
    paper = np.asarray(local_bounds(layers, xs, radii, masks=False).log2_bound, np.float64)
    tight = np.asarray(local_bounds(layers, xs, radii, method="tight", masks=False).log2_bound, np.float64)
    sampled = np.asarray(sample_regions(layers, xs, radii, key, num_samples=num_samples, num_chords=num_chords))
    rows = []
    for k, r in enumerate(radii):
        counts = [count_regions(layers, np.asarray(x, np.float64), r, max_regions=max_regions) for x in xs]
        exact = np.array([c.count for c in counts], np.float64)
        complete = np.array([c.complete for c in counts])
        log2_exact = np.log2(np.maximum(exact, 1))
        # An incomplete count is itself only a lower bound: check it against the upper bounds only when complete.
        ok = ~complete | ((sampled[:, k] <= exact) & (log2_exact <= tight[:, k] + _LOG2_TOL))
        ok &= tight[:, k] <= paper[:, k] + _LOG2_TOL
        rows.append(
            {
                "radius": r,
                "n_points": int(xs.shape[0]),
                "log2_paper": float(paper[:, k].mean()),
                "log2_tight": float(tight[:, k].mean()),
                "log2_exact": float(log2_exact.mean()),
                "log2_sampled": float(np.log2(np.maximum(sampled[:, k], 1)).mean()),
                "paper_over_exact": float((paper[:, k] - log2_exact).mean()),
                "tight_over_exact": float((tight[:, k] - log2_exact).mean()),
                "exact_complete": int(complete.sum()),
                "violations": int((~ok).sum()),
            }
        )
    return rows


def grid_count(layers, x: np.ndarray, radius: float, resolution: int = 801) -> int:
    """Distinct activation patterns at the points of a ``resolution^2`` grid in a disk.

    Only for input dimension 2. A grid misses regions thinner than its
    spacing, so this is a lower bound that converges to the exact count as the
    resolution grows.
    """
    x = np.asarray(x, np.float64)
    if x.shape != (2,):
        raise ValueError(f"grid_count needs a 2-D input, got a point of shape {x.shape}.")
    t = np.linspace(-radius, radius, resolution)
    gx, gy = np.meshgrid(t, t)
    inside = gx**2 + gy**2 <= radius**2
    h = np.stack([gx[inside], gy[inside]], axis=1) + x
    patterns = []
    for W, b in layers[:-1]:
        a = h @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
        patterns.append(a > 0)
        h = np.maximum(a, 0.0)
    return len(np.unique(np.packbits(np.concatenate(patterns, axis=1), axis=1), axis=0))
