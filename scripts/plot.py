"""Aggregate a Figure 3 sweep and draw its figures: ``python scripts/plot.py MULTIRUN_DIR [--out DIR]``.

Writes ``summary.csv``, ``claims.json``, ``claim_intervals.json`` and
``claims.md`` (the paper's five observations checked per (lr, depth), and
each as a per-seed statistic with a 95 % bootstrap interval over seeds,
lr_jax.experiment.claims), (mean, std and n over seeds of every metric per
(lr, depth, category, epoch)), ``missing_jobs.json``, ``figure3.png/.pdf``,
``figure3_radius.png/.pdf`` and ``figure3_log2.png/.pdf``. Thin wrapper over
lr_jax.experiment.sweep and lr_jax.experiment.plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lr_jax.experiment.claims import check_claims, claim_intervals, claims_markdown, intervals_markdown
from lr_jax.experiment.plots import plot_figure3
from lr_jax.experiment.run_files import RunFileError
from lr_jax.experiment.sweep import collect_runs, summarise, write_csv

log = logging.getLogger("plot")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("multirun_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: MULTIRUN_DIR)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs = collect_runs(args.multirun_dir)
    except (FileNotFoundError, RunFileError) as e:  # no such folder, or a job's damaged file (named)
        log.error("%s", e)
        return 2
    if not runs.rows:
        log.error("no complete job under %s (missing: %d).", args.multirun_dir, len(runs.missing))
        return 1
    out = args.out or args.multirun_dir
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs.rows)
    write_csv(summary, out / "summary.csv")
    (out / "missing_jobs.json").write_text(json.dumps(runs.missing, indent=2) + "\n")
    claims = check_claims(runs.rows)
    (out / "claims.json").write_text(json.dumps(claims, indent=2) + "\n")
    intervals = claim_intervals(runs.rows) + claim_intervals(runs.rows, "exact_mean_log2_count")
    (out / "claim_intervals.json").write_text(json.dumps(intervals, indent=2) + "\n")
    (out / "claims.md").write_text(
        claims_markdown(claims)
        + intervals_markdown([r for r in intervals if r["metric"] != "exact_mean_log2_count"],
                             "Verdicts with 95 % intervals over seeds (upper bound C)")
        + intervals_markdown([r for r in intervals if r["metric"] == "exact_mean_log2_count"],
                             "Verdicts with 95 % intervals over seeds (exact counts, log2)")
    )
    for path in plot_figure3(summary, out):
        log.info("wrote %s", path)
    log.info("%d complete jobs, %d missing", len(runs.complete), len(runs.missing))
    for m in runs.missing:
        log.warning("missing job lr=%s depth=%s seed=%s: %s", m["lr"], m["depth"], m["seed"], m["reason"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
