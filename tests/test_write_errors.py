"""A write that fails (full disk, read-only folder) ends in one line; nothing half-written stays; the run resumes."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lr_jax.experiment.run_files import RunWriteError
from lr_jax.experiment.train import train_and_evaluate
from tests.conftest import ROOT, TINY, compose_train

CONTRACT = ("metrics.jsonl", "bounds.npz", "data.json", "config.yaml", "status.json", "trajectories.png")


def _leftovers(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if "tmp" in p.name)


def test_full_disk_is_one_line_and_the_run_resumes(tmp_path, tiny_run, monkeypatch):
    run_dir = tmp_path / "run"
    write_array, calls = np.lib.format.write_array, []

    per_write = 2 * 4 + 1  # bounds.npz: C and radius of 4 categories, and the epochs

    def full_disk(f, array, **kw):  # bounds.npz of epoch 2 hits a full disk half-way
        calls.append(1)
        if len(calls) > per_write + 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_array(f, array, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", full_disk)
    with pytest.raises(RunWriteError) as err:
        train_and_evaluate(compose_train(TINY), run_dir)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{run_dir / 'bounds.npz'}: could not write bounds.npz (No space left on device)")
    assert f"resume=true hydra.run.dir={run_dir}" in message
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["epoch"] == 0
    assert _leftovers(run_dir) == []
    monkeypatch.setattr(np.lib.format, "write_array", write_array)  # space freed
    train_and_evaluate(compose_train(TINY + ["resume=true"]), run_dir)
    for name in CONTRACT:
        assert (run_dir / name).read_bytes() == (tiny_run / name).read_bytes(), name


# scripts/train.py under a file-size limit: every write past it fails in the kernel (EFBIG), TensorStore's too.
LIMITED = textwrap.dedent(
    """
    import resource, runpy, signal, sys
    sys.path.insert(0, {root!r})
    import lr_jax.experiment.train  # imported before the limit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = [{script!r}] + sys.argv[2:]
    runpy.run_path({script!r}, run_name="__main__")
    """
).format(root=str(ROOT), script=str(ROOT / "scripts" / "train.py"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "limit, overrides, failed",
    [(50_000, [], "trajectories.png"), (6_000, ["width=64"], "checkpoints/0")],  # the plot; the first checkpoint
)
def test_file_size_limit_in_the_script_is_one_line_and_resumable(tmp_path, tiny_run, limit, overrides, failed):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *TINY, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out and "Logging error" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if "could not write" in line]
    assert len(lines) == 1 and f"{run_dir / failed}: could not write" in lines[0] and "File too large" in lines[0]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert _leftovers(run_dir) == []
    train_and_evaluate(compose_train(TINY + overrides + ["resume=true"]), run_dir)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    if not overrides:
        for name in CONTRACT:
            assert (run_dir / name).read_bytes() == (tiny_run / name).read_bytes(), name


def test_read_only_folder_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    from lr_jax.experiment import run_lock

    def read_only(path, *a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(run_lock.os, "open", read_only)
    run_dir = tmp_path / "run"
    with pytest.raises(RunWriteError) as err:
        train_and_evaluate(compose_train(TINY), run_dir)
    assert str(err.value).startswith(f"{run_dir / 'run.lock'}: could not write run lock (Read-only file system); ")
    assert "\n" not in str(err.value) and list(run_dir.iterdir()) == []
