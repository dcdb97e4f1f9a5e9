"""Bounds around the points of a saved training run, as a per-point table.

Rebuilds a run's four categories of points from its saved config (same data
source, scale and seed, hence the same points as during training), evaluates
Algorithm 1 at any radii and the certified single-region radius in fixed-size
host chunks, and writes the per-point table as CSV. Used by
``scripts/bound.py``; this module reads the run's data and writes files.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from lr_jax.experiment.bound_summary import summarise_category
from lr_jax.bounds.core import default_chunk_size
from lr_jax import local_bounds
from lr_jax.experiment.run_files import atomic_write
from lr_jax.bounds.single_region_radius import single_region_radius
from lr_jax.experiment.train import category_points, load_categories, run_keys

CSV_COLUMNS = ("point_index", "category", "label", "radius", "num_unstable", "log2_bound", "single_region_radius")


class PointTable(NamedTuple):
    """Per-point results of the selected categories, in category order.

    Attributes:
      category: ``[N]`` category name of each point.
      point_index: ``[N]`` index of the point within its category.
      label: ``[N]`` class label (0/1), -1 for random points.
      num_unstable: ``[N, R]`` Algorithm 1's ``C`` per radius.
      log2_bound: ``[N, R]`` log2 of the bound per radius.
      single_region_radius: ``[N]`` certified single-region radius.
      tight_log2_bound: ``[N, R]`` log2 of the tight bound, or None when not
        requested.
    """

    category: np.ndarray
    point_index: np.ndarray
    label: np.ndarray
    num_unstable: np.ndarray
    log2_bound: np.ndarray
    single_region_radius: np.ndarray
    tight_log2_bound: np.ndarray | None = None


def load_points(run_cfg, categories: Sequence[str]):
    """The run's points of ``categories``, rebuilt as during training.

    Returns:
      ``xs [N, d]`` (float32, categories in the given order) and the per-point
      ``(category [N], point_index [N], label [N])`` of :class:`PointTable`.
    """
    cats, splits = load_categories(run_cfg, run_keys(run_cfg.seed).data)
    points = category_points(cats)
    labels = {"train": cats.train_y, "test": cats.test_y}
    xs, names, index, label = [], [], [], []
    for c in categories:
        n = points[c].shape[0]
        xs.append(np.asarray(points[c], np.float32))
        names.append(np.full(n, c))
        index.append(np.arange(n))
        label.append(np.asarray(labels[c]) if c in labels else np.full(n, -1))
    return np.concatenate(xs), (np.concatenate(names), np.concatenate(index), np.concatenate(label).astype(np.int64))


def default_chunk_points(layers, num_radii: int, num_grid: int) -> int:
    """Points per host chunk: the pairs ``local_bounds`` puts in one chunk,
    divided by the widest per-point batch (the single-region grid or the
    radii), so that a chunk's working set matches the kernel's."""
    return max(1, default_chunk_size(layers) // max(num_grid, num_radii))


def _padded_chunks(xs: np.ndarray, chunk: int):
    """Yields ``(start, count, x [chunk, d])``; the last chunk repeats its last row."""
    for start in range(0, xs.shape[0], chunk):
        x = xs[start : start + chunk]
        count = x.shape[0]
        if count < chunk:
            x = np.concatenate([x, np.repeat(x[-1:], chunk - count, axis=0)])
        yield start, count, x


def evaluate_points(
    layers,
    xs: np.ndarray,
    radii: Sequence[float],
    *,
    r_max: float,
    num_grid: int = 16,
    num_bisect: int = 12,
    chunk_points: int | None = None,
    chunk_size: int | None = None,
    tight: bool = False,
    progress: Callable[[Iterable, int], Iterable] = lambda it, total: it,
):
    """Algorithm 1 at every radius and the single-region radius, over host chunks.

    Points go through in chunks of ``chunk_points`` (default
    :func:`default_chunk_points`), the last one padded, so nothing recompiles;
    ``progress(iterable, total)`` wraps the chunk loop (e.g. ``tqdm``).

    Returns:
      ``C [N, R]`` (int32), ``log2_bound [N, R]``, single-region radii ``[N]``
      and, when ``tight``, the tight bound's log2 ``[N, R]`` (else None).
    """
    layers = tuple((jnp.asarray(W), jnp.asarray(b)) for W, b in layers)  # on device once, not per chunk
    n, r = xs.shape[0], len(radii)
    chunk = min(n, chunk_points or default_chunk_points(layers, r, num_grid))
    c_out, l_out, s_out = np.zeros((n, r), np.int32), np.zeros((n, r), np.float32), np.zeros(n, np.float32)
    t_out = np.zeros((n, r), np.float32) if tight else None
    for start, count, x in progress(_padded_chunks(xs, chunk), -(-n // chunk)):
        if tight:
            tb = local_bounds(layers, x, radii, method="tight", chunk_size=chunk_size, masks=False)
            t_out[start : start + count] = np.asarray(tb.log2_bound)[:count]
        lb = local_bounds(layers, x, radii, chunk_size=chunk_size, masks=False)
        sr = single_region_radius(layers, x, r_max, num_grid, num_bisect)
        c_out[start : start + count] = np.asarray(lb.num_unstable)[:count]
        l_out[start : start + count] = np.asarray(lb.log2_bound)[:count]
        s_out[start : start + count] = np.asarray(sr.radius)[:count]
    return c_out, l_out, s_out, t_out


def write_csv(path: Path, table: PointTable, radii: Sequence[float]) -> None:
    """One row per (point, radius); written to ``path.tmp`` then renamed.

    Columns: :data:`CSV_COLUMNS`, plus ``tight_log2_bound`` when the table has it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: _write_rows(tmp, table, radii))


def _write_rows(tmp: Path, table: PointTable, radii: Sequence[float]) -> None:
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        tight = table.tight_log2_bound
        w.writerow(CSV_COLUMNS + (("tight_log2_bound",) if tight is not None else ()))
        for i in range(table.category.shape[0]):
            for k, r in enumerate(radii):
                row = (
                    int(table.point_index[i]),
                    table.category[i],
                    int(table.label[i]),
                    r,
                    int(table.num_unstable[i, k]),
                    f"{table.log2_bound[i, k]:.9g}",
                    f"{table.single_region_radius[i]:.9g}",
                )
                w.writerow(row + ((f"{tight[i, k]:.9g}",) if tight is not None else ()))


def summary_lines(table: PointTable, radii, categories) -> list[str]:
    """The summary table: per category and radius, n, mean and median ``C``,
    points with ``C = 0`` and the mean single-region radius."""
    lines = [
        f"{'category':9s} {'radius':>7s} {'n':>6s} {'mean C':>8s} {'median C':>9s} {'C=0':>6s} {'mean single-region r':>21s}"
    ]
    for c in categories:
        sel = table.category == c
        for k, r in enumerate(radii):
            s = summarise_category(table.log2_bound[sel, k], table.single_region_radius[sel])
            lines.append(
                f"{c:9s} {r:7.3g} {s['n_points']:6d} {s['mean_log2_bound']:8.2f} {s['median_log2_bound']:9.1f} "
                f"{s['num_single_region']:6d} {s['mean_single_region_radius']:21.4g}"
            )
    return lines
