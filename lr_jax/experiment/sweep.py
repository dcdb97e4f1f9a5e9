"""Aggregation of a Hydra multirun of ``scripts/train.py`` (the Figure 3 sweep).

:func:`collect_runs` reads every job's ``.hydra/config.yaml``, ``status.json`` and
``metrics.jsonl`` (I/O); :func:`summarise` reduces the rows over seeds to a mean,
standard deviation and count per (lr, depth, category, epoch) and metric (pure).
Jobs that are absent, unfinished or failed are reported, never silently dropped.

A job of several seeds trained together (``seeds=K``) is read as the K
per-seed jobs ``seed .. seed+K-1``: its rows carry their own ``seed`` field,
each seed is listed complete or missing on its own.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import yaml

from lr_jax.experiment.experiment import run_seeds
from lr_jax.experiment.run_files import RunFileError, atomic_write, read_json, read_metrics, read_yaml

GROUP_KEYS = ("lr", "depth", "category", "epoch")
# Sweep parameters that identify a job; the seed is what is averaged over.
JOB_KEYS = ("lr", "depth", "seed")


class SweepRuns(NamedTuple):
    """What :func:`collect_runs` found.

    Attributes:
      rows: metrics rows of every complete job, each with ``lr``, ``depth`` and
        ``seed`` added.
      complete: ``(lr, depth, seed)`` of the complete jobs.
      missing: ``{"lr", "depth", "seed", "reason", "dir"}`` for every expected job
        that is absent, unfinished or failed.
    """

    rows: list
    complete: list
    missing: list


def _expected_jobs(multirun_dir: Path, fix: str) -> list[tuple] | None:
    """(lr, depth, seed) grid from the sweep's ``multirun.yaml``, if it can be read.

    A value not swept is the sweep's own (``seed``, ``seeds``); every job of
    ``seeds=K`` stands for its K seeds.
    """
    path = multirun_dir / "multirun.yaml"
    if not path.exists():
        return None
    cfg = read_yaml(path, what="sweep config", fix=fix)
    params = ((cfg.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    overrides = ((cfg.get("hydra") or {}).get("overrides") or {}).get("task") or []
    values = {k: [cfg[k]] for k in ("seed", "seeds") if isinstance(cfg.get(k), int)}
    values.update({k: _parse_values(str(v)) for k, v in params.items()})
    for o in overrides:
        key, _, value = o.partition("=")
        values[key.lstrip("+")] = _parse_values(value)
    if not all(k in values for k in JOB_KEYS):
        return None
    grid = itertools.product(values["lr"], values["depth"], values["seed"], values.get("seeds", [1]))
    return [(lr, depth, s) for lr, depth, seed, k in grid for s in run_seeds({"seed": seed, "seeds": k})]


def _parse_values(text: str) -> list:
    """Hydra sweep syntax for the values used here: ``a,b,c`` or ``range(n)``/``range(a,b)``."""
    text = text.strip()
    if text.startswith("range(") and text.endswith(")"):
        return list(range(*(int(v) for v in text[6:-1].split(","))))
    return [yaml.safe_load(v) for v in text.split(",")]


def collect_runs(multirun_dir: str | Path) -> SweepRuns:
    """Reads every job of a multirun folder.

    A job counts as complete when its ``status.json`` says ``complete``. A
    job with a damaged file is listed as missing, its reason the one line
    naming the file and the fix (by its folder when its config is damaged),
    and the other jobs are read on. When
    the folder's ``multirun.yaml`` gives the (lr, depth, seed) grid, jobs of the
    grid with no folder at all are reported missing too. A job's config is its
    recorded ``config.yaml`` (Hydra's ``.hydra/config.yaml`` for a job refused
    before it started, or written by an older version).

    Raises:
      FileNotFoundError: no such folder.
      RunFileError: the folder's ``multirun.yaml`` is damaged.
    """
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no multirun folder at {root}.")
    rows, complete, missing, seen = [], [], [], set()
    fix = "delete that job's folder and run the job again, or pass the sweep without it"
    for job_dir in sorted(p.parent.parent for p in root.glob("**/.hydra/config.yaml")):
        try:
            keys = _job_keys(job_dir, fix)
        except RunFileError as e:  # no config to name the job by: listed by its folder
            missing.append({**dict.fromkeys(JOB_KEYS), "reason": str(e), "dir": str(job_dir)})
            continue
        seen.update(keys)
        try:
            job_rows = _complete_job_rows(job_dir, keys, fix)
        except RunFileError as e:  # a damaged job is listed with the file and the fix; the others go on
            job_rows = str(e)
        if isinstance(job_rows, str):
            missing.extend({**dict(zip(JOB_KEYS, key)), "reason": job_rows, "dir": str(job_dir)} for key in keys)
            continue
        complete.extend(keys)
        rows.extend(job_rows)
    expected = _expected_jobs(root, fix)
    if expected:
        for lr, depth, seed in expected:
            key = (float(lr), int(depth), int(seed))
            if key not in seen:
                missing.append({"lr": key[0], "depth": key[1], "seed": key[2], "reason": "no job folder", "dir": None})
    return SweepRuns(rows, sorted(complete), missing)


def _job_keys(job_dir: Path, fix: str) -> list[tuple]:
    """``(lr, depth, seed)`` of every seed of a job, from its recorded config (Hydra's copy if it has none).

    Raises:
      RunFileError: the config is damaged or lacks the job's settings (one line).
    """
    recorded = job_dir / "config.yaml"
    cfg_path = recorded if recorded.exists() else job_dir / ".hydra" / "config.yaml"
    cfg = read_yaml(cfg_path, what="job config", fix=fix)
    try:  # the top-level aliases hold the values; the groups only interpolate them
        return [(float(cfg["lr"]), int(cfg["depth"]), s) for s in run_seeds(cfg)]
    except (KeyError, TypeError, ValueError) as e:
        raise RunFileError(f"{cfg_path}: job config is damaged (no valid lr, depth or seed: {e}); {fix}.") from None


def _complete_job_rows(job_dir: Path, keys: list[tuple], fix: str) -> list[dict] | str:
    """The rows of a complete job (with lr, depth, seed), or why it is not complete.

    Raises:
      RunFileError: a damaged ``status.json`` or ``metrics.jsonl``.
    """
    status_path = job_dir / "status.json"
    status = read_json(status_path, what="job status", fix=fix) if status_path.exists() else {"status": "not started"}
    if not isinstance(status, dict):
        raise RunFileError(f"{status_path}: job status is damaged (not a mapping); {fix}.")
    if status.get("status") != "complete":
        return str(status.get("reason", status.get("status")))
    job_rows = read_metrics(job_dir / "metrics.jsonl", fix=fix)
    if len(keys) > 1:  # a stack: each row names its seed
        _check_stacked_rows(job_rows, [k[2] for k in keys], job_dir / "metrics.jsonl", fix)
        return [{**r, "lr": keys[0][0], "depth": keys[0][1]} for r in job_rows]
    return [{**r, **dict(zip(JOB_KEYS, keys[0]))} for r in job_rows]


def _check_stacked_rows(rows: list, seeds: list, path: Path, fix: str) -> None:
    """Refuses a stacked job whose rows do not name exactly its seeds (one line)."""
    # Numbers in numeric order (seed 10 after seed 9), anything else (a missing seed) after them.
    found = sorted({r.get("seed") for r in rows}, key=lambda s: (not isinstance(s, int), s if isinstance(s, int) else 0, str(s)))
    if found != seeds:
        raise RunFileError(f"{path}: rows hold seeds {found}, not the job's seeds {seeds}; {fix}.")


def numeric_metrics(rows: Sequence[dict]) -> list[str]:
    """Names of the numeric metric fields of the rows (not the grouping keys)."""
    skip = set(GROUP_KEYS) | set(JOB_KEYS)
    names = dict.fromkeys(
        k for r in rows for k, v in r.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    return list(names)


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean, standard deviation (ddof=0) and count over seeds of every metric.

    Args:
      rows: metrics rows with ``lr``, ``depth``, ``category``, ``epoch`` (and ``seed``).

    Returns:
      One dict per (lr, depth, category, epoch), sorted, with ``<metric>_mean``,
      ``<metric>_std``, ``<metric>_n`` and the quartiles ``<metric>_q25``,
      ``<metric>_q50``, ``<metric>_q75`` over seeds for every numeric metric
      (NaNs ignored; quartiles suit metrics spanning orders of magnitude,
      such as the mean of ``2^C``, where a +-1 std band crosses zero).
    """
    metrics = numeric_metrics(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: (-k[0], k[1], k[2], k[3])):
        group = groups[key]
        summary = dict(zip(GROUP_KEYS, key))
        for m in metrics:
            vals = np.array([g[m] for g in group if m in g and g[m] is not None], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            summary[f"{m}_mean"] = float(vals.mean()) if vals.size else math.nan
            summary[f"{m}_std"] = float(vals.std()) if vals.size else math.nan
            summary[f"{m}_n"] = int(vals.size)
            for q in (25, 50, 75):
                summary[f"{m}_q{q}"] = float(np.percentile(vals, q)) if vals.size else math.nan
        out.append(summary)
    return out


def write_csv(summary: Sequence[dict], path: str | Path) -> None:
    """Writes :func:`summarise`'s rows as CSV (columns in first-seen order)."""
    columns = list(dict.fromkeys(k for row in summary for k in row))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(summary)

    atomic_write(Path(path), write)
