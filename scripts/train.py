"""Train the paper's MLP and track local bounds: ``python scripts/train.py lr=0.02 depth=3``.

Thin Hydra entry point; the logic is lr_jax.train.train_and_evaluate.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lr_jax.config import ConfigError, register_configs
from lr_jax.train import train_and_evaluate

register_configs()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    # Orbax logs every checkpoint step through absl at INFO; keep the run log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        train_and_evaluate(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, FileNotFoundError) as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
