"""Orbax checkpoints of a run: one per evaluated epoch (and one where a run was interrupted).

A checkpoint holds the train state's ``step`` (optimizer steps), ``params`` and
``opt_state`` under ``<run>/checkpoints/<epoch>``. Orbax writes each into a
temporary folder and renames it when complete, so a kill during a save leaves
no checkpoint that looks valid. Every restore goes through
:func:`lr_jax.experiment.run_files.read_file`: a damaged checkpoint gives one
line naming it and what to do.

Orbax does not notice changed array bytes that still decode (a flipped bit in
a weight restores as a wrong weight), so :func:`save` first writes
``<run>/checkpoints/<epoch>.sha256.json``: a SHA-256 of every saved array
(dtype, shape and bytes), per item (``step``, ``params``, ``opt_state``).
Every restore recomputes them and refuses a mismatch (:class:`ChecksumMismatch`,
one line). Written before the checkpoint, the checksums exist for every
checkpoint Orbax finalised; a checkpoint saved before checksums were recorded
has none and is restored unverified (with a warning).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lr_jax.experiment.run_files import RunFileError, RunWriteError, atomic_write, read_file, read_json

log = logging.getLogger(__name__)

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


class ChecksumMismatch(RunFileError):
    """A checkpoint's arrays differ from the checksums written when it was saved."""


def checksum_path(run_dir: str | Path, epoch: int) -> Path:
    """``<run>/checkpoints/<epoch>.sha256.json``: the checksums of that checkpoint's arrays."""
    return checkpoint_dir(run_dir) / f"{epoch}.sha256.json"


