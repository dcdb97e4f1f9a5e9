"""The report files of one sweep folder, or of several sweeps side by side (``scripts/plot.py``).

One sweep: ``summary.csv`` (:func:`lr_jax.experiment.sweep.summarise`),
``missing_jobs.json``, ``claims.json`` and ``claim_intervals.json``, and
``claims.md``: the paper's five observations per (lr, depth), then each as a
calibrated test (one-sided p-value, 95 % interval, raw verdict and the Holm
and Benjamini-Hochberg verdicts within the claim's family, and how many
verdicts change with other permutation keys), on Algorithm 1's bound
and, when the runs counted regions (``bound=sandwich``), on the exact counts
and on the bound restricted to the counted points, with a table of where the
verdicts agree; and the Figure 3 images (:func:`lr_jax.experiment.plots.plot_figure3`).

Several sweeps (one setting each, e.g. ``experiment=robustness``):
``robustness.md`` and ``robustness_intervals.json`` (every claim x setting,
:mod:`lr_jax.experiment.robustness`) and ``robustness_mean_c.png/.pdf`` (mean
C over epochs per setting).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

from lr_jax.experiment.claims import (
    MEASURE_NAMES,
    agreement_markdown,
    check_claims,
    claim_intervals,
    claims_markdown,
    intervals_markdown,
    verdict_stability,
)
from lr_jax.experiment.plots import plot_figure3, plot_settings_grid
from lr_jax.experiment.robustness import robustness_markdown, setting_intervals
from lr_jax.experiment.run_files import atomic_write
from lr_jax.experiment.sweep import SweepRuns, collect_runs, summarise, write_csv

log = logging.getLogger(__name__)


class SweepReport(NamedTuple):
    """One sweep read and reported: its runs, its summary and the files written."""

    runs: SweepRuns
    summary: list
    written: list


def _write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def report_sweep(multirun_dir: str | Path, out: str | Path | None = None, *, stability: bool = True) -> SweepReport:
    """Writes the report files of one sweep folder into ``out`` (default: the folder).

    With ``stability``, ``claims.md`` also says how many verdicts change
    when the permutations are drawn with keys 0-4 (:func:`verdict_stability`).

    Raises:
      FileNotFoundError: no such folder.
      RunFileError: a damaged file of a job (named).
      ValueError: no complete job in the folder.
    """
    runs = collect_runs(multirun_dir)
    if not runs.rows:
        raise ValueError(f"no complete job under {multirun_dir} (missing: {len(runs.missing)}).")
    out = Path(out or multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs.rows)
    written = [out / "summary.csv"]
    write_csv(summary, written[0])
    written.append(_write_text(out / "missing_jobs.json", json.dumps(runs.missing, indent=2) + "\n"))
    claims = check_claims(runs.rows)
    written.append(_write_text(out / "claims.json", json.dumps(claims, indent=2) + "\n"))
    intervals = [r for m in MEASURE_NAMES for r in claim_intervals(runs.rows, m)]
    written.append(_write_text(out / "claim_intervals.json", json.dumps(intervals, indent=2) + "\n"))
    text = claims_markdown(claims)
    for m, name in MEASURE_NAMES.items():
        text += intervals_markdown([r for r in intervals if r["measure"] == m],
                                   f"Verdicts with 95 % intervals over seeds ({name})")
        if stability and any(r["measure"] == m for r in intervals):
            st = verdict_stability(runs.rows, m)
            text += (f"Stability ({name}): with permutation keys {st['keys'][0]}-{st['keys'][-1]} instead of key 0, "
                     f"{st['raw']} of {st['tests']} raw verdicts change, {st['holm']} Holm and {st['bh']} BH "
                     f"verdicts; the largest spread of one p-value is {st['max_p_spread']:.4f}.\n\n")
    text += agreement_markdown(intervals)
    written.append(_write_text(out / "claims.md", text))
    written += plot_figure3(runs.rows, out)
    return SweepReport(runs, summary, written)


def report_settings(reports: dict[str, SweepReport], out: str | Path) -> list[Path]:
    """Writes the claim x setting report of several sweeps into ``out``.

    Args:
      reports: ``{setting name: report_sweep(...)}``, in the order of the columns.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    intervals = setting_intervals({name: r.runs.rows for name, r in reports.items()})
    written = [_write_text(out / "robustness_intervals.json", json.dumps(intervals, indent=2) + "\n")]
    written.append(_write_text(out / "robustness.md", robustness_markdown(intervals)))
    written += plot_settings_grid({name: r.runs.rows for name, r in reports.items()}, out)
    return written


def setting_names(dirs: Sequence[Path], labels: Sequence[str] | None = None) -> list[str]:
    """Column names of several sweeps: ``labels``, or each folder's name.

    Raises:
      ValueError: as many labels as folders are needed, and names must differ.
    """
    names = list(labels) if labels else [Path(d).resolve().name for d in dirs]
    if len(names) != len(dirs):
        raise ValueError(f"--labels gives {len(names)} names for {len(dirs)} sweep folders; give one per folder.")
    if len(set(names)) != len(names):
        raise ValueError(f"two sweeps share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
                         "pass --labels with one distinct name per folder.")
    return names
