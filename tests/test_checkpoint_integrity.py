"""Checkpoint integrity: changed array bytes that Orbax restores without complaint are caught by checksums."""

from __future__ import annotations

import json
import logging
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lr_jax.experiment import checkpoints
from lr_jax.experiment.experiment import load_run
from lr_jax.experiment.run_files import RunFileError
from lr_jax.experiment.train import train_and_evaluate
from tests.conftest import TINY, compose_train

CONTRACT = ("metrics.jsonl", "bounds.npz", "data.json", "config.yaml", "status.json")


def _flip_array_bytes(run_dir, epoch):
    """Inverts 16 bytes inside the largest data file of a checkpoint (array data, not metadata)."""
    data = checkpoints.checkpoint_dir(run_dir) / str(epoch) / "default" / "ocdbt.process_0" / "d"
    target = max(data.iterdir(), key=lambda p: p.stat().st_size)
    raw = bytearray(target.read_bytes())
    for i in range(200, 216):
        raw[i] ^= 0xFF
    target.write_bytes(bytes(raw))


@pytest.fixture
def flipped(tmp_path, tiny_run):
    """A copy of the TINY run, interrupted at epoch 4, whose last checkpoint restores silently with wrong weights."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted", "epoch": 4}))
    _flip_array_bytes(run_dir, 4)
    # The damage is silent to Orbax: it restores, with different params.
    with ocp.CheckpointManager(checkpoints.checkpoint_dir(run_dir)) as mngr:
        damaged = mngr.restore(4, args=ocp.args.StandardRestore())["params"]
    with ocp.CheckpointManager(checkpoints.checkpoint_dir(tiny_run)) as mngr:
        intact = mngr.restore(4, args=ocp.args.StandardRestore())["params"]
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(intact), jax.tree.leaves(damaged)))
    return run_dir


def test_every_checkpoint_has_checksums(tiny_run):
    for epoch in checkpoints.saved_epochs(tiny_run):
        sums = json.loads(checkpoints.checksum_path(tiny_run, epoch).read_text())
        assert set(sums) == {"step", "params", "opt_state"}


def test_reading_changed_weights_is_refused_in_one_line(flipped):
    with pytest.raises(RunFileError) as err:
        load_run(flipped)  # what scripts/bound.py and the sweep readers use
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(flipped / "checkpoints" / "4"))
    assert "checksum" in message and "pass epoch=2" in message
    assert load_run(flipped, epoch=2).epoch == 2  # the earlier checkpoint is intact


def test_resume_falls_back_to_the_newest_intact_checkpoint(flipped, tiny_run, caplog):
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(compose_train(TINY + ["resume=true"]), flipped)
    warnings = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(warnings) == 1 and str(flipped / "checkpoints" / "4") in warnings[0]
    assert "resuming from the checkpoint of epoch 2" in warnings[0]
    for name in CONTRACT:
        assert (flipped / name).read_bytes() == (tiny_run / name).read_bytes(), name
    assert (flipped / "checkpoints" / "4.damaged").is_dir()
    assert checkpoints.saved_epochs(flipped) == [0, 2, 4]
