"""Report the grokking study: ``python scripts/grokking_report.py MULTIRUN_DIR [--out DIR]``.

Reads every complete run of a grokking sweep (``python scripts/train.py -m
experiment=grokking grokking.alpha=1,8``) and writes into ``--out`` (default:
the folder) the figures ``grokking_r<i>.png`` (both alphas, one radius each),
``grokking_tables.md`` (verdicts of H1-H4, every test, the trajectories;
with ``--calibrate N`` the three-phase test's simulated false-held rate and power)
and ``grokking_tests.json``. Thin wrapper over lr_jax.experiment.grokking_report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("grokking_report")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("multirun_dir", type=Path, metavar="MULTIRUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: MULTIRUN_DIR)")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="also simulate the three-phase test's false-held rate and power with N replicates per scenario")
    args = p.parse_args(argv)
    from lr_jax.experiment.grokking_report import report_study  # after the arguments: --help needs no JAX
    from lr_jax.experiment.run_files import RunFileError

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    try:
        for path in report_study(args.multirun_dir, args.out or args.multirun_dir, calibrate=args.calibrate):
            log.info("wrote %s", path)
    except (FileNotFoundError, RunFileError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
