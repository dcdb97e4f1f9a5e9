"""The lifecycle of a training run, shared by both studies: start or resume, lock, signals, status.

:func:`run_guarded` wraps a study's loop: it validates the config, takes the
run folder's lock (:class:`lr_jax.experiment.run_lock.RunLock`), decides
between a new run and a resume (:func:`check_resume`), turns SIGINT/SIGTERM
into a stop after the current step (:func:`stop_on_signals`) and marks the
run ``failed`` or ``interrupted`` when it ends on an error, with one line
saying why and how to continue. ``status.json`` holds ``running``,
``interrupted``, ``failed`` (with a reason) or ``complete`` and the last saved
time; ``complete`` is written by the study only after its final check.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from lr_jax.experiment import checkpoints
from lr_jax.experiment import config as config_lib
from lr_jax.experiment.experiment import CONFIG_FILE
from lr_jax.experiment.run_files import FIX_RUN, RunFileError, RunWriteError, read_json, read_yaml, write_json, write_yaml
from lr_jax.experiment.run_lock import RunLock
from lr_jax.experiment.run_records import STATUS

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class RunInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a step; the message says how to resume."""


def resolved(cfg) -> dict:
    """The config as a plain nested dict with every interpolation resolved."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def resume_hint(workdir: Path) -> str:
    """The command that continues the run in ``workdir``."""
    return f"python scripts/train.py resume=true hydra.run.dir={workdir}"


def _is_given(key: str, given) -> bool:
    """Whether the dotted ``key`` was set on the command line (``given``: None means every key was)."""
    return given is None or any(key == g or key.startswith(g + ".") for g in given)


def _dotted(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<absent>"
        d = d[part]
    return d


def _with_later_keys(recorded: dict) -> dict:
    """A recorded config with the keys added since it was written, at the values it ran with."""
    recorded.setdefault("seeds", 1)  # a run recorded before `seeds` existed trained one seed
    recorded.setdefault("model", {}).setdefault("init", "lecun")  # ... and before `model.init`, LeCun normal
    recorded.setdefault("optim", {}).setdefault("weight_decay", 0.0)  # ... before AdamW, none
    recorded.setdefault("study", "paper")  # ... and before the grokking study, the paper's
    recorded.setdefault("grokking", resolved(config_lib.GrokkingConfig()))
    return recorded


def check_resume(cfg, workdir: Path, given=None, length_key: str | None = "epochs") -> tuple[int | None, Any]:
    """Decides how a run starts in ``workdir``; refuses what would lose or mix work.

    A resume runs the recorded settings: only the keys in ``given`` (those
    set on the command line) are compared with the record, every other one
    comes from ``config.yaml``. Output-only settings (``plot``, ``logger``)
    may change; the run's length (``length_key``, ``epochs`` for the paper's
    study) may be raised, on an interrupted or a complete run, which then
    continues to the new end (the result equals a run trained that long from
    the start).

    Args:
      cfg: the composed config of this invocation.
      workdir: the run folder.
      given: dotted keys set on the command line
        (:func:`lr_jax.experiment.config.command_line_keys`); None compares
        every setting.
      length_key: the top-level key that may be raised to extend a run; None
        when a study's schedule depends on its length (nothing may change).

    Returns:
      ``(start, cfg)``: the checkpoint time to resume from, or None to start
      from scratch (a new run, or a run killed before its first checkpoint),
      and the config to run (the recorded one when resuming).

    Raises:
      ConfigError: a new run in a folder that holds one, ``resume=true``
        without a run, with a setting that changes the computation, or on a
        complete or diverged run (one line).
      RunFileError: a damaged ``status.json`` or ``config.yaml``.
    """
    recorded_path, status_path = workdir / CONFIG_FILE, workdir / STATUS
    has_run = recorded_path.exists() or status_path.exists()
    status = read_json(status_path, what="run status") if status_path.exists() else {"status": "started"}
    if not cfg.resume:
        if has_run:
            what = "a complete run" if status.get("status") == "complete" else f"a run (status {status.get('status')})"
            cont = "" if status.get("status") == "complete" else f"continue it with `{resume_hint(workdir)}` or "
            raise config_lib.ConfigError(
                f"invalid config resume=false: {workdir} already holds {what}; {cont}choose another hydra.run.dir."
            )
        return None, cfg
    if not recorded_path.exists():
        raise config_lib.ConfigError(f"invalid config resume=true: {workdir} holds no run to resume; start it without resume=true.")
    recorded = _with_later_keys(read_yaml(recorded_path, what="recorded config"))
    current = resolved(cfg)
    lost = sorted(set(config_lib.flat_keys(current)) - set(config_lib.flat_keys(recorded)))
    if lost:
        raise RunFileError(f"{recorded_path}: recorded config is damaged (keys missing: {', '.join(lost[:5])}); {FIX_RUN}.")
    diff = [k for k in config_lib.computation_diff(recorded, current) if _is_given(k, given)]
    extend = length_key is not None and length_key in diff and current[length_key] > recorded[length_key]
    if extend:
        diff.remove(length_key)
    if diff:
        raises = f"only {length_key} may be raised" if length_key else "nothing may change"
        changes = ", ".join(f"{k}: {_dotted(recorded, k)!r} -> {_dotted(current, k)!r}" for k in diff)
        raise config_lib.ConfigError(
            f"invalid config resume=true: settings differ from the run's recorded config ({changes}); resume "
            f"without these overrides ({raises}), or start a new run in another hydra.run.dir."
        )
    if status.get("status") == "complete" and not extend:
        longer = f" (raise {length_key} above {recorded[length_key]} to train it longer)" if length_key else ""
        raise config_lib.ConfigError(f"invalid config resume=true: the run in {workdir} is already complete; nothing to resume{longer}.")
    if status.get("status") == "failed" and "diverged" in str(status.get("reason", "")):
        raise config_lib.ConfigError(
            f"invalid config resume=true: the run in {workdir} diverged ({status['reason']}); resuming would diverge "
            "again; start a new run with a lower lr or data.scale."
        )
    saved = checkpoints.saved_epochs(workdir)
    # The recorded settings (in the recorded order), with this invocation's output-only settings and length.
    run_cfg = {**recorded, **{k: current[k] for k in config_lib.OUTPUT_ONLY_KEYS}}
    if length_key is not None:
        run_cfg[length_key] = current[length_key] if extend else recorded[length_key]
    run_cfg = OmegaConf.create(run_cfg)
    if extend:
        log.info("extending the run in %s from %d to %d %s", workdir, recorded[length_key], current[length_key], length_key)
    return (saved[-1] if saved else None), run_cfg


def restore_newest_intact(workdir: Path, start: int, state: Any) -> tuple[int, Any]:
    """The state of the newest intact checkpoint up to ``start``, and its time.

    A damaged checkpoint (unreadable, or arrays that differ from their
    checksums) is set aside as ``checkpoints/<time>.damaged`` once an earlier
    intact one is found, with a warning naming both; the records after that
    time are dropped and recomputed.

    Raises:
      RunFileError: no checkpoint up to ``start`` is intact (the newest one's error).
    """
    candidates = [e for e in checkpoints.saved_epochs(workdir) if e <= start][::-1]
    damaged = []
    for epoch in candidates:
        try:
            restored = checkpoints.restore_state(workdir, epoch, state)
        except RunFileError as e:
            damaged.append((epoch, e))
            if epoch == candidates[-1]:
                first = str(damaged[0][1]).rsplit("; ", 1)[0]
                either = "; no earlier checkpoint is intact either" if len(damaged) > 1 else ""
                raise RunFileError(f"{first}{either}; {FIX_RUN}.") from None
            continue
        for bad, error in damaged:
            aside = checkpoints.set_aside(workdir, bad)
            log.warning("%s; set aside as %s, resuming from the checkpoint of epoch %d", str(error).rsplit("; ", 1)[0], aside, epoch)
        return epoch, restored
    raise RunFileError(f"{checkpoints.checkpoint_dir(workdir)}: no checkpoint up to epoch {start}; {FIX_RUN}.")


def start_files(cfg, workdir: Path, start: int | None, names: tuple[str, ...]) -> None:
    """Prepares the folder of a run starting from scratch: no leftovers, the recorded config, ``running``."""
    if start is None:
        for name in names:  # leftovers of a run killed before its first checkpoint
            (workdir / name).unlink(missing_ok=True)
        if not (workdir / CONFIG_FILE).exists():  # from scratch in place: the recorded config matched
            write_yaml(workdir / CONFIG_FILE, resolved(cfg))
        write_json(workdir / STATUS, {"status": "running", "epoch": None})
        if cfg.resume:
            log.info("no checkpoint yet in %s: starting the run from scratch in place", workdir)
    else:
        write_json(workdir / STATUS, {"status": "running", "epoch": start})


# ---------------------------------------------------------------------------
# Interrupts


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops after the current step."""

    def __init__(self):
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals():
    """Turns the first SIGINT/SIGTERM into a flag; a second SIGINT stops at once."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set in the main thread (e.g. a launcher's worker)
        return

    def handler(signum, frame):
        if flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal = signum
        log.warning("%s received: stopping after the current step (press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def interrupt(workdir: Path, mngr, state: Any, t: int, end: int, time_key: str = "epoch") -> None:
    """Saves the state of time ``t`` (if not saved yet), marks the run ``interrupted`` and raises :class:`RunInterrupted`."""
    if t not in checkpoints.saved_epochs(workdir):
        checkpoints.save(mngr, t, state)
    write_json(workdir / STATUS, {"status": "interrupted", "epoch": t})
    raise RunInterrupted(f"interrupted after {time_key} {t} of {end}; continue with `{resume_hint(workdir)}`.")


# ---------------------------------------------------------------------------
# Status


def fail(workdir: Path, t: int | None, reason: str) -> None:
    """Marks the run ``failed`` at time ``t`` with ``reason``."""
    write_json(workdir / STATUS, {"status": "failed", "epoch": t, "reason": reason})


def mark(workdir: Path, status: str, reason: str | None = None) -> None:
    """Marks a run that stopped on an error (keeping a more specific ``failed`` reason).

    When the status cannot be written (the disk is full), it stays at its last
    consistent value, which a resume reads as a killed run.
    """
    try:
        current = read_json(workdir / STATUS)
    except RunFileError:
        current = {}
    if current.get("status") == "failed":
        return
    try:
        write_json(workdir / STATUS, {"status": status, "epoch": current.get("epoch"), **({"reason": reason} if reason else {})})
    except RunWriteError:
        pass  # the error being raised says which write failed


def complete(workdir: Path, t: int) -> None:
    """Marks the run ``complete`` at its last time (call after the study's final check)."""
    write_json(workdir / STATUS, {"status": "complete", "epoch": t})


def run_guarded(
    cfg, workdir: str | Path, given, train: Callable[[Any, Path, int | None, StopFlag], list], length_key: str | None = "epochs"
) -> list[dict]:
    """Runs ``train(cfg, workdir, start, stop)`` inside the run's lifecycle; returns its rows.

    Validates ``cfg`` (before any data is read), takes the folder's lock,
    decides the start (:func:`check_resume`), and on an error marks the run
    (``interrupted`` for Ctrl-C, ``failed`` with a one-line reason otherwise)
    before re-raising it.

    Raises:
      ConfigError, RunLockedError, RunFileError, RunWriteError,
      TrainingDiverged, RunInterrupted: as ``train_and_evaluate`` documents.
    """
    config_lib.validate(cfg)
    if isinstance(cfg, DictConfig):
        config_lib.resolve_paths(cfg)
    workdir = Path(workdir).expanduser().absolute()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunWriteError.of(workdir, OSError(e.strerror) if e.strerror else e, what="run folder") from None
    with RunLock(workdir), stop_on_signals() as stop:
        start, cfg = check_resume(cfg, workdir, given, length_key)  # a refusal writes nothing
        try:
            if cfg.resume and length_key is not None:
                recorded = read_yaml(workdir / CONFIG_FILE, what="recorded config")
                if recorded[length_key] != cfg[length_key]:  # an extended run: the record of a run that long
                    write_yaml(workdir / CONFIG_FILE, {**recorded, length_key: cfg[length_key]})
            return train(cfg, workdir, start, stop)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            mark(workdir, "interrupted")
            raise
        except RunWriteError as e:  # a full disk or a read-only folder: resumable once it is fixed
            e = e.then(f"continue with `{resume_hint(workdir)}`")
            mark(workdir, "failed", f"{type(e).__name__}: {e}")
            raise e from None
        except BaseException as e:
            mark(workdir, "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            raise
