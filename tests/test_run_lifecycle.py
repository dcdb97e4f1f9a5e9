"""A run's lifecycle under faults: kills, interrupts, refused resumes, a second process.

Kills and interrupts happen inside a real ``scripts/train.py`` process at
chosen points (a driver patches the checkpoint writer or the epoch function to
signal its own process there), then ``resume=true`` must end with files
byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from lr_jax.experiment.config import ConfigError
from lr_jax.experiment.run_lock import RunLockedError
from lr_jax.experiment.train import train_and_evaluate
from tests.conftest import ROOT, TINY, compose_train

# Files whose bytes must not depend on whether, where or how often the run was interrupted.
CONTRACT = ("metrics.jsonl", "bounds.npz", "data.json", "config.yaml", "status.json", "trajectories.png")

# Runs scripts/train.py with a fault at one point: argv = POINT EPOCH SIGNAL OVERRIDES...
DRIVER = textwrap.dedent(
    """
    import os, runpy, signal, sys
    sys.path.insert(0, {root!r})
    from lr_jax.experiment import checkpoints, train

    point, at, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    fire = lambda: os.kill(os.getpid(), sig)
    save = checkpoints.save

    def faulty_save(mngr, epoch, state):
        if point == "before_checkpoint" and epoch == at:
            fire()
        save(mngr, epoch, state)
        if point == "after_checkpoint" and epoch == at:
            fire()

    checkpoints.save = faulty_save
    make_epoch_fn = train.make_epoch_fn

    def faulty_make_epoch_fn(*args):
        epoch_fn = make_epoch_fn(*args)
        calls = iter(range(1, 10**6))

        def run(*a):
            if point == "in_epoch" and next(calls) == at:
                fire()
            return epoch_fn(*a)

        return run

    train.make_epoch_fn = faulty_make_epoch_fn
    load = train.load_categories

    def faulty_load(*a):
        if point == "before_data":
            fire()
        return load(*a)

    train.load_categories = faulty_load
    sys.argv = [{script!r}] + sys.argv[4:]
    runpy.run_path({script!r}, run_name="__main__")
    """
).format(root=str(ROOT), script=str(ROOT / "scripts" / "train.py"))


def _train_script(run_dir, *overrides, fault=("none", 0, "SIGKILL")):
    point, epoch, sig = fault
    return subprocess.run(
        [sys.executable, "-c", DRIVER, point, str(epoch), sig, *TINY, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def reference(tiny_run):
    """An uninterrupted TINY run."""
    return tiny_run


def _assert_identical(run_dir, reference):
    for name in CONTRACT:
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    assert not (run_dir / "run.lock").exists()


def _status(run_dir):
    return json.loads((run_dir / "status.json").read_text())


def _kill_then_resume(tmp_path, reference, fault):
    run_dir = tmp_path / "run"
    proc = _train_script(run_dir, fault=fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _status(run_dir)["status"] == "running"
    train_and_evaluate(compose_train(TINY + ["resume=true"]), run_dir)
    _assert_identical(run_dir, reference)


@pytest.mark.slow
def test_kill_before_first_checkpoint_resumes_from_scratch_in_place(tmp_path, reference):
    # metrics.jsonl already holds epoch 0's rows; no checkpoint exists yet.
    _kill_then_resume(tmp_path, reference, ("before_checkpoint", 0, "SIGKILL"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        ("before_data", 0, "SIGKILL"),  # config.yaml written, nothing else
        ("before_checkpoint", 2, "SIGKILL"),  # rows of epoch 2 written, checkpoint of epoch 2 not
        ("after_checkpoint", 2, "SIGKILL"),  # checkpoint of epoch 2 written, status still at epoch 0
        ("in_epoch", 3, "SIGKILL"),  # training epoch 3, after the checkpoint of epoch 2
    ],
    ids=lambda f: f"{f[0]}-{f[1]}" if isinstance(f, tuple) else str(f),
)
def test_kill_anywhere_then_resume_gives_identical_files(tmp_path, reference, fault):
    _kill_then_resume(tmp_path, reference, fault)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_marks_interrupted_and_resumes_identically(tmp_path, reference, sig):
    run_dir = tmp_path / "run"
    # Ctrl-C (or a scheduler's SIGTERM) while epoch 3 trains: the run stops after epoch 3 (not an
    # evaluated epoch) and saves it.
    proc = _train_script(run_dir, fault=("in_epoch", 3, sig))
    assert proc.returncode == 130, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "interrupted after epoch 3" in line]
    assert len(lines) == 1 and f"resume=true hydra.run.dir={run_dir}" in lines[0]
    assert _status(run_dir) == {"status": "interrupted", "epoch": 3}
    proc = _train_script(run_dir, "resume=true", "plot=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_identical(run_dir, reference)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, reference):
    """A run stopped after epoch 2 of 4 (the reference's files up to epoch 2)."""
    workdir = tmp_path_factory.mktemp("interrupted")
    train_and_evaluate(compose_train([o for o in TINY if not o.startswith("epochs")] + ["epochs=2"]), workdir)
    (workdir / "config.yaml").write_text((reference / "config.yaml").read_text())
    (workdir / "status.json").write_text(json.dumps({"status": "interrupted", "epoch": 2}))
    return workdir


@pytest.mark.parametrize("override, key", [("lr=0.5", "lr"), ("depth=3", "depth"), ("data.scale=32", "data.scale"), ("seed=1", "seed")])
def test_resume_with_a_changed_setting_is_refused(interrupted, override, key):
    before = {p.name: p.read_bytes() for p in interrupted.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=rf"settings differ .*\b{key}: ") as err:
        train_and_evaluate(compose_train(TINY + ["resume=true", override]), interrupted)
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in interrupted.iterdir() if p.is_file()} == before


