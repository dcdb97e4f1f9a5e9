"""Local bounds around every point of a training run, from its checkpoint.

Usage::

  python scripts/bound.py checkpoint=outputs/runs/DATE/RUN radii=[0.1,0.2,0.4,0.8] data=test
  python scripts/bound.py checkpoint=outputs/runs/DATE/RUN methods=[paper,tight]
  python scripts/bound.py checkpoint=RUN/checkpoints epoch=10 category=all out=table.csv

Rebuilds the run's four categories of points from its saved config
(``RUN/.hydra/config.yaml``: same data source, scale and seed, hence the same
points as during training), restores the checkpoint's params and evaluates,
per point, Algorithm 1 (``lr_jax.local_bounds``, ``C`` at every radius) and the
certified single-region radius (``lr_jax.bounds.single_region_radius`` up to
``r_max``). Points go through in fixed-size host chunks (the last one padded,
so nothing recompiles) with a progress bar.

Writes a CSV with one row per (point, radius), columns ``point_index``
(within its category), ``category``, ``label`` (-1 for the random
categories), ``radius``, ``num_unstable``, ``log2_bound``,
``single_region_radius``, atomically (``out``, default
``RUN/bounds_<epoch>.csv``), and logs a summary per category and radius.
Invalid arguments fail with one line on stderr and exit status 2 before any
work. Config: ``configs/bound_cli/bound.yaml``.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lr_jax import layers_from_flax  # noqa: E402
from lr_jax.networks.layers import hidden_widths  # noqa: E402
from lr_jax.experiment.saved_runs import PointTable, evaluate_points, load_points, summary_lines, write_csv  # noqa: E402
from lr_jax.experiment.train import CATEGORIES, restore_params  # noqa: E402

log = logging.getLogger("bound")

CSV_COLUMNS = ("point_index", "category", "label", "radius", "num_unstable", "log2_bound", "single_region_radius")


class Job(NamedTuple):
    """The validated arguments of one invocation."""

    run_dir: Path
    epoch: int | None
    radii: tuple[float, ...]
    categories: tuple[str, ...]
    out: Path | None
    r_max: float
    num_grid: int
    num_bisect: int
    chunk_points: int | None
    chunk_size: int | None
    tight: bool


# ---------------------------------------------------------------------------
# Arguments


def _run_dir(checkpoint: str) -> Path:
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise ValueError(f"checkpoint={checkpoint}: no such folder (pass a run folder of scripts/train.py).")
    run_dir = path.parent if path.name == "checkpoints" else path
    if not (run_dir / "checkpoints").is_dir():
        raise ValueError(f"checkpoint={checkpoint}: {run_dir} has no checkpoints/ folder; is it a training run?")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise ValueError(
            f"checkpoint={checkpoint}: {run_dir}/.hydra/config.yaml is missing; the run's config is needed "
            "to rebuild its data (runs of scripts/train.py save it)."
        )
    return run_dir


def _epochs(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def _check_epoch(run_dir: Path, epoch) -> int | None:
    saved = _epochs(run_dir)
    if not saved:
        raise ValueError(f"checkpoint: no saved epoch under {run_dir}/checkpoints.")
    if epoch is None:
        return None
    if not isinstance(epoch, int) or epoch not in saved:
        raise ValueError(f"epoch={epoch}: not saved in {run_dir}/checkpoints; saved epochs are {saved}.")
    return epoch


def _radii(value) -> tuple[float, ...]:
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError("radii=[]: give at least one radius, e.g. radii=[0.1,0.2,0.4,0.8].")
    radii = []
    for r in items:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ValueError(f"radii: {r!r} is not a finite number.")
        if r < 0:
            raise ValueError(f"radii: {r} is negative; radii must be >= 0.")
        radii.append(float(r))
    return tuple(radii)


def _categories(category) -> tuple[str, ...]:
    if category == "all":
        return CATEGORIES
    if category not in CATEGORIES:
        raise ValueError(f"category={category}: unknown; choose one of {'|'.join(CATEGORIES)}|all.")
    return (category,)


def _positive_int(name: str, value, minimum: int = 1, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value}: must be an integer >= {minimum}{' or null' if optional else ''}.")
    return value


def parse_job(cfg: DictConfig) -> Job:
    """Checks every argument (and that the run's files exist) before any work.

    Raises:
      ValueError: one line naming the argument and the fix.
    """
    try:
        checkpoint = cfg.checkpoint
    except MissingMandatoryValue:
        raise ValueError("checkpoint=PATH is required (a run folder of scripts/train.py).") from None
    run_dir = _run_dir(str(checkpoint))
    radii = _radii(cfg.radii)
    r_max = 2 * max(radii) if cfg.r_max is None else cfg.r_max
    if isinstance(r_max, bool) or not isinstance(r_max, (int, float)) or not (0 < r_max < math.inf):
        raise ValueError(f"r_max={r_max}: must be a finite number > 0 (default 2 * max(radii), so some radius > 0).")
    return Job(
        run_dir=run_dir,
        epoch=_check_epoch(run_dir, cfg.epoch),
        radii=radii,
        categories=_categories(cfg.category),
        out=None if cfg.out is None else Path(cfg.out),
        r_max=float(r_max),
        num_grid=_positive_int("num_grid", cfg.num_grid),
        num_bisect=_positive_int("num_bisect", cfg.num_bisect, minimum=0),
        chunk_points=_positive_int("chunk_points", cfg.chunk_points, optional=True),
        chunk_size=_positive_int("chunk_size", cfg.chunk_size, optional=True),
        tight=_methods(cfg.methods),
    )


def _methods(methods) -> bool:
    """True when the tight bound is requested besides the paper's."""
    methods = list(methods)
    unknown = [m for m in methods if m not in ("paper", "tight")]
    if unknown or "paper" not in methods:
        raise ValueError(f"methods={methods}: a list from paper|tight that includes paper, e.g. methods=[paper,tight].")
    return "tight" in methods


# ---------------------------------------------------------------------------
# Work


def run(job: Job) -> Path:
    """Evaluates the job and writes its CSV; returns the CSV path."""
    run_cfg = OmegaConf.load(job.run_dir / ".hydra" / "config.yaml")
    params, epoch = restore_params(job.run_dir, job.epoch)
    layers = layers_from_flax(params)
    log.info("run %s, epoch %d, hidden widths %s", job.run_dir, epoch, hidden_widths(layers))
    xs, (names, index, label) = load_points(run_cfg, job.categories)
    log.info("%d points x %d radii", xs.shape[0], len(job.radii))
    c, l2, srr, tight = evaluate_points(
        layers,
        xs,
        job.radii,
        r_max=job.r_max,
        num_grid=job.num_grid,
        num_bisect=job.num_bisect,
        chunk_points=job.chunk_points,
        chunk_size=job.chunk_size,
        tight=job.tight,
        progress=lambda it, total: tqdm(it, total=total, unit="chunk", desc="bounds"),
    )
    table = PointTable(names, index, label, c, l2, srr, tight)
    out = job.out or job.run_dir / f"bounds_{epoch}.csv"
    write_csv(out, table, job.radii)
    for line in summary_lines(table, job.radii, job.categories):
        log.info("%s", line)
    log.info("wrote %s (%d rows; single-region search up to r_max=%g)", out, c.size, job.r_max)
    return out


@hydra.main(version_base="1.3", config_path="../configs/bound_cli", config_name="bound")
def main(cfg: DictConfig) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every restore at INFO
    try:
        job = parse_job(cfg)
    except ValueError as e:
        _fail(e)
    try:
        run(job)
    except (ValueError, FileNotFoundError) as e:  # e.g. the run's data source is gone
        _fail(e)


def _fail(error: Exception) -> None:
    print(f"bound.py: error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
