"""Per-category summaries of local bounds, the rows of a run's ``metrics.jsonl``.

The mean of the upper bound ``2^C`` is dominated by a few points with large
``C``, so it is always reported beside the mean and median of ``C`` (its log2)
and the number of points with ``C = 0`` (a single linear region in the ball,
where the bound is exact; paper, section 5.2).
"""

from __future__ import annotations

import numpy as np


def summarise_category(log2_bound: np.ndarray, single_region_radius: np.ndarray | None = None) -> dict:
    """Summary statistics of one category's bounds.

    Args:
      log2_bound: ``[n]`` log2 of each point's bound (``C`` for Algorithm 1).
      single_region_radius: ``[n]`` certified single-region radii, optional.

    Returns:
      ``mean_bound`` (mean of ``2^C``, computed in float64), ``mean_log2_bound``,
      ``median_log2_bound``, ``std_log2_bound``, ``max_log2_bound``,
      ``num_single_region`` (points with ``C = 0``), ``n_points`` and, when
      radii are given, ``mean_single_region_radius`` and
      ``median_single_region_radius``.
    """
    c = np.asarray(log2_bound, dtype=np.float64)
    out = {
        "mean_bound": float(np.mean(np.exp2(c))),
        "mean_log2_bound": float(np.mean(c)),
        "median_log2_bound": float(np.median(c)),
        "std_log2_bound": float(np.std(c)),
        "max_log2_bound": float(np.max(c)),
        "num_single_region": int(np.sum(c == 0)),
        "n_points": int(c.size),
    }
    if single_region_radius is not None:
        s = np.asarray(single_region_radius, dtype=np.float64)
        out["mean_single_region_radius"] = float(np.mean(s))
        out["median_single_region_radius"] = float(np.median(s))
    return out
