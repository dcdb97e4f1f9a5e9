"""Atomic writes of a run's files: a file is either absent or complete.

Every writer goes through :func:`atomic_write` (write ``name.tmp``, then
rename), so an interrupted run never leaves a half-written file that looks
finished. Used by the training loop, ``lr_jax.experiment.saved_runs`` and the scripts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write(tmp_path)`` and renames the result onto ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_metrics(path: Path, rows: list[dict]) -> None:
    """One JSON object per line (``metrics.jsonl``)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write(path, lambda p: p.write_text(text))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(p):
        with open(p, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
