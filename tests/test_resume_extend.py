"""A resume runs the recorded settings (the printed line works as printed); raising epochs extends a run."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf

from lr_jax.experiment import checkpoints
from lr_jax.experiment.config import ConfigError, command_line_keys
from lr_jax.experiment.train import train_and_evaluate
from tests.conftest import TINY, compose_train

CONTRACT = ("metrics.jsonl", "bounds.npz", "data.json", "config.yaml", "status.json")


def _given(overrides):
    """The keys a command line of ``overrides`` sets, as scripts/train.py computes them."""
    plain = lambda c: OmegaConf.to_container(c, resolve=True)  # noqa: E731
    return command_line_keys(overrides, plain(compose_train(overrides)), plain(compose_train()))


def _resume(run_dir, overrides):
    overrides = ["resume=true", *overrides]
    return train_and_evaluate(compose_train(overrides), run_dir, _given(overrides))


@pytest.fixture
def stopped_at_2(tmp_path, tiny_run):
    """The TINY run (non-default settings) as if interrupted after epoch 2."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "4")
    checkpoints.checksum_path(run_dir, 4).unlink()
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted", "epoch": 2}))
    return run_dir


def _assert_identical(run_dir, reference):
    for name in CONTRACT:
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow  # the fast tier resumes with given keys below; the printed line itself: test_run_lifecycle
def test_resume_without_overrides_runs_the_recorded_settings(stopped_at_2, tiny_run):
    _resume(stopped_at_2, [])  # exactly what the interrupt line prints: resume=true and the folder
    _assert_identical(stopped_at_2, tiny_run)


def test_resume_compares_only_the_overrides_given(stopped_at_2, tiny_run):
    with pytest.raises(ConfigError, match=r"settings differ .*\blr: 0\.02 -> 0\.5"):
        _resume(stopped_at_2, ["lr=0.5"])
    with pytest.raises(ConfigError, match=r"settings differ .*\bdata\.scale: 64\.0 -> 16\.0"):
        _resume(stopped_at_2, ["robustness=scale16"])  # a group choice: the keys it changes are compared
    _resume(stopped_at_2, ["width=8", "plot=true"])  # given, and equal to the record
    _assert_identical(stopped_at_2, tiny_run)


def test_raising_epochs_extends_a_complete_run(tmp_path, tiny_run):
    # epochs=3 evaluates 0, 2, 3; a run of 4 epochs evaluates 0, 2, 4: epoch 3's rows must go.
    short = [o for o in TINY if not o.startswith("epochs=")] + ["epochs=3"]
    run_dir = tmp_path / "run"
    train_and_evaluate(compose_train(short), run_dir)
    with pytest.raises(ConfigError, match="already complete"):
        _resume(run_dir, [])
    with pytest.raises(ConfigError, match=r"settings differ .*\bepochs: 3 -> 2"):
        _resume(run_dir, ["epochs=2"])
    _resume(run_dir, ["epochs=4"])
    _assert_identical(run_dir, tiny_run)
    assert checkpoints.saved_epochs(run_dir) == [0, 2, 3, 4]
