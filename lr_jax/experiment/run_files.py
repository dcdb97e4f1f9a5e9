"""Writing and reading back a run's files: atomic writes, and one reader that names what is damaged.

Every writer goes through :func:`atomic_write` (write ``name.tmp``, then
rename), so an interrupted run never leaves a half-written file that looks
finished. Every file read back (``metrics.jsonl``, ``bounds.npz``,
``data.json``, ``status.json``, ``config.yaml``, checkpoints) goes through
:func:`read_file`, which turns any parse or I/O failure into a
:class:`RunFileError` whose message is one line: the file, what is wrong and
what to do. Used by the training loop, ``saved_runs``, ``sweep`` and the
scripts.

``metrics.jsonl`` is strict JSON: a non-finite number is written as ``null``
(the row's ``diverged`` flag says why) and a ``NaN`` token is refused on
reading. ``bounds.npz`` is written byte-for-byte reproducibly (fixed zip
timestamps), so a resumed run ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from omegaconf import OmegaConf

T = TypeVar("T")

# What to do with a damaged file that the run cannot rebuild on its own.
FIX_RUN = "delete the run folder and start the run again"


class RunFileError(Exception):
    """A run file is missing or damaged; the message is one line naming it and the fix."""


class RunWriteError(RunFileError):
    """A run file could not be written (full disk, read-only folder, quota); one line naming it.

    Attributes:
      path: the file (or checkpoint folder) being written.
      reason: the first line of the underlying error.
      what: what the file is (``"metrics"``, ``"checkpoint"``, ...).
    """

    def __init__(self, path: Path, reason: str, what: str, then: str = "run it again"):
        self.path, self.reason, self.what = Path(path), reason, what
        super().__init__(f"{path}: could not write {what} ({reason}); free space or make the folder writable, then {then}.")

    @classmethod
    def of(cls, path: Path, error: BaseException, what: str = "file", then: str = "run it again") -> "RunWriteError":
        """The one-line error for ``error`` raised while writing ``path``."""
        return cls(path, _reason(error), what, then)

    def then(self, then: str) -> "RunWriteError":
        """The same error with another instruction (e.g. the command that resumes the run)."""
        return RunWriteError(self.path, self.reason, self.what, then)


# ---------------------------------------------------------------------------
# Reading


def _reason(error: BaseException) -> str:
    """The first line of an exception's message, short enough for a one-line report."""
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    first = first.split(" See full TensorStore details")[0]  # the rest is a repr of a bound method
    return (first[:200] + "...") if len(first) > 200 else first


def read_file(path: str | Path, parse: Callable[[Path], T], *, what: str, fix: str) -> T:
    """Reads ``path`` with ``parse``; any failure becomes one :class:`RunFileError` line.

    Args:
      path: the file (or checkpoint folder) to read.
      parse: reads and checks the file; may raise anything.
      what: what the file is (``"metrics"``, ``"checkpoint"``, ...), for the message.
      fix: what the user should do about a damaged file.

    Raises:
      RunFileError: ``"<path>: <what> is missing|damaged (<reason>); <fix>."``
    """
    path = Path(path)
    try:
        return parse(path)
    except RunFileError:
        raise
    except FileNotFoundError:
        raise RunFileError(f"{path}: {what} is missing; {fix}.") from None
    except Exception as e:  # noqa: BLE001 - every parser has its own errors; the user needs one line
        raise RunFileError(f"{path}: {what} is damaged ({_reason(e)}); {fix}.") from None


def _reject_constant(token: str):
    raise ValueError(f"non-standard JSON token {token}")


def _parse_json(path: Path) -> Any:
    return json.loads(path.read_text(), parse_constant=_reject_constant)


def read_json(path: str | Path, *, what: str = "JSON file", fix: str = FIX_RUN) -> Any:
    """A JSON file (``status.json``, ``data.json``, ``timing.json``)."""
    return read_file(path, _parse_json, what=what, fix=fix)


def _parse_metrics(path: Path, time_key: str = "epoch") -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_reject_constant)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}") from None
        if not isinstance(row, dict) or time_key not in row or "category" not in row:
            raise ValueError(f"line {number} is not a row with {time_key} and category")
        rows.append(row)
    return rows


def read_metrics(path: str | Path, *, fix: str = FIX_RUN, time_key: str = "epoch") -> list[dict]:
    """Rows of a ``metrics.jsonl`` (strict JSON, one object with ``time_key`` (``epoch``, or ``step`` in
    the grokking study) and ``category`` per line)."""
    return read_file(path, lambda p: _parse_metrics(p, time_key), what="metrics", fix=fix)


def _parse_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_npz(path: str | Path, *, what: str = "per-point bounds", fix: str = FIX_RUN) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, loaded eagerly (so a damaged member fails here)."""
    return read_file(path, _parse_npz, what=what, fix=fix)


def _parse_yaml(path: Path) -> dict:
    text = path.read_text()
    if not text.strip():
        raise ValueError("empty file")
    cfg = OmegaConf.to_container(OmegaConf.create(text))
    if not isinstance(cfg, dict):
        raise ValueError("not a mapping")
    return cfg


def read_yaml(path: str | Path, *, what: str = "config", fix: str = FIX_RUN) -> dict:
    """A YAML mapping (a run's recorded ``config.yaml``), as a plain dict."""
    return read_file(path, _parse_yaml, what=what, fix=fix)


# ---------------------------------------------------------------------------
# Writing


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write(tmp_path)`` and renames the result onto ``path``.

    Raises:
      RunWriteError: an ``OSError`` while writing or renaming (full disk,
        read-only folder); ``path`` keeps its previous content and the
        temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a folder that refuses the write may refuse the removal too; the first error is the one to report
        raise RunWriteError.of(path, _os_reason(e), what=path.name) from None


def _os_reason(error: OSError) -> BaseException:
    """An OSError without its file name (the message names the file once, first)."""
    return OSError(error.strerror) if error.strerror else error


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"))


def json_safe(value):
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_metrics(path: Path, rows: list[dict]) -> None:
    """One strict-JSON object per line (``metrics.jsonl``); non-finite numbers become ``null``."""
    text = "".join(json.dumps(json_safe(r), sort_keys=True, allow_nan=False) + "\n" for r in rows)
    atomic_write(path, lambda p: p.write_text(text))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` with fixed member timestamps (same arrays, same bytes)."""

    def write(p):
        with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(arrays[name]), allow_pickle=False)

    atomic_write(path, write)


def write_yaml(path: Path, cfg: dict) -> None:
    """A plain nested dict as YAML (a run's ``config.yaml``)."""
    text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    atomic_write(path, lambda p: p.write_text(text))
