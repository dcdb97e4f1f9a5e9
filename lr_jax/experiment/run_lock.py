"""A lock file in a run folder: one process writes into a run at a time.

``run.lock`` is held with an exclusive ``flock`` for the life of the process
that writes the run, and names that process (PID, host, command line). The
kernel drops the lock when its process dies, however it dies (SIGKILL, a crash,
power loss of a local disk), so a lock file left behind by a dead process is
stale and the next run takes it over: that is the crash-safe rule, with no
guessing from PIDs that may have been reused. A second live process gets
:class:`RunLockedError` with one line naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from lr_jax.experiment.run_files import RunWriteError

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder; the message names it."""


class RunLock:
    """Exclusive lock of a run folder (a context manager).

    Example::

      with RunLock(workdir):
          ...  # write run files
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises :class:`RunLockedError` (never waits).

        Raises:
          RunLockedError: another process holds it.
          RunWriteError: the lock file cannot be written (a read-only folder, a full disk).
        """
        try:
            self._acquire()
        except OSError as e:
            raise RunWriteError.of(self.path, OSError(e.strerror) if e.strerror else e, what="run lock") from None

    def _acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it, "
                    "then run again (a lock left by a dead process is cleared automatically)."
                ) from None
            # The holder before us may have unlinked the file after we opened it: lock the file on disk.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file and drops the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """``process PID on HOST (COMMAND)`` from the lock file, or a generic description."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"process {info['pid']} on {info['host']} ({info['command']})"
    except (ValueError, KeyError, OSError):
        return "another process"
