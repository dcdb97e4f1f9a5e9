"""The records of a training run: its rows, per-point arrays, data record and their checks.

Shared by both studies (:mod:`lr_jax.experiment.train`, the paper's study by
epochs; :mod:`lr_jax.experiment.grokking`, by steps). An evaluation at time
``t`` (an epoch or a step, named by the study's ``time_key``) gives an
:class:`EvalRecord`: ``metrics.jsonl`` rows (one per category, and per seed
when several seeds train together) and per-point arrays. :func:`save_evaluation`
appends it to the run's records and writes them before the checkpoint, so a
kill at any point leaves rows that :func:`records_up_to` can cut back to the
newest checkpoint. Every read goes through :mod:`lr_jax.experiment.run_files`
(one line naming a damaged file and the fix).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from lr_jax.experiment import checkpoints
from lr_jax.experiment import config as config_lib
from lr_jax.experiment.run_files import FIX_RUN, RunFileError, read_json, read_metrics, read_npz, write_json, write_metrics, write_npz

METRICS, BOUNDS, STATUS, DATA = "metrics.jsonl", "bounds.npz", "status.json", "data.json"


class EvalRecord(NamedTuple):
    """One evaluation: its ``metrics.jsonl`` rows and per-point arrays (``bounds.npz`` fields).

    ``epoch`` is the evaluation's time in the study's unit (an epoch, or a
    step of the grokking study).
    """

    epoch: int
    rows: list
    per_point: dict


def time_axis(stacked: bool) -> int:
    """The time axis of a per-point array in ``bounds.npz``: ``[E, ...]``, or ``[K, E, ...]`` when stacked."""
    return 1 if stacked else 0


def check_data(workdir: Path, record: dict, resuming: bool) -> None:
    """Writes ``data.json``, or on resume checks that the data are the recorded ones."""
    path = workdir / DATA
    if resuming and path.exists():
        recorded = read_json(path, what="data record")
        if recorded.get("fingerprint") != record["fingerprint"]:
            raise config_lib.ConfigError(
                f"invalid config resume=true: the points built from data.source={record['source']} differ from the "
                f"ones recorded in {path} (the data files changed); restore them or start a new run."
            )
        return
    write_json(path, record)


def records_up_to(
    workdir: Path,
    expected: Sequence[int],
    upto: int,
    seeds: Sequence[int],
    categories: Sequence[str],
    time_key: str = "epoch",
) -> tuple[list, dict]:
    """The saved rows and per-point arrays up to time ``upto``, checked against the schedule.

    Rows written after the checkpoint (a kill between the rows and the
    checkpoint) are dropped: the loop rewrites them identically. A stacked
    run (several ``seeds``) needs a row of every seed and per-point arrays
    ``[K, E, ...]``.

    Args:
      workdir: the run folder.
      expected: the evaluated times of the run's schedule (all of them).
      upto: the time of the checkpoint the run resumes from.
      seeds: the run's seeds.
      categories: the categories every evaluation has a row of.
      time_key: the rows' time field (``epoch`` or ``step``).

    Raises:
      RunFileError: a damaged file, or one lacking an evaluation up to ``upto``.
    """
    want_times = [t for t in expected if t <= upto]
    stacked = len(seeds) > 1
    fix = f"{FIX_RUN} (its checkpoints reach {time_key} {upto}, its records do not)"
    metrics_path, bounds_path = workdir / METRICS, workdir / BOUNDS
    # A run extended past its old last time: that time was evaluated as the last one, and is not
    # evaluated by the longer schedule (a run trained that long from the start has no row of it).
    dropped = upto if upto not in want_times else None
    rows = [r for r in read_metrics(metrics_path, fix=fix, time_key=time_key) if r[time_key] <= upto and r[time_key] != dropped]
    # A single run's rows have no seed field: its key is (time, -1, category).
    have = sorted((r[time_key], r.get("seed", -1), r["category"]) for r in rows)
    want = sorted((t, s if stacked else -1, c) for t in want_times for s in seeds for c in categories)
    if have != want:
        missing = sorted({t for t, _, c in set(want) - set(have)})
        extra = sorted({t for t, _, c in set(have) - set(want)})
        raise RunFileError(
            f"{metrics_path}: metrics do not match the checkpoint of {time_key} {upto} (rows missing for {time_key}s {missing}"
            f"{f', unexpected or repeated rows for {time_key}s {extra}' if extra else ''}); {fix}."
        )
    arrays = read_npz(bounds_path, fix=fix)
    if "epochs" not in arrays:
        raise RunFileError(f"{bounds_path}: per-point bounds lack their epochs array; {fix}.")
    if stacked and arrays.get("seeds", np.zeros(0)).tolist() != list(seeds):
        raise RunFileError(f"{bounds_path}: per-point bounds do not hold the run's seeds {list(seeds)}; {fix}.")
    keep, axis = (arrays["epochs"] <= upto) & (arrays["epochs"] != dropped), time_axis(stacked)
    per_point = {k: v for k, v in arrays.items() if k not in ("epochs", "seeds")}
    if arrays["epochs"][keep].tolist() != want_times or any(
        a.ndim <= axis or a.shape[axis] != keep.size or (stacked and a.shape[0] != len(seeds)) for a in per_point.values()
    ):
        raise RunFileError(
            f"{bounds_path}: per-point bounds hold {time_key}s {arrays['epochs'].tolist()}, not {want_times} up to the "
            f"checkpoint of {time_key} {upto}; {fix}."
        )
    # The seeds array has no time axis; epochs and per-point arrays keep the evaluations up to `upto`.
    return rows, {k: v if k == "seeds" else np.compress(keep, v, axis=0 if k == "epochs" else axis) for k, v in arrays.items()}


def save_evaluation(workdir: Path, mngr, state, record: EvalRecord, rows: list, per_point: dict, seeds: Sequence[int]) -> None:
    """Appends ``record`` to the run's records and writes them, then the checkpoint, then the status.

    The order matters for a kill at any point: rows ahead of the latest
    checkpoint are dropped on resume and recomputed identically. ``bounds.npz``
    keeps the evaluated times in ``epochs`` (whatever the study's unit) and,
    for a stacked run (several ``seeds``), the seeds in ``seeds``.
    """
    stacked = len(seeds) > 1
    rows.extend(record.rows)
    per_point["epochs"] = np.append(per_point.get("epochs", np.zeros(0, np.int64)), record.epoch).astype(np.int64)
    axis = time_axis(stacked)
    if stacked:
        per_point["seeds"] = np.asarray(seeds, np.int64)
    for key, arr in record.per_point.items():
        new = np.expand_dims(arr, axis)
        per_point[key] = np.concatenate([per_point[key], new], axis=axis) if key in per_point else new
    write_metrics(workdir / METRICS, rows)
    write_npz(workdir / BOUNDS, per_point)
    checkpoints.save(mngr, record.epoch, state)
    write_json(workdir / STATUS, {"status": "running", "epoch": record.epoch})


def mean_over_seeds(rows: list, time_key: str = "epoch") -> list:
    """Rows of a stacked run averaged over seeds per (time, category) (numeric fields only; others from the first)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r[time_key], r["category"]), []).append(r)
    out = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k != "seed"}
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != time_key:
                vals = [g[k] for g in group if g.get(k) is not None]
                row[k] = float(np.mean(vals)) if vals else None
        out.append(row)
    return out
