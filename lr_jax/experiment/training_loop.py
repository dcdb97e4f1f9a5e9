"""The training-loop driver shared by both studies: train to the next time, evaluate on schedule, save, stop on a signal.

A study (:class:`Study`) says what its times are (epochs or steps), which of
them are evaluated, how to set a run up, how to train from one time to the
next and how to evaluate; :func:`drive` runs the loop the same way for every
study:

    for t in ticks after the resumed checkpoint:
        state = advance(state, previous t, t)          # no training at t = 0
        if t is evaluated: record = evaluate(state, t); save records, checkpoint, status
        if a signal arrived and t is not the end: checkpoint t, mark interrupted, stop

Ticks are the times at which a run may stop (every epoch; every
``grokking.chunk_steps`` steps and every evaluated step); a run resumed from
the checkpoint of time ``t`` continues with the ticks after ``t`` and gives
the same files as a run never stopped.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, NamedTuple

from tqdm import tqdm

from lr_jax.experiment import checkpoints
from lr_jax.experiment.run_lifecycle import StopFlag, interrupt
from lr_jax.experiment.run_records import EvalRecord, save_evaluation

log = logging.getLogger(__name__)


def show_progress() -> bool:
    """Progress bars only for a person at a terminal; log lines otherwise."""
    return sys.stderr.isatty()


class Study(NamedTuple):
    """The parts of a study the driver calls; each a function of the run config or of the run.

    Attributes:
      time_key: the rows' time field (``"epoch"`` or ``"step"``).
      ticks: ``cfg -> [int]`` increasing times at which a run may stop (from 0).
      schedule: ``cfg -> [int]`` the evaluated times (a subset of the ticks, with 0 and the end).
      end: ``cfg -> int`` the last time.
      setup: ``(cfg, workdir, start) -> run``: data, train state and, resuming
        from the checkpoint of time ``start``, the records up to it. ``run``
        has ``workdir``, ``state``, ``start`` (-1: nothing done), ``rows``,
        ``per_point``, ``seeds``.
      advance: ``(run, state, t0, t1) -> state``, training from time ``t0`` to ``t1``.
      evaluate: ``(run, state, t) -> EvalRecord`` (no I/O).
      log_evaluation: ``(run, record, seconds) -> None``.
      finish: ``(run, rows, seconds, bound_seconds) -> None``: plots, timing,
        the final check, then ``complete``.
      tensorboard: ``(cfg, workdir) -> writer or None``.
      check_record: ``(run, record) -> None``, raising on a diverged evaluation.
    """

    time_key: str
    ticks: Callable[[Any], list]
    schedule: Callable[[Any], list]
    end: Callable[[Any], int]
    setup: Callable
    advance: Callable
    evaluate: Callable
    log_evaluation: Callable
    finish: Callable
    tensorboard: Callable
    check_record: Callable


@contextmanager
def _writers(study: Study, cfg, workdir: Path):
    """The checkpoint manager and the optional TensorBoard writer, closed however the loop ends."""
    mngr, tb = checkpoints.manager(workdir), study.tensorboard(cfg, workdir)
    try:
        yield mngr, tb
    finally:
        mngr.close()
        if tb is not None:
            tb.close()


def _evaluate_and_save(study: Study, run, mngr, tb, state, t: int, rows: list, per_point: dict) -> float:
    """Evaluates, writes the records and the checkpoint; returns the seconds spent evaluating."""
    t0 = time.perf_counter()
    record: EvalRecord = study.evaluate(run, state, t)
    seconds = time.perf_counter() - t0
    save_evaluation(run.workdir, mngr, state, record, rows, per_point, run.seeds)
    study.log_evaluation(run, record, seconds)
    if tb is not None:
        tb.log(record)
    study.check_record(run, record)
    return seconds


def drive(study: Study, cfg, workdir: Path, start: int | None, stop: StopFlag) -> list[dict]:
    """Runs a study's loop in ``workdir`` from the checkpoint of time ``start`` (None: from scratch).

    Call inside :func:`lr_jax.experiment.run_lifecycle.run_guarded`, which
    holds the lock and decided ``start``.

    Returns:
      The run's ``metrics.jsonl`` rows.
    """
    t_start = time.perf_counter()
    run = study.setup(cfg, workdir, start)
    rows, per_point, state = list(run.rows), dict(run.per_point), run.state
    schedule, end, bound_seconds = set(study.schedule(cfg)), study.end(cfg), 0.0
    ticks = study.ticks(cfg)
    todo = [t for t in ticks if t > run.start]
    previous = run.start
    with _writers(study, cfg, workdir) as (mngr, tb):
        bar = tqdm(todo, desc=f"{study.time_key}s", initial=len(ticks) - len(todo), total=len(ticks), disable=not show_progress())
        for t in bar:
            if t > 0:
                state = study.advance(run, state, previous, t)
            previous = t
            if t in schedule:
                bound_seconds += _evaluate_and_save(study, run, mngr, tb, state, t, rows, per_point)
            if stop and t < end:
                interrupt(workdir, mngr, state, t, end, study.time_key)
    study.finish(run, rows, time.perf_counter() - t_start, bound_seconds)
    log.info("done in %.1fs (%.1fs in bound evaluation); run files in %s", time.perf_counter() - t_start, bound_seconds, workdir)
    return rows
