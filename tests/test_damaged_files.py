"""Every file a run reads back, damaged three ways, gives one line naming it; nothing is marked complete."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest

from lr_jax.experiment.run_files import RunFileError
from lr_jax.experiment.train import train_and_evaluate
from tests.conftest import ROOT, TINY, compose_train

# file to damage -> the path the message must name (a checkpoint is named by its folder)
FILES = {
    "metrics.jsonl": "metrics.jsonl",
    "bounds.npz": "bounds.npz",
    "data.json": "data.json",
    "status.json": "status.json",
    "config.yaml": "config.yaml",
}
# A damaged checkpoint: a resume sets it aside and continues from the newest intact one.
CHECKPOINT_FILES = ("checkpoints/4/default/ocdbt.process_0/d", "checkpoints/4/_CHECKPOINT_METADATA")
CONTRACT = ("metrics.jsonl", "bounds.npz", "data.json", "config.yaml", "status.json")


def _damage(path, mode):
    for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if mode == "truncated":
            f.write_bytes(data[: len(data) // 2])
        elif mode == "zeroed":
            f.write_bytes(b"\0" * len(data))
        else:
            f.write_bytes(b"\x93garbage{[" * 5)


@pytest.fixture(scope="module")
def resumable(tmp_path_factory, tiny_run):
    """A TINY run whose status says it was interrupted at its last epoch: resume only checks and completes."""
    workdir = tmp_path_factory.mktemp("resumable") / "run"
    shutil.copytree(tiny_run, workdir)
    (workdir / "status.json").write_text(json.dumps({"status": "interrupted", "epoch": 4}))
    return workdir


def _damaged_copy(resumable, tmp_path, name, mode):
    run_dir = tmp_path / "run"
    shutil.copytree(resumable, run_dir)
    _damage(run_dir / name, mode)
    return run_dir


def _check(resumable, tmp_path, name, mode):
    run_dir = _damaged_copy(resumable, tmp_path, name, mode)
    with pytest.raises(RunFileError) as err:
        train_and_evaluate(compose_train(TINY + ["resume=true"]), run_dir)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(run_dir / FILES[name]))
    assert "delete" in message or "pass epoch=" in message  # says what to do
    assert b'"complete"' not in (run_dir / "status.json").read_bytes()


def _check_fallback(resumable, tiny_run, tmp_path, name, mode, caplog):
    run_dir = _damaged_copy(resumable, tmp_path, name, mode)
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(compose_train(TINY + ["resume=true"]), run_dir)
    lines = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(str(run_dir / "checkpoints" / "4"))
    assert "resuming from the checkpoint of epoch 2" in lines[0]
    for f in CONTRACT:
        assert (run_dir / f).read_bytes() == (tiny_run / f).read_bytes(), f


@pytest.mark.parametrize("name", list(FILES))
def test_garbage_file_is_named(resumable, tmp_path, name):
    _check(resumable, tmp_path, name, "garbage")


@pytest.mark.parametrize("name", [CHECKPOINT_FILES[0], pytest.param(CHECKPOINT_FILES[1], marks=pytest.mark.slow)])
def test_garbage_checkpoint_is_set_aside(resumable, tiny_run, tmp_path, name, caplog):
    _check_fallback(resumable, tiny_run, tmp_path, name, "garbage", caplog)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["truncated", "zeroed"])
@pytest.mark.parametrize("name", list(FILES))
def test_truncated_or_zeroed_file_is_named(resumable, tmp_path, name, mode):
    _check(resumable, tmp_path, name, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["truncated", "zeroed"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_truncated_or_zeroed_checkpoint_is_set_aside(resumable, tiny_run, tmp_path, name, mode, caplog):
    _check_fallback(resumable, tiny_run, tmp_path, name, mode, caplog)


def _one_error_line(output, path):
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if str(path) in line and ("error" in line.lower())]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def test_train_script_exits_2_with_one_line(resumable, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(resumable, run_dir)
    for epoch in (0, 2, 4):  # no intact checkpoint to fall back on
        _damage(run_dir / "checkpoints" / str(epoch) / "default" / "ocdbt.process_0" / "d", "zeroed")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY, "resume=true", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    line = _one_error_line(proc.stdout + proc.stderr, run_dir / "checkpoints" / "4")
    assert "delete the run folder and start the run again" in line


@pytest.mark.slow
def test_bound_script_exits_2_with_one_line(resumable, tmp_path):
    run_dir = _damaged_copy(resumable, tmp_path, "checkpoints/4/default/ocdbt.process_0/d", "truncated")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bound.py"), f"checkpoint={run_dir}"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert "pass epoch=2" in _one_error_line(proc.stderr, run_dir / "checkpoints" / "4")
