"""Train the paper's MLP and track local bounds: ``python scripts/train.py lr=0.02 depth=3``.

Thin Hydra entry point; the logic is lr_jax.experiment.train.train_and_evaluate.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lr_jax.experiment.config import register_configs
from lr_jax.experiment.run_files import write_json
from lr_jax.experiment.train import TrainingDiverged, train_and_evaluate

register_configs()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    # Orbax logs every checkpoint step through absl at INFO; keep the run log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        train_and_evaluate(cfg, HydraConfig.get().runtime.output_dir)
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:
        log.error("%s", e)
        _exit_unless_sweep(2, e)
    except Exception as e:  # noqa: BLE001 - a sweep must outlive one broken job
        log.exception("job failed")
        _exit_unless_sweep(1, e, reraise=True)


def _exit_unless_sweep(code: int, error: Exception, reraise: bool = False) -> None:
    """Exits (or re-raises) in a single run; in a sweep marks the job failed and returns."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        if reraise:
            raise error
        sys.exit(code)
    status = Path(HydraConfig.get().runtime.output_dir) / "status.json"
    write_json(status, {"status": "failed", "reason": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()
