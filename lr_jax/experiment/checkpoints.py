"""Orbax checkpoints of a run: one per evaluated epoch (and one where a run was interrupted).

A checkpoint holds the train state's ``step`` (optimizer steps), ``params`` and
``opt_state`` under ``<run>/checkpoints/<epoch>``. Orbax writes each into a
temporary folder and renames it when complete, so a kill during a save leaves
no checkpoint that looks valid. Every restore goes through
:func:`lr_jax.experiment.run_files.read_file`: a damaged checkpoint gives one
line naming it and what to do.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from lr_jax.experiment.run_files import read_file, read_json

# JSON files of an Orbax checkpoint; Orbax would log a damaged one and go on, or fail deep inside.
_METADATA_FILES = ("_CHECKPOINT_METADATA", "default/_METADATA")

CHECKPOINTS = "checkpoints"


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``<run>/checkpoints``; ``run_dir`` may be the run folder or that folder itself."""
    path = Path(run_dir).expanduser().absolute()
    return path if path.name == CHECKPOINTS else path / CHECKPOINTS


def saved_epochs(run_dir: str | Path) -> list[int]:
    """Epochs with a finished checkpoint (Orbax's temporary folders are not counted)."""
    path = checkpoint_dir(run_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def manager(run_dir: str | Path) -> ocp.CheckpointManager:
    """A checkpoint manager of the run (keeps every checkpoint)."""
    return ocp.CheckpointManager(
        checkpoint_dir(run_dir), options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True)
    )


def save(mngr: ocp.CheckpointManager, epoch: int, state: Any) -> None:
    """Saves ``state`` (a ``TrainState``) as the checkpoint of ``epoch`` and waits for it."""
    mngr.save(epoch, args=ocp.args.StandardSave({"step": state.step, "params": state.params, "opt_state": state.opt_state}))
    mngr.wait_until_finished()


def _is_aftermath(message: str) -> bool:
    return "Event loop is closed" in message or "exception was never retrieved" in message


def _raised_in_checkpoint_io(tb) -> bool:
    """True for an exception raised inside Orbax or asyncio (a read left pending by a failed restore)."""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if "/orbax/" in name or "/asyncio/" in name:
            return True
        tb = tb.tb_next
    return False


class _DropAftermath(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_aftermath(record.getMessage())


def _drop_failed_read_aftermath() -> None:
    """After a failed restore, TensorStore's pending reads finish on Orbax's closed event loop and
    print tracebacks ("Event loop is closed", "Future exception was never retrieved") long after
    the error was reported; drop exactly those, keep everything else (idempotent)."""
    if getattr(sys.unraisablehook, "_lr_jax", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (_is_aftermath(str(unraisable.exc_value)) or _raised_in_checkpoint_io(unraisable.exc_traceback)):
            previous(unraisable)

    hook._lr_jax = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_DropAftermath())


@contextmanager
def _quiet_restore():
    """Silences Orbax's own ERROR lines while restoring: a damaged checkpoint is reported once, by read_file."""
    _drop_failed_read_aftermath()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _fix(run_dir: Path, epoch: int, for_training: bool) -> str:
    earlier = [e for e in saved_epochs(run_dir) if e < epoch]
    path = checkpoint_dir(run_dir) / str(epoch)
    if for_training:
        if earlier:
            return f"delete {path} and resume=true continues from the checkpoint of epoch {earlier[-1]}"
        return "delete the run folder and start the run again"
    if earlier:
        return f"pass epoch={earlier[-1]} (or another earlier epoch) to use an earlier checkpoint"
    return "the run has no other checkpoint; train it again"


def _check_metadata(path: Path, fix: str) -> None:
    """Reads the checkpoint's JSON metadata through the one reader (a damaged file is named)."""
    for name in _METADATA_FILES:
        if (path / name).exists():
            read_json(path / name, what="checkpoint metadata", fix=fix)


def restore_state(run_dir: str | Path, epoch: int, state: Any) -> Any:
    """``state`` with step, params and optimizer state of the checkpoint of ``epoch``.

    Raises:
      RunFileError: the checkpoint is missing or damaged (one line).
    """
    target = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    path = checkpoint_dir(run_dir) / str(epoch)
    _check_metadata(path, _fix(Path(run_dir), epoch, for_training=True))

    def parse(_):
        with _quiet_restore(), ocp.CheckpointManager(checkpoint_dir(run_dir)) as mngr:
            return mngr.restore(epoch, args=ocp.args.StandardRestore(target))

    restored = read_file(path, parse, what="checkpoint", fix=_fix(Path(run_dir), epoch, for_training=True))
    return state.replace(step=restored["step"], params=restored["params"], opt_state=restored["opt_state"])


def restore_params(run_dir: str | Path, epoch: int) -> Any:
    """Params of the checkpoint of ``epoch`` (as saved, without a template).

    Raises:
      RunFileError: the checkpoint is missing or damaged (one line).
    """
    path = checkpoint_dir(run_dir) / str(epoch)
    _check_metadata(path, _fix(Path(run_dir), epoch, for_training=False))

    def parse(_):
        if not path.is_dir():
            raise FileNotFoundError(path)
        with _quiet_restore(), ocp.CheckpointManager(checkpoint_dir(run_dir)) as mngr:
            return mngr.restore(epoch, args=ocp.args.StandardRestore())["params"]

    return read_file(path, parse, what="checkpoint", fix=_fix(Path(run_dir), epoch, for_training=False))
