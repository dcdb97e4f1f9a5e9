"""Local bounds around every point of a study's categories, per point and summarised.

Shared by both studies. :func:`device_bounds` is the part that runs on the
device (pure: it composes with ``jax.vmap`` over stacked seeds);
:func:`category_results` adds the exact counts (host NumPy and a conic
solver) and the per-category summaries; :func:`rows_and_arrays` turns a
result into ``metrics.jsonl`` rows and ``bounds.npz`` fields.
:func:`measures_at_radii` and :func:`exact_counts_at` are the same at several
radii, with the cross-polytope proxy beside the certified counts (the
grokking study).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lr_jax import frame_complexity, local_bounds, sample_regions, single_region_radius
from lr_jax.experiment.bound_summary import summarise_category
from lr_jax.experiment.training_loop import show_progress


def device_bounds(layers, points: dict[str, jax.Array], bound_cfg, key: jax.Array) -> dict[str, jax.Array]:
    """The bounds that run on the device, per point; pure, so it composes with ``jax.vmap``.

    Algorithm 1's bound and the single-region radius go through the kernels
    with all categories as one batch (one compilation for the whole run,
    whatever the category sizes): ``log2_bound`` and ``single_region_radius``
    are ``[N]`` over the categories concatenated in order. ``tight`` and
    ``sampled`` (when in ``bound.methods``) add ``<category>_tight_log2_bound``
    and ``<category>_sampled_count`` (``[n]``, the sampled one with key
    ``fold_in(key, category index)``).
    """
    names, r, methods = list(points), bound_cfg.radius, bound_cfg.methods
    xs = jnp.concatenate([points[n] for n in names])
    out = {
        "log2_bound": local_bounds(layers, xs, [r], chunk_size=bound_cfg.chunk_size, masks=False).log2_bound[:, 0],
        "single_region_radius": single_region_radius(layers, xs, bound_cfg.r_max, bound_cfg.num_grid, bound_cfg.num_bisect).radius,
    }
    for i, name in enumerate(names):
        if "tight" in methods:
            tight = local_bounds(layers, points[name], [r], method="tight", chunk_size=bound_cfg.chunk_size, masks=False)
            out[f"{name}_tight_log2_bound"] = tight.log2_bound[:, 0]
        if "sampled" in methods:
            sampled = sample_regions(
                layers, points[name], [r], jax.random.fold_in(key, i), num_samples=bound_cfg.num_samples, num_chords=bound_cfg.num_chords
            )
            out[f"{name}_sampled_count"] = sampled[:, 0]
    return out


def category_results(
    layers, points: dict[str, Any], bound_cfg, arrays: dict[str, np.ndarray], subsets: dict[str, np.ndarray]
) -> dict[str, dict]:
    """Per category, the per-point arrays of :func:`device_bounds` and their summary.

    Runs the exact counter (host NumPy and a conic solver, not vmappable) when
    ``exact`` is in ``bound.methods``, on the points ``subsets[category]``
    (:func:`lr_jax.experiment.experiment.exact_subsets`), and summarises every
    other bound on that same subset beside it (:func:`_exact_counts`).

    Returns:
      Per category, ``{"log2_bound": [n], "single_region_radius": [n],
      "summary": {...}}`` with extra methods' per-point arrays and summary
      fields prefixed by their name.
    """
    names = list(points)
    splits = np.cumsum([points[n].shape[0] for n in names])[:-1]
    steps = tqdm(total=len(names), desc="bounds", leave=False, disable=not show_progress())
    out = {}
    for name, c, s in zip(names, np.split(arrays["log2_bound"], splits), np.split(arrays["single_region_radius"], splits)):
        summary = summarise_category(c, s)
        res = {"log2_bound": c, "single_region_radius": s}
        if f"{name}_tight_log2_bound" in arrays:
            t = res["tight_log2_bound"] = arrays[f"{name}_tight_log2_bound"]
            summary.update({f"tight_{k}": v for k, v in summarise_category(t).items() if k != "n_points"})
        if f"{name}_sampled_count" in arrays:
            sampled = res["sampled_count"] = arrays[f"{name}_sampled_count"]
            summary["sampled_mean_count"] = float(np.mean(sampled))
            summary["sampled_mean_log2_count"] = float(np.mean(np.log2(sampled)))
        if "exact" in bound_cfg.methods:
            res.update(exact_counts(layers, points[name], np.asarray(subsets[name]), bound_cfg, res, summary))
        res["summary"] = summary
        out[name] = res
        steps.update()
    steps.close()
    return out


def evaluate_bounds(
    layers, points: dict[str, jax.Array], bound_cfg, key: jax.Array, subsets: dict[str, np.ndarray]
) -> dict[str, dict]:
    """Every configured bound around every point of every category (one seed).

    ``subsets``: the points counted exactly per category (:func:`lr_jax.experiment.experiment.exact_subsets`).

    Returns:
      :func:`category_results` of :func:`device_bounds`.
    """
    arrays = {k: np.asarray(v) for k, v in device_bounds(layers, points, bound_cfg, key).items()}
    return category_results(layers, points, bound_cfg, arrays, subsets)


# log2 slack of the sandwich check: the tight bound is a float32 sum of log2 terms.
_LOG2_TOL = 1e-4


def exact_counts(layers, xs, index: np.ndarray, bound_cfg, res: dict, summary: dict) -> dict:
    """Exact region counts around the points ``xs[index]``, and every bound on that subset.

    Adds to ``summary``: ``exact_n_points``, ``exact_complete`` (no ball hit
    ``bound.exact_max_regions``), ``exact_mean_count``, ``exact_mean_log2_count``,
    ``exact_num_single_region`` (balls meeting one region), Algorithm 1's
    bound on the same points (``exact_subset_mean_bound``: mean ``2^C``,
    ``exact_subset_mean_log2_bound``, ``exact_subset_num_single_region``), the
    tight and sampled bounds there when computed, and
    ``exact_sandwich_violations``: points where
    ``sampled <= exact <= 2^tight <= 2^C`` fails, which must be 0 (a count
    stopped at the cap is a lower bound of the true one: it is checked against
    the upper bounds only).

    Returns:
      ``{"exact_count": [k], "exact_index": [k]}``.
    """
    from lr_jax import count_regions  # the exact counter needs a conic solver: only when asked for

    r = bound_cfg.radius
    xs = np.asarray(xs)
    counts = [count_regions(layers, xs[i], r, max_regions=bound_cfg.exact_max_regions) for i in index]
    c = np.array([rc.count for rc in counts], np.int64)
    complete = np.array([rc.complete for rc in counts], bool)
    k = int(index.size)
    paper = np.asarray(res["log2_bound"], np.float64)[index]
    log2_c = np.log2(np.maximum(c, 1))
    ok = log2_c <= paper + _LOG2_TOL
    summary.update({
        "exact_n_points": k,
        "exact_complete": bool(complete.all()),
        "exact_mean_count": float(np.mean(c)) if k else None,
        "exact_mean_log2_count": float(np.mean(log2_c)) if k else None,
        "exact_num_single_region": int(np.sum(c == 1)),
        "exact_subset_mean_bound": float(np.mean(np.exp2(paper))) if k else None,
        "exact_subset_mean_log2_bound": float(np.mean(paper)) if k else None,
        "exact_subset_num_single_region": int(np.sum(paper == 0)),
    })
    if "tight_log2_bound" in res:
        tight = np.asarray(res["tight_log2_bound"], np.float64)[index]
        ok &= (tight <= paper + _LOG2_TOL) & (log2_c <= tight + _LOG2_TOL)
        summary["exact_subset_tight_mean_log2_bound"] = float(np.mean(tight)) if k else None
    if "sampled_count" in res:
        sampled = np.asarray(res["sampled_count"])[index]
        ok &= ~complete | (sampled <= c)  # a count stopped at the cap is itself only a lower bound
        summary["exact_subset_sampled_mean_log2_count"] = float(np.mean(np.log2(sampled))) if k else None
    summary["exact_sandwich_violations"] = int(np.sum(~ok))
    return {"exact_count": c, "exact_index": np.asarray(index, np.int64)}


def common_fields(tr_loss: float, tr_acc: float, te_loss: float, te_acc: float) -> dict:
    """The classifier fields every row of an evaluation carries; ``diverged`` when a loss is not finite."""
    return {
        "train_loss": tr_loss,
        "train_accuracy": tr_acc,
        "test_loss": te_loss,
        "test_accuracy": te_acc,
        "diverged": not (math.isfinite(tr_loss) and math.isfinite(te_loss)),
    }


def rows_and_arrays(epoch: int, radius: float, result: dict, common: dict, seed: int | None) -> tuple[list, dict]:
    """One seed's ``metrics.jsonl`` rows (with a ``seed`` field when not None) and ``bounds.npz`` fields."""
    rows, per_point = [], {}
    head = {"epoch": epoch} if seed is None else {"epoch": epoch, "seed": seed}
    for name, res in result.items():
        rows.append({**head, "category": name, "radius": float(radius), **res["summary"], **common})
        for key, arr in res.items():
            if key != "summary":
                per_point[name if key == "log2_bound" else f"{name}_{key}"] = np.asarray(arr)
    return rows, per_point




