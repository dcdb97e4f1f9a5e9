"""The Hydra config composes as documented and bad values fail with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from lr_jax.experiment.config import ConfigError, validate
from tests.conftest import ROOT, compose_train


def test_defaults_match_the_paper():
    cfg = compose_train()
    assert cfg.lr == 0.02 and cfg.optim.lr == 0.02 and cfg.optim.name == "sgd"
    assert cfg.model.depth == 3 and cfg.epochs == 20
    assert cfg.bound.radius == 0.4 and cfg.bound.eval_every == 2
    assert cfg.data.source == "embedded" and list(cfg.data.digits) == [0, 4]
    validate(cfg)


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("lr=0.001", "optim.lr", 0.001),
        ("depth=2", "model.depth", 2),
        ("width=64", "model.width", 64),
        ("seed=7", "seed", 7),
        ("optim=adam", "optim.name", "adam"),
        ("bound=sandwich", "bound.methods", ["paper", "tight", "sampled", "exact"]),
        ("data.source=tfds", "data.source", "tfds"),
        ("data.scale=255", "data.scale", 255.0),
        ("bound.radius=0.2", "bound.radius", 0.2),
    ],
)
def test_every_group_and_alias_override(override, key, value):
    cfg = compose_train([override])
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert (list(node) if key == "bound.methods" else node) == value


def test_unknown_key_and_wrong_type_are_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_train(["no_such_key=1"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_train(["depth=three"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("depth=0", "depth"),
        ("lr=-1", "learning rate"),
        ("bound.radius=0", "bound.radius"),
        ("bound.radius=-0.4", "bound.radius"),
        ("data.source=cifar", "data.source"),
        ("data.source=idx", "data.dir"),
        ("bound.methods=[tight]", "bound.methods"),
    ],
)
def test_bad_values_raise_config_error(override, match):
    cfg = compose_train([override])
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_missing_idx_dir_raises(tmp_path):
    cfg = compose_train(["data.source=idx", f"data.dir={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="no such directory"):
        validate(cfg)


@pytest.mark.parametrize("override", ["depth=0", "lr=-1", "data.source=cifar"])
def test_script_fails_fast_with_one_clear_line(override, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), override, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "invalid config" in line]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_script_rejects_unknown_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "bogus=1", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "bogus" in proc.stderr


def test_test_dir_needs_embedded_source_and_an_existing_folder(tmp_path):
    cfg = compose_train(["data.source=tfds", f"data.test_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.test_dir"):
        validate(cfg)
    cfg = compose_train([f"data.test_dir={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError, match="no such directory"):
        validate(cfg)
