"""Train the paper's MLP and track local bounds: ``python scripts/train.py lr=0.02 depth=3``.

Thin Hydra entry point; the logic is lr_jax.experiment.train.train_and_evaluate.
``--help`` prints the written help (configs/hydra/help/train.yaml). Exit codes:
0 complete, 2 a refused setting or a damaged/locked run folder (one line),
130 interrupted (one line saying how to resume), 1 an unexpected error.
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
from lr_jax.experiment.run_files import RunFileError, write_json
from lr_jax.experiment.run_lock import RunLockedError
from lr_jax.experiment.train import RunInterrupted, TrainingDiverged, train_and_evaluate

register_configs()
log = logging.getLogger("train")

# One-line failures: bad settings, refused resumes, damaged or locked run folders, bad data.
CLEAR_ERRORS = (ValueError, FileNotFoundError, RunFileError, RunLockedError, TrainingDiverged)


def _quiet_libraries() -> None:
    # Orbax logs every checkpoint step through absl at INFO, and JAX says at INFO that
    # it found no TPU on every start; keep the run log to what the run does.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    _quiet_libraries()
    workdir = Path(HydraConfig.get().runtime.output_dir)
    try:
        train_and_evaluate(cfg, workdir)
    except RunInterrupted as e:
        log.warning("%s", e)
        sys.exit(130)
    except KeyboardInterrupt:
        log.warning("stopped at once; the run keeps its last checkpoint: continue with "
                    "`python scripts/train.py resume=true hydra.run.dir=%s`.", workdir)
        sys.exit(130)
    except CLEAR_ERRORS as e:
        log.error("%s", e)
        _exit_unless_sweep(2, e, workdir)
    except Exception as e:  # noqa: BLE001 - a sweep must outlive one broken job
        log.exception("job failed")
        _exit_unless_sweep(1, e, workdir, reraise=True)


def _exit_unless_sweep(code: int, error: Exception, workdir: Path, reraise: bool = False) -> None:
    """Exits (or re-raises) in a single run; in a sweep the job is reported failed and the sweep goes on."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        if reraise:
            raise error
        sys.exit(code)
    status = workdir / "status.json"
    if not status.exists():  # refused before it started (e.g. a bad value): say so where the sweep looks
        write_json(status, {"status": "failed", "epoch": None, "reason": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()
