"""Shared fixtures: the real Hydra config, composed as scripts/train.py composes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lr_jax.experiment.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED_MNIST = ROOT.parent / "shared" / "mnist"

# A run small enough for a test: a few points, a narrow net, two evaluations after epoch 0.
TINY = [
    "data.per_class=10",
    "data.n_random=12",
    "width=8",
    "depth=2",
    "epochs=4",
    "optim.batch_size=8",
    "bound.num_grid=4",
    "bound.num_bisect=3",
    "plot=true",
]


def compose_train(overrides=(), return_hydra: bool = False):
    """The composed ``train`` config with ``overrides`` (Hydra syntax); with the ``hydra`` node if asked."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra)


@pytest.fixture
def tiny_cfg():
    return compose_train(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished TINY run (epochs 0, 2, 4), shared by the test files: copy it before changing it."""
    from lr_jax.experiment.train import train_and_evaluate

    workdir = tmp_path_factory.mktemp("tiny_run")
    train_and_evaluate(compose_train(TINY), workdir)
    return workdir
