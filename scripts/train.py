"""Train the paper's MLP and track local bounds: ``python scripts/train.py lr=0.02 depth=3``.

Thin Hydra entry point; the logic is lr_jax.experiment.train.train_and_evaluate.
``--help`` prints the written help (configs/hydra/help/train.yaml). The
command line is checked before Hydra runs (unknown keys, with or without
``+``, and values of the wrong type: one line). ``resume=true`` runs the
recorded settings and compares only the keys given on its command line.
Exit codes: 0 complete, 2 a refused setting or a damaged/locked run folder (one line),
130 interrupted (one line saying how to resume), 1 an unexpected error.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lr_jax.experiment.config import ConfigError, check_command_line, command_line_keys, register_configs

register_configs()
log = logging.getLogger("train")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# What Hydra writes into the run folder before the job starts; a refused new run removes it.
HYDRA_LEFTOVERS = {".hydra", "train.log"}


def _quiet_libraries() -> None:
    # Orbax logs every checkpoint step through absl at INFO, and JAX says at INFO that
    # it found no TPU on every start; keep the run log to what the run does.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # A full disk also stops train.log: that must not add a traceback per log line to the one-line error.
    logging.raiseExceptions = False


def _given_keys(cfg: DictConfig) -> set[str] | None:
    """With ``resume=true``, the keys this command line set (the rest comes from the run's record)."""
    if not cfg.resume:
        return None
    try:
        defaults = OmegaConf.to_container(hydra.compose(config_name="train"), resolve=True)
    except Exception:  # noqa: BLE001 - no compose API in this launcher's worker: compare every setting, as before
        return None
    return command_line_keys(list(HydraConfig.get().overrides.task), OmegaConf.to_container(cfg, resolve=True), defaults)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    _quiet_libraries()
    # Imported here, not at the top: `--help` and a refused command line need none of JAX.
    from lr_jax.experiment.run_files import RunFileError
    from lr_jax.experiment.run_lock import RunLockedError
    from lr_jax.experiment.train import RunInterrupted, TrainingDiverged, train_and_evaluate

    # One-line failures: bad settings, refused resumes, damaged or locked run folders, bad data, a full disk.
    clear_errors = (ValueError, FileNotFoundError, RunFileError, RunLockedError, TrainingDiverged)
    workdir = Path(HydraConfig.get().runtime.output_dir)
    try:
        train_and_evaluate(cfg, workdir, _given_keys(cfg))
    except RunInterrupted as e:
        log.warning("%s", e)
        sys.exit(130)
    except KeyboardInterrupt:
        log.warning("stopped at once; the run keeps its last checkpoint: continue with "
                    "`python scripts/train.py resume=true hydra.run.dir=%s`.", workdir)
        sys.exit(130)
    except clear_errors as e:
        log.error("%s", e)
        if isinstance(e, ConfigError):
            _remove_refused_run(workdir)
        _exit_unless_sweep(2, e, workdir)
    except Exception as e:  # noqa: BLE001 - a sweep must outlive one broken job
        log.exception("job failed")
        _exit_unless_sweep(1, e, workdir, reraise=True)


def _remove_refused_run(workdir: Path) -> None:
    """Removes the folder of a refused run when it holds only what Hydra wrote into it (never a run's files)."""
    if HydraConfig.get().mode == RunMode.MULTIRUN or not workdir.is_dir():
        return  # a sweep reports the refused job in its folder
    if {p.name for p in workdir.iterdir()} <= HYDRA_LEFTOVERS:
        logging.shutdown()  # closes train.log
        shutil.rmtree(workdir, ignore_errors=True)


def _exit_unless_sweep(code: int, error: Exception, workdir: Path, reraise: bool = False) -> None:
    """Exits (or re-raises) in a single run; in a sweep the job is reported failed and the sweep goes on."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        if reraise:
            raise error
        sys.exit(code)
    from lr_jax.experiment.run_files import write_json

    status = workdir / "status.json"
    if not status.exists():  # refused before it started (e.g. a bad value): say so where the sweep looks
        write_json(status, {"status": "failed", "epoch": None, "reason": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:], CONFIG_DIR, "train")
    except ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
