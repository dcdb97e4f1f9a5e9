"""Tightness report: every bound against the exact count, on trained and random nets.

Usage::

  python scripts/tightness.py RUN_DIR [RUN_DIR ...] --epoch 4 --points 10 --out docs/tightness_tables.md

For each training run (a folder of ``scripts/train.py``), restores the
checkpoint of ``--epoch``, rebuilds the run's four categories of points and,
on the first ``--points`` of each, evaluates Algorithm 1, the tight bound, the
exact count and the sampled lower bound at radii 0.1, 0.2, 0.4, 0.8. Then, on
random 2-input nets, compares the exact count with a dense-grid count.
Prints markdown tables (and writes them to ``--out``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from lr_jax import count_regions, layers_from_flax
from lr_jax.experiment.experiment import CATEGORIES, load_run, run_points, seed_runs
from lr_jax.experiment.run_files import RunFileError
from lr_jax.experiment.tightness import grid_count, sandwich_rows

RADII = (0.1, 0.2, 0.4, 0.8)


def _trained_tables(run_dirs, epoch, n_points, key):
    lines = [
        "| run | category | r | log2 paper (C) | log2 tight | log2 exact | log2 sampled | log2 paper/exact | log2 tight/exact | exact complete | violations |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    runs = [run for run_dir in run_dirs for run in seed_runs(load_run(run_dir, epoch))]  # a stack: its seeds
    for run in runs:
        cfg, layers = run.config, layers_from_flax(run.params)
        xs, (names, _, _) = run_points(run, CATEGORIES)
        name = f"depth {cfg.depth}, lr {cfg.lr}, seed {cfg.seed}, epoch {run.epoch}"
        for i, cat in enumerate(tqdm(CATEGORIES, desc=name, disable=not sys.stderr.isatty())):
            pts = xs[names == cat][:n_points]
            t0 = time.perf_counter()
            rows = sandwich_rows(layers, pts, RADII, jax.random.fold_in(key, i))
            logging.info("%s %s: %.1fs", name, cat, time.perf_counter() - t0)
            for r in rows:
                lines.append(
                    f"| {name} | {cat} | {r['radius']} | {r['log2_paper']:.2f} | {r['log2_tight']:.2f} | "
                    f"{r['log2_exact']:.2f} | {r['log2_sampled']:.2f} | {r['paper_over_exact']:.2f} | "
                    f"{r['tight_over_exact']:.2f} | {r['exact_complete']}/{r['n_points']} | {r['violations']} |"
                )
    return lines


def _grid_table(num_nets, resolution, seed):
    rng = np.random.default_rng(seed)
    lines = [
        "| net | r | exact count | grid count | exact - grid |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i in range(num_nets):
        dims = [2, 8, 8, 2] if i % 2 else [2, 12, 2]
        layers = [(rng.normal(size=(a, b)) / np.sqrt(a), rng.normal(size=b) * 0.3) for a, b in zip(dims[:-1], dims[1:])]
        x = rng.normal(size=2)
        for r in (0.5, 1.5):
            exact = count_regions(layers, x, r).count
            grid = grid_count(layers, x, r, resolution)
            lines.append(f"| {'-'.join(map(str, dims))} #{i} | {r} | {exact} | {grid} | {exact - grid} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--epoch", type=int, default=4)
    p.add_argument("--points", type=int, default=10)
    p.add_argument("--grid-nets", type=int, default=6)
    p.add_argument("--grid-resolution", type=int, default=1201)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    try:
        lines = _trained_tables(args.runs, args.epoch, args.points, jax.random.PRNGKey(args.seed))
    except (RunFileError, ValueError, FileNotFoundError) as e:  # a damaged or missing run file, a data source gone
        print(f"tightness.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    lines += ["", *_grid_table(args.grid_nets, args.grid_resolution, args.seed)]
    text = "\n".join(lines) + "\n"
    print(text)
    logging.info("total %.0fs", time.perf_counter() - t0)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