def tree_checksum(tree: Any) -> str:
    """SHA-256 over every leaf of ``tree`` (path, dtype, shape and bytes, in path order).

    ``None`` leaves (empty optimizer states) are not counted, and integers are
    hashed as int64 (Orbax gives a Python-int step back where the template had
    one), so a tree and its restored copy agree whatever containers and integer
    types Orbax gives back.
    """
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(((jax.tree_util.keystr(p), leaf) for p, leaf in leaves), key=lambda item: item[0]):
        arr = np.asarray(jax.device_get(leaf))
        arr = np.ascontiguousarray(arr.astype(np.int64) if np.issubdtype(arr.dtype, np.integer) else arr)
        digest.update(f"{path}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _items(state: Any) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _remove_partial(run_dir: Path, epoch: int) -> None:
    """Removes what a failed save of ``epoch`` left: Orbax's temporary folder, the checksums."""
    for p in checkpoint_dir(run_dir).glob(f"{epoch}.orbax-checkpoint-tmp*"):
        shutil.rmtree(p, ignore_errors=True)
    if not (checkpoint_dir(run_dir) / str(epoch)).is_dir():
        checksum_path(run_dir, epoch).unlink(missing_ok=True)


def save(mngr: ocp.CheckpointManager, epoch: int, state: Any) -> None:
    """Saves ``state`` (a ``TrainState``) as the checkpoint of ``epoch`` and waits for it.

    The checksums of its arrays are written first (:func:`checksum_path`).

    Raises:
      RunWriteError: the checkpoint could not be written (full disk, read-only
        folder); what the save left is removed, the message is one line.
    """
    items = _items(state)
    run_dir = Path(mngr.directory).parent
    sums = {name: tree_checksum(tree) for name, tree in items.items()}
    path = checkpoint_dir(run_dir) / str(epoch)
    try:
        atomic_write(checksum_path(run_dir, epoch), lambda p: p.write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n"))
        with _quiet_orbax():  # a failed write is reported once, below, not by Orbax's threads
            mngr.save(epoch, args=ocp.args.StandardSave(items))
            mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise their own types for a failed write
        _remove_partial(run_dir, epoch)
        if isinstance(e, RunWriteError):
            raise
        raise RunWriteError.of(path, _os_error(e), what="checkpoint") from None


def _os_error(error: BaseException) -> BaseException:
    """The operating system's error inside a TensorStore message (``[os_error_code='28']``), if any."""
    found = re.search(r"os_error_code='?(\d+)", str(error))
    return OSError(os.strerror(int(found.group(1)))) if found else error


def _verify(run_dir: Path, epoch: int, restored: dict, fix: str) -> None:
    """Compares the restored items with the checksums written at save; raises :class:`ChecksumMismatch`."""
    path = checksum_path(run_dir, epoch)
    if not path.exists():
        log.warning("%s: checkpoint has no checksums (saved before lr_jax recorded them); restored unverified", path.parent / str(epoch))
        return
    sums = read_json(path, what="checkpoint checksums", fix=fix)
    if not isinstance(sums, dict):
        raise RunFileError(f"{path}: checkpoint checksums are damaged (not a mapping); {fix}.")
    bad = [name for name, tree in restored.items() if sums.get(name) != tree_checksum(tree)]
    if bad:
        raise ChecksumMismatch(
            f"{checkpoint_dir(run_dir) / str(epoch)}: checkpoint is damaged (its {', '.join(bad)} differ from the "
            f"checksums written when it was saved); {fix}."
        )


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
def _quiet_orbax():
    """Silences Orbax's own ERROR lines while restoring or saving: a failure is reported once, by lr_jax."""
    _drop_failed_read_aftermath()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def set_aside(run_dir: str | Path, epoch: int) -> Path:
    """Renames the checkpoint of ``epoch`` to ``<epoch>.damaged`` (kept for inspection, no longer listed)."""
    path = checkpoint_dir(run_dir) / str(epoch)
    aside = path.with_name(f"{epoch}.damaged")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{epoch}.damaged{n}")
    path.rename(aside)
    checksum_path(run_dir, epoch).unlink(missing_ok=True)
    return aside


def _fix(run_dir: Path, epoch: int, for_training: bool) -> str:
    earlier = [e for e in saved_epochs(run_dir) if e < epoch]
    if for_training:
        if earlier:
            return f"resume=true sets it aside and continues from the checkpoint of epoch {earlier[-1]}"
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
      RunFileError: the checkpoint is missing or damaged, or its arrays do not
        match their checksums (:class:`ChecksumMismatch`; one line).
    """
    target = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    path = checkpoint_dir(run_dir) / str(epoch)
    _check_metadata(path, _fix(Path(run_dir), epoch, for_training=True))

    def parse(_):
        with _quiet_orbax(), ocp.CheckpointManager(checkpoint_dir(run_dir)) as mngr:
            return mngr.restore(epoch, args=ocp.args.StandardRestore(target))

    fix = _fix(Path(run_dir), epoch, for_training=True)
    restored = read_file(path, parse, what="checkpoint", fix=fix)
    _verify(Path(run_dir), epoch, restored, fix)
    return state.replace(step=restored["step"], params=restored["params"], opt_state=restored["opt_state"])


def restore_params(run_dir: str | Path, epoch: int) -> Any:
    """Params of the checkpoint of ``epoch`` (as saved, without a template).

    Raises:
      RunFileError: the checkpoint is missing or damaged, or its params do not
        match their checksum (:class:`ChecksumMismatch`; one line).
    """
    path = checkpoint_dir(run_dir) / str(epoch)
    _check_metadata(path, _fix(Path(run_dir), epoch, for_training=False))

    def parse(_):
        if not path.is_dir():
            raise FileNotFoundError(path)
        with _quiet_orbax(), ocp.CheckpointManager(checkpoint_dir(run_dir)) as mngr:
            return mngr.restore(epoch, args=ocp.args.StandardRestore())["params"]

    fix = _fix(Path(run_dir), epoch, for_training=False)
    params = read_file(path, parse, what="checkpoint", fix=fix)
    _verify(Path(run_dir), epoch, {"params": params}, fix)
    return params
