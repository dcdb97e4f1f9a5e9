"""Local bounds around every point of a training run, from its checkpoint.

Usage::

  python scripts/bound.py checkpoint=outputs/runs/DATE/RUN radii=[0.1,0.2,0.4,0.8] category=test
  python scripts/bound.py checkpoint=outputs/runs/DATE/RUN methods=[paper,tight]
  python scripts/bound.py checkpoint=RUN/checkpoints epoch=10 category=all out=table.csv

Rebuilds the run's four categories of points from its recorded config
(``RUN/config.yaml``: same data source, scale and seed, hence the same points
as during training), restores the checkpoint's params and evaluates, per
point, Algorithm 1 (``C`` at every radius) and the certified single-region
radius, by default with the run's own search (``bound.r_max``,
``bound.num_grid``, ``bound.num_bisect``), so its radii match the run's
``metrics.jsonl``.

Writes a CSV with one row per (point, radius) (columns:
``lr_jax.experiment.saved_runs.CSV_COLUMNS``) atomically (``out``, default
``RUN/bounds_<epoch>.csv``), and logs a summary per category and radius.
Invalid arguments and missing or damaged run files fail with one line on
stderr and exit status 2. Config: ``configs/bound.yaml`` (schema
``BoundScriptConfig`` in lr_jax/experiment/config.py).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import NamedTuple

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from tqdm import tqdm

from lr_jax import layers_from_flax
from lr_jax.experiment.config import register_configs
from lr_jax.experiment.experiment import CATEGORIES, load_run, run_points
from lr_jax.experiment.run_files import RunFileError
from lr_jax.experiment.saved_runs import PointTable, evaluate_points, summary_lines, write_csv
from lr_jax.networks.layers import hidden_widths

register_configs()
log = logging.getLogger("bound")


class Job(NamedTuple):
    """The validated arguments of one invocation (None: the run's own setting)."""

    run_dir: Path
    epoch: int | None
    radii: tuple[float, ...]
    categories: tuple[str, ...]
    out: Path | None
    r_max: float | None
    num_grid: int | None
    num_bisect: int | None
    chunk_size: int | None
    tight: bool


def _run_dir(checkpoint: str) -> Path:
    path = Path(checkpoint).expanduser().absolute()
    if not path.is_dir():
        raise ValueError(f"checkpoint={checkpoint}: no such folder (pass a run folder of scripts/train.py).")
    run_dir = path.parent if path.name == "checkpoints" else path
    if not (run_dir / "checkpoints").is_dir():
        raise ValueError(f"checkpoint={checkpoint}: {run_dir} has no checkpoints/ folder; is it a training run?")
    return run_dir


def _radii(value) -> tuple[float, ...]:
    items = list(value)
    if not items:
        raise ValueError("radii=[]: give at least one radius, e.g. radii=[0.1,0.2,0.4,0.8].")
    for r in items:
        if not math.isfinite(r):
            raise ValueError(f"radii: {r!r} is not a finite number.")
        if r < 0:
            raise ValueError(f"radii: {r} is negative; radii must be >= 0.")
    return tuple(float(r) for r in items)


def _categories(category: str) -> tuple[str, ...]:
    if category == "all":
        return CATEGORIES
    if category not in CATEGORIES:
        raise ValueError(f"category={category}: unknown; choose one of {'|'.join(CATEGORIES)}|all.")
    return (category,)


def _at_least(name: str, value, minimum: int) -> int | None:
    if value is not None and value < minimum:
        raise ValueError(f"{name}={value}: must be an integer >= {minimum} or null.")
    return value


def _methods(methods) -> bool:
    """True when the tight bound is requested besides the paper's."""
    methods = list(methods)
    if [m for m in methods if m not in ("paper", "tight")] or "paper" not in methods:
        raise ValueError(f"methods={methods}: a list from paper|tight that includes paper, e.g. methods=[paper,tight].")
    return "tight" in methods


def parse_job(cfg: DictConfig) -> Job:
    """Checks every argument before any work. Raises ValueError (one line naming the argument)."""
    try:
        checkpoint = cfg.checkpoint
    except MissingMandatoryValue:
        raise ValueError("checkpoint=PATH is required (a run folder of scripts/train.py).") from None
    if cfg.r_max is not None and not (0 < cfg.r_max < math.inf):
        raise ValueError(f"r_max={cfg.r_max}: must be a finite number > 0 (or null: the run's bound.r_max).")
    return Job(
        run_dir=_run_dir(str(checkpoint)),
        epoch=_at_least("epoch", cfg.epoch, 0),
        radii=_radii(cfg.radii),
        categories=_categories(cfg.category),
        out=None if cfg.out is None else Path(cfg.out).expanduser().absolute(),
        r_max=cfg.r_max,
        num_grid=_at_least("num_grid", cfg.num_grid, 1),
        num_bisect=_at_least("num_bisect", cfg.num_bisect, 0),
        chunk_size=_at_least("chunk_size", cfg.chunk_size, 1),
        tight=_methods(cfg.methods),
    )


def run(job: Job) -> Path:
    """Evaluates the job and writes its CSV; returns the CSV path."""
    saved = load_run(job.run_dir, job.epoch)
    layers = layers_from_flax(saved.params)
    b = saved.config.bound
    r_max, num_grid, num_bisect = (
        b.r_max if job.r_max is None else job.r_max,
        b.num_grid if job.num_grid is None else job.num_grid,
        b.num_bisect if job.num_bisect is None else job.num_bisect,
    )
    log.info("run %s, epoch %d, hidden widths %s", saved.run_dir, saved.epoch, hidden_widths(layers))
    xs, (names, index, label) = run_points(saved, job.categories)
    log.info("%d points x %d radii; single-region search up to r_max=%g", xs.shape[0], len(job.radii), r_max)
    with tqdm(total=2 + job.tight, desc="bounds", disable=not sys.stderr.isatty()) as bar:
        c, l2, srr, tight = evaluate_points(
            layers, xs, job.radii, r_max=r_max, num_grid=num_grid, num_bisect=num_bisect,
            chunk_size=job.chunk_size, tight=job.tight, progress=bar,
        )
    table = PointTable(names, index, label, c, l2, srr, tight)
    out = job.out or saved.run_dir / f"bounds_{saved.epoch}.csv"
    write_csv(out, table, job.radii)
    for line in summary_lines(table, job.radii, job.categories):
        log.info("%s", line)
    log.info("wrote %s (%d rows)", out, c.size)
    return out


@hydra.main(version_base="1.3", config_path="../configs", config_name="bound")
def main(cfg: DictConfig) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every restore at INFO
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        run(parse_job(cfg))
    except (ValueError, FileNotFoundError, RunFileError) as e:  # e.g. a damaged checkpoint, a data source gone
        print(f"bound.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