def test_resume_with_output_only_changes_proceeds(tmp_path, interrupted, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)
    train_and_evaluate(compose_train(TINY + ["resume=true", "plot=false", "logger=tensorboard"]), run_dir)
    for name in ("metrics.jsonl", "bounds.npz"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes()
    assert _status(run_dir)["status"] == "complete"
    tags = _event_tags(run_dir / "tensorboard")
    # Epoch 4 was evaluated after the resume: a scalar of every metric and a histogram of C per category.
    assert {("mean_log2_bound/train", 4), ("num_single_region/random2", 4), ("C/test", 4)} <= tags


def _event_tags(log_dir):
    """(tag, step) of every summary value in the TensorBoard event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    tags = set()
    for path in log_dir.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            tags |= {(v.tag, event.step) for v in event.summary.value}
            pos += 12 + length + 4
    return tags


def test_run_recorded_before_seeds_existed_resumes(tmp_path, interrupted, reference):
    import yaml

    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    del cfg["seeds"]  # config.yaml as written before seeds=K existed: one seed
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    train_and_evaluate(compose_train(TINY + ["resume=true"]), run_dir)
    for name in ("metrics.jsonl", "bounds.npz"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes()
    with pytest.raises(ConfigError, match=r"settings differ .*\bseeds: 1 -> 2"):
        train_and_evaluate(compose_train(TINY + ["resume=true", "seeds=2"]), interrupted)


def test_resume_refuses_records_missing_an_evaluation(tmp_path, interrupted):
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(rows[:-4]) + "\n")  # the last evaluation's rows lost
    with pytest.raises(Exception, match=r"metrics.jsonl: metrics do not match the checkpoint of epoch 2 \(rows missing for epochs \[2\]"):
        train_and_evaluate(compose_train(TINY + ["resume=true"]), run_dir)
    assert _status(run_dir)["status"] != "complete"
    (run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(Exception, match=r"rows missing for epochs \[0, 2\]"):
        train_and_evaluate(compose_train(TINY + ["resume=true"]), run_dir)
    assert _status(run_dir)["status"] != "complete"


def test_second_process_is_refused_and_a_stale_lock_is_cleared(tmp_path, reference):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lr_jax.experiment.run_lock import RunLock; "
         f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} on "):
            train_and_evaluate(compose_train(TINY), run_dir)
        assert not (run_dir / "status.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / "run.lock").exists()  # left behind by the killed holder: stale
    train_and_evaluate(compose_train(TINY), run_dir)
    _assert_identical(run_dir, reference)


@pytest.mark.slow
def test_the_printed_resume_line_continues_the_run_as_is(tmp_path, reference):
    import shlex

    run_dir = tmp_path / "run"
    proc = _train_script(run_dir, fault=("in_epoch", 3, "SIGINT"))  # TINY: every setting non-default
    assert proc.returncode == 130, proc.stderr[-2000:]
    line = next(line for line in (proc.stdout + proc.stderr).splitlines() if "interrupted after epoch 3" in line)
    command = shlex.split(line.split("`")[1])
    assert command[:2] == ["python", "scripts/train.py"]
    proc = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_identical(run_dir, reference)
