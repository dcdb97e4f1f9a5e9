"""How often each claim test says "held" with no effect, and with one: ``python scripts/calibrate_claims.py``.

Usage::

  python scripts/calibrate_claims.py [--replicates 2000] [--resamples 999] [--seeds 10] [--epochs 11]
                                     [--effect 1.6] [--key 0] [--out FILE]

Simulates no-trend and planted-effect trajectories (iid, AR(1) 0.5, seed
offsets; lr_jax.experiment.calibration) and prints the false-held rate and
power of every test of lr_jax.experiment.claim_statistics as a markdown
table (also written to ``--out``). Thin wrapper.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lr_jax.experiment.calibration import calibration_markdown, simulate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicates", type=int, default=2000, help="simulated data sets per scenario")
    p.add_argument("--resamples", type=int, default=999, help="permutations per turning-point test")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--epochs", type=int, default=11)
    p.add_argument("--effect", type=float, default=1.6, help="planted effect, in noise SDs")
    p.add_argument("--key", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = simulate(args.replicates, seeds=args.seeds, epochs=args.epochs, effect=args.effect,
                    n_resamples=args.resamples, key=args.key)
    text = (f"Calibration: {args.replicates} replicates per scenario, {args.seeds} seeds x {args.epochs} epochs, "
            f"{args.resamples} permutations, key {args.key} ({time.perf_counter() - start:.0f} s)\n\n"
            + calibration_markdown(rows))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