def measures_at_radii(layers, points: dict[str, jax.Array], radii, methods, key: jax.Array, *, num_vertices: int = 50,
                      num_samples: int = 128, num_chords: int = 4) -> dict[str, jax.Array]:
    """Every device measure around every point of every category at every radius (pure: vmaps over seeds).

    Per category ``c`` (key ``fold_in(key, index of c)``) and radius, as asked
    in ``methods``: ``c_frame`` (:func:`lr_jax.frame_complexity`'s crossed
    neurons, a lower estimate of the neurons that cut the ball), ``c_paper``
    (Algorithm 1's ``C``: certified unstable neurons), ``c_tight`` and
    ``c_tight_log2`` (the tight bound's unstable neurons and ``log2`` region
    bound), ``c_sampled`` (regions found by sampling, a lower bound); each
    ``[n, R]``, with ``frame <= tight <= paper`` and ``sampled <= 2^tight_log2 <= 2^paper``.
    """
    out = {}
    for i, (name, xs) in enumerate(points.items()):
        k = jax.random.fold_in(key, i)
        if "frame" in methods:
            out[f"{name}_frame"] = frame_complexity(layers, xs, radii, key=jax.random.fold_in(k, 0), num_vertices=num_vertices).num_crossed
        if "paper" in methods:
            out[f"{name}_paper"] = local_bounds(layers, xs, radii, masks=False).num_unstable
        if "tight" in methods:
            tight = local_bounds(layers, xs, radii, method="tight", masks=False)
            out[f"{name}_tight"], out[f"{name}_tight_log2"] = tight.num_unstable, tight.log2_bound
        if "sampled" in methods:
            out[f"{name}_sampled"] = sample_regions(layers, xs, radii, jax.random.fold_in(k, 1), num_samples=num_samples, num_chords=num_chords)
    return out


def exact_counts_at(layers, xs: np.ndarray, radius: float, max_regions: int, max_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact region counts around ``xs [k, d]`` at ``radius`` (host): ``(count [k], complete [k])``.

    A count stopped by ``max_regions`` or ``max_seconds`` is a lower bound (``complete`` False).
    """
    from lr_jax import count_regions  # needs the `exact` extra's conic solver: only when asked for

    counts = [count_regions(layers, x, radius, max_regions=max_regions, max_seconds=max_seconds) for x in xs]
    return np.array([c.count for c in counts], np.int64), np.array([c.complete for c in counts], bool)
