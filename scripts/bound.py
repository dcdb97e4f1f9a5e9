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
Invalid arguments (unknown keys, with or without ``+``, values of the wrong
type) and missing or damaged run files fail with one line on stderr and exit
status 2. Config: ``configs/bound.yaml`` (schema
``BoundScriptConfig`` in lr_jax/experiment/config.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from lr_jax.experiment.config import BoundJob, ConfigError, check_command_line, parse_bound_job, register_configs
from lr_jax.experiment.run_files import RunFileError
from lr_jax.experiment.saved_runs import evaluate_run, summary_lines, write_csv

register_configs()
log = logging.getLogger("bound")


def run(job: BoundJob) -> Path:
    """Evaluates the job, writes its CSV and logs the summary; returns the CSV path."""
    with tqdm(total=2 + job.tight, desc="bounds", disable=not sys.stderr.isatty()) as bar:
        result = evaluate_run(job, progress=bar)
    write_csv(result.out, result.table, job.radii)
    for line in summary_lines(result.table, job.radii, job.categories):
        log.info("%s", line)
    log.info("wrote %s (%d rows)", result.out, result.table.num_unstable.size)
    return result.out


@hydra.main(version_base="1.3", config_path="../configs", config_name="bound")
def main(cfg: DictConfig) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every restore at INFO
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        run(parse_bound_job(cfg))
    except (ValueError, FileNotFoundError, RunFileError) as e:  # e.g. a damaged checkpoint, a data source gone
        print(f"bound.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    try:  # unknown keys (with or without +) and values of the wrong type: one line, before Hydra runs
        check_command_line(sys.argv[1:], Path(__file__).resolve().parent.parent / "configs", "bound")
    except ConfigError as e:
        print(f"bound.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
