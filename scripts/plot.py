"""Report a sweep: ``python scripts/plot.py MULTIRUN_DIR [MULTIRUN_DIR ...] [--out DIR] [--labels a,b]``.

One folder: writes ``summary.csv``, ``claims.json``, ``claim_intervals.json``,
``claims.md`` (the paper's five observations per (lr, depth), each also as a
per-seed statistic with a 95 % bootstrap interval over seeds; on the exact
counts too when the runs counted regions), ``missing_jobs.json`` and the
Figure 3 images (``figure3``, ``figure3_radius``, ``figure3_log2`` .png/.pdf)
into ``--out`` (default: the folder).

Several folders (one setting each, e.g. ``outputs/multirun/robustness/*/``):
each gets its own report (in ``--out/<name>`` when ``--out`` is given, else
in the folder), and ``--out`` (required) gets ``robustness.md``,
``robustness_intervals.json`` and ``robustness_mean_c.png/.pdf``: every claim
x setting. Names are the folders' names, or ``--labels``.
Thin wrapper over lr_jax.experiment.sweep_report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("plot")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("multirun_dirs", type=Path, nargs="+", metavar="MULTIRUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="output folder (one sweep: default MULTIRUN_DIR; several: required)")
    p.add_argument("--labels", default=None, help="several sweeps: comma-separated setting names (default: folder names)")
    args = p.parse_args(argv)
    # Imported after the arguments: `--help` needs none of JAX or matplotlib.
    from lr_jax.experiment.run_files import RunFileError
    from lr_jax.experiment.sweep_report import report_settings, report_sweep, setting_names

    # force: an imported library may have configured the root logger already (the INFO lines would vanish).
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    dirs, several = args.multirun_dirs, len(args.multirun_dirs) > 1
    try:
        if several and args.out is None:
            raise ValueError("several sweep folders need --out DIR for the report comparing them.")
        names = setting_names(dirs, args.labels.split(",") if args.labels else None)
        reports = {}
        for name, d in zip(names, dirs):
            out = (args.out / name if several else args.out) if args.out else d
            reports[name] = report = report_sweep(d, out)
            for path in report.written:
                log.info("wrote %s", path)
            log.info("%s: %d complete jobs, %d missing", name, len(report.runs.complete), len(report.runs.missing))
            for m in report.runs.missing:
                if m["lr"] is None:
                    log.warning("damaged job %s: %s", m["dir"], m["reason"])
                else:
                    log.warning("missing job lr=%s depth=%s seed=%s: %s", m["lr"], m["depth"], m["seed"], m["reason"])
        if several:
            for path in report_settings(reports, args.out):
                log.info("wrote %s", path)
    except (FileNotFoundError, RunFileError) as e:  # no such folder, or a job's damaged file (named)
        log.error("%s", e)
        return 2
    except ValueError as e:  # no complete job, or bad arguments
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
