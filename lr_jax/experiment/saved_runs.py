"""Bounds around the points of a saved training run, as a per-point table.

A run's points come back from its recorded config
(:func:`lr_jax.experiment.experiment.run_points`: same data source, scale and
seed, hence the same points as during training); :func:`evaluate_points`
evaluates Algorithm 1 at any radii and the certified single-region radius
around them with the public bound API, and :func:`write_csv` writes the
per-point table. Used by ``scripts/bound.py``. A run of several seeds trained
together (``seeds=K``) is read as its K per-seed runs
(:func:`lr_jax.experiment.experiment.seed_runs`): the table gains a ``seed``
column, first.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

import lr_jax
from lr_jax.experiment.bound_summary import summarise_category
from lr_jax.experiment.experiment import load_run, run_points, seed_runs
from lr_jax.experiment.run_files import atomic_write
from lr_jax.networks.layers import hidden_widths

log = logging.getLogger(__name__)

CSV_COLUMNS = ("point_index", "category", "label", "radius", "num_unstable", "log2_bound", "single_region_radius")
TIGHT_COLUMN = "tight_log2_bound"
SEED_COLUMN = "seed"  # first column, only for a run of several seeds


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
      seed: ``[N]`` seed of each point's network (a run of several seeds), or
        None (one seed).
    """

    category: np.ndarray
    point_index: np.ndarray
    label: np.ndarray
    num_unstable: np.ndarray
    log2_bound: np.ndarray
    single_region_radius: np.ndarray
    tight_log2_bound: np.ndarray | None = None
    seed: np.ndarray | None = None


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass


def evaluate_points(
    layers,
    xs: np.ndarray,
    radii: Sequence[float],
    *,
    r_max: float,
    num_grid: int = 16,
    num_bisect: int = 12,
    chunk_size: int | None = None,
    tight: bool = False,
    progress=None,
):
    """Algorithm 1 at every radius and the single-region radius around every point.

    All points go through the kernels in one call each (they bound their own
    memory); ``progress.update()`` (e.g. a ``tqdm`` bar of 2 or 3 steps) is
    called after each.

    Returns:
      ``C [N, R]`` (int32), ``log2_bound [N, R]``, single-region radii ``[N]``
      and, when ``tight``, the tight bound's log2 ``[N, R]`` (else None).
    """
    progress = progress or _NoProgress()
    xs = jnp.asarray(xs, jnp.float32)
    lb = lr_jax.local_bounds(layers, xs, radii, chunk_size=chunk_size, masks=False)
    progress.update()
    srr = lr_jax.single_region_radius(layers, xs, r_max, num_grid, num_bisect)
    progress.update()
    t_out = None
    if tight:
        tb = lr_jax.local_bounds(layers, xs, radii, method="tight", chunk_size=chunk_size, masks=False)
        t_out = np.asarray(tb.log2_bound, np.float32)
        progress.update()
    return (
        np.asarray(lb.num_unstable, np.int32),
        np.asarray(lb.log2_bound, np.float32),
        np.asarray(srr.radius, np.float32),
        t_out,
    )


class RunBounds(NamedTuple):
    """What :func:`evaluate_run` computed: the table, the checkpoint's epoch, where the CSV goes."""

    table: PointTable
    epoch: int
    out: Path


def evaluate_run(job, progress=None) -> RunBounds:
    """Bounds around a saved run's points for a ``scripts/bound.py`` job (:class:`~lr_jax.experiment.config.BoundJob`).

    The single-region search defaults to the run's own (``bound.r_max``,
    ``num_grid``, ``num_bisect``), so its radii equal the run's ``bounds.npz``.

    Raises:
      RunFileError: a missing or damaged run file (one line).
    """
    saved = load_run(job.run_dir, job.epoch)
    runs = seed_runs(saved)
    tables = [_seed_table(run, job, progress) for run in runs]
    if len(runs) == 1:
        table = tables[0]
    else:  # one table over the seeds, each point tagged with its seed
        seeds = [np.full(t.category.shape[0], run.config.seed) for run, t in zip(runs, tables)]
        fields = {f: None if getattr(tables[0], f) is None else np.concatenate([getattr(t, f) for t in tables]) for f in PointTable._fields}
        table = PointTable(**{**fields, "seed": np.concatenate(seeds)})
    out = job.out or saved.run_dir / f"bounds_{saved.epoch}.csv"
    return RunBounds(table, saved.epoch, out)


def _seed_table(saved, job, progress) -> PointTable:
    """The table of one seed's network around that seed's points."""
    layers = lr_jax.layers_from_flax(saved.params)
    b = saved.config.bound
    r_max = b.r_max if job.r_max is None else job.r_max
    num_grid = b.num_grid if job.num_grid is None else job.num_grid
    num_bisect = b.num_bisect if job.num_bisect is None else job.num_bisect
    log.info("run %s, seed %d, epoch %d, hidden widths %s", saved.run_dir, saved.config.seed, saved.epoch, hidden_widths(layers))
    xs, (names, index, label) = run_points(saved, job.categories)
    log.info("%d points x %d radii; single-region search up to r_max=%g", xs.shape[0], len(job.radii), r_max)
    c, l2, srr, tight = evaluate_points(
        layers, xs, job.radii, r_max=r_max, num_grid=num_grid, num_bisect=num_bisect,
        chunk_size=job.chunk_size, tight=job.tight, progress=progress,
    )
    return PointTable(names, index, label, c, l2, srr, tight)


def write_csv(path: Path, table: PointTable, radii: Sequence[float]) -> None:
    """One row per (point, radius); written to ``path.tmp`` then renamed.

    Columns: :data:`CSV_COLUMNS`, plus ``tight_log2_bound`` when the table has it,
    after a first ``seed`` column when it has seeds.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: _write_rows(tmp, table, radii))


def _write_rows(tmp: Path, table: PointTable, radii: Sequence[float]) -> None:
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        tight, seed = table.tight_log2_bound, table.seed
        seed_col = (SEED_COLUMN,) if seed is not None else ()
        w.writerow(seed_col + CSV_COLUMNS + ((TIGHT_COLUMN,) if tight is not None else ()))
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
                head = (int(seed[i]),) if seed is not None else ()
                w.writerow(head + row + ((f"{tight[i, k]:.9g}",) if tight is not None else ()))


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
