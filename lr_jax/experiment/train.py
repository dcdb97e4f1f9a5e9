"""Training loop of the paper's experiment with local bounds tracked during training.

``train_and_evaluate(cfg, workdir)`` trains the Flax MLP on MNIST "0" vs "4"
(section 5.1) with Optax and, at epoch 0, every ``bound.eval_every`` epochs
and the last, evaluates the local bound at ``bound.radius`` and the certified
single-region radius around every point of the four categories (section 5.2).
This module holds what is particular to the paper's study (the data of
:mod:`lr_jax.experiment.experiment`, the SGD/Adam epochs, the evaluation of
the four categories at one radius): :func:`setup_run` (data, train state,
resume), :func:`train_epoch`, :func:`evaluate` (returns an
:class:`EvalRecord`) and :data:`PAPER`, the :class:`~lr_jax.experiment.training_loop.Study`
that :func:`lr_jax.experiment.training_loop.drive` runs inside the shared
lifecycle (:mod:`lr_jax.experiment.run_lifecycle`: resume, lock, signals,
status) with the shared records (:mod:`lr_jax.experiment.run_records`) and
bounds (:mod:`lr_jax.experiment.category_bounds`). ``study=grokking``
dispatches to :mod:`lr_jax.experiment.grokking` instead.

A run directory holds (the contract the sweep and the plots read):

* ``config.yaml``: the full resolved config, written when the run starts
  (paths absolute); a resume runs it, and the settings given on its command
  line must match it, except a raised ``epochs``, which extends the run and
  is recorded (:func:`check_resume`);
* ``data.json``: the data source, its note, the chosen digit indices and a
  fingerprint of every category's points;
* ``metrics.jsonl``: one row per (evaluated epoch, category) with ``epoch``,
  ``category``, ``radius``, ``mean_bound``, ``mean_log2_bound``,
  ``median_log2_bound``, ``num_single_region``, ``mean_single_region_radius``,
  ``n_points``, the epoch's ``train_loss``, ``train_accuracy``, ``test_loss``,
  ``test_accuracy`` and ``diverged``; extra bound methods add fields prefixed
  with their name (``tight_``, ``sampled_``, ``exact_``). Strict JSON: a
  non-finite number is ``null``;
* ``bounds.npz``: per-point ``log2_bound`` and single-region radius of every
  category at every evaluated epoch (``<category>`` and
  ``<category>_single_region_radius``, ``[E, n]``; ``epochs`` ``[E]``);
* ``checkpoints/<epoch>``: Orbax checkpoints of the train state (step, params,
  optimizer state) at every evaluated epoch, and where a run was interrupted,
  each with ``checkpoints/<epoch>.sha256.json``, the checksums of its arrays
  (:mod:`lr_jax.experiment.checkpoints`; a damaged one is set aside as
  ``<epoch>.damaged`` by a resume, which continues from the newest intact one);
* ``status.json``: ``running``, ``interrupted``, ``failed`` (with a reason) or
  ``complete``, and the last saved epoch; ``complete`` is written only after a
  final check of every expected row and file;
* ``run.lock`` while a process writes the run; ``trajectories.png``,
  ``timing.json``, and with ``logger=tensorboard`` event files in ``tensorboard/``.

With ``seeds=K`` (K > 1) the run trains seeds ``seed .. seed+K-1`` together as
one program: the train state is stacked on a leading seed axis and
``jax.vmap`` runs each epoch and every device bound over it (the exact
counter, host NumPy, loops over the seeds). Each seed has exactly the keys,
points, initialisation and batch order of a separate run with that seed. The
files hold every seed: ``metrics.jsonl`` rows gain a ``seed`` field,
``bounds.npz`` per-point arrays are ``[K, E, n]`` with ``seeds`` ``[K]``,
``data.json`` lists each seed's indices and fingerprint under ``per_seed``,
checkpoints hold the stacked state. ``seeds=1`` writes the files of a single
run (no seed field, no seed axis).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from lr_jax import layers_from_flax
from lr_jax.experiment import checkpoints
from lr_jax.experiment.category_bounds import (
    category_results,
    common_fields,
    device_bounds,
    evaluate_bounds,
    rows_and_arrays,
)
from lr_jax.experiment.datasets import Categories
from lr_jax.experiment.experiment import (
    CATEGORIES,
    CONFIG_FILE,
    RunKeys,
    categories_from_splits,
    category_points,
    check_per_class_used,
    data_record,
    exact_subsets,
    load_categories,
    run_keys,
    run_seeds,
    stack_categories,
    stack_trees,
    stacked_data_record,
    stacked_run_keys,
    unstack_tree,
)
from lr_jax.experiment.models import MLP, init_mlp
from lr_jax.experiment.run_files import FIX_RUN, RunFileError, atomic_write, read_json, read_yaml, write_json
from lr_jax.experiment.run_lifecycle import (
    RunInterrupted,
    TrainingDiverged,
    check_resume,
    complete,
    fail,
    restore_newest_intact,
    run_guarded,
    start_files,
)
from lr_jax.experiment.run_records import BOUNDS, DATA, METRICS, EvalRecord, check_data, mean_over_seeds, records_up_to
from lr_jax.experiment.training_loop import Study, drive

log = logging.getLogger(__name__)

__all__ = [
    "PAPER",
    "EvalRecord",
    "Run",
    "RunInterrupted",
    "TrainingDiverged",
    "batch_order",
    "category_results",
    "check_resume",
    "classifier_metrics",
    "create_train_state",
    "device_bounds",
    "eval_epochs",
    "evaluate",
    "evaluate_bounds",
    "make_epoch_fn",
    "make_optimizer",
    "make_stacked_eval_fn",
    "mean_over_seeds",
    "setup_run",
    "train_and_evaluate",
    "train_epoch",
]


# ---------------------------------------------------------------------------
# Training


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
    """Optax optimizer from ``optim`` config (SGD as in the paper, Adam, or AdamW with ``optim.weight_decay``)."""
    if optim_cfg.name == "sgd":
        return optax.sgd(optim_cfg.lr, momentum=optim_cfg.momentum or None)
    if optim_cfg.name == "adamw":
        return optax.adamw(optim_cfg.lr, weight_decay=optim_cfg.weight_decay)
    return optax.adam(optim_cfg.lr)


def create_train_state(model: MLP, tx: optax.GradientTransformation, key: jax.Array, input_dim: int) -> TrainState:
    """The train state at step 0: initial params and optimizer state."""
    return TrainState.create(apply_fn=model.apply, params=init_mlp(model, key, input_dim), tx=tx)


def _loss(state: TrainState, params, x, y):
    logits = state.apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def batch_order(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Indices of an epoch's minibatches, ``[n // batch_size, batch_size]``.

    A permutation of the ``n`` training points drawn with the epoch's key,
    cut into full batches (the remainder is left out of that epoch only).
    """
    batch_size = min(batch_size, n)
    num_batches = n // batch_size
    return jax.random.permutation(key, n)[: num_batches * batch_size].reshape(num_batches, batch_size)


def make_epoch_fn(n: int, batch_size: int, stacked: bool = False):
    """A jitted function running one epoch of minibatch training.

    Each epoch shuffles the ``n`` training points with its own key and takes
    ``n // batch_size`` full batches (:func:`batch_order`; the remainder is
    reshuffled into the next epoch), as one ``lax.scan``. With ``stacked`` the
    function is vmapped over a leading seed axis of the state, the data and
    the key: K seeds train as one program, each on its own points and batches.
    """

    def step(state: TrainState, batch):
        x, y = batch
        loss, grads = jax.value_and_grad(lambda p: _loss(state, p, x, y))(state.params)
        return state.apply_gradients(grads=grads), loss

    def epoch(state: TrainState, x, y, key):
        order = batch_order(key, n, batch_size)
        state, losses = jax.lax.scan(step, state, (x[order], y[order]))
        return state, losses.mean()

    return jax.jit(jax.vmap(epoch) if stacked else epoch)


def classifier_metrics(state: TrainState, x, y) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``(x [n, d], y [n])``, as floats."""
    loss, acc = _classifier_arrays(state.apply_fn, state.params, x, y)
    return float(loss), float(acc)


def eval_epochs(cfg) -> list[int]:
    """The evaluated epochs: 0, every ``bound.eval_every`` and the last."""
    every = cfg.bound.eval_every
    return [e for e in range(cfg.epochs + 1) if e % every == 0 or e == cfg.epochs]


# ---------------------------------------------------------------------------
# Evaluation


def _classifier_arrays(apply_fn, params, x, y) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy on ``(x [n, d], y [n])`` as arrays (vmappable)."""
    logits = apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), jnp.mean(jnp.argmax(logits, -1) == y)


def make_stacked_eval_fn(apply_fn, bound_cfg, names=CATEGORIES):
    """The device part of an evaluation of K stacked seeds, as one jitted program (vmap over seeds).

    Returns:
      ``f(params, points, key, cats) -> (arrays, metrics)``: :func:`device_bounds`
      of every seed (leaves ``[K, ...]``) and ``[K]`` train loss, train
      accuracy, test loss, test accuracy.
    """

    def one_seed(params, points, key, train_x, train_y, test_x, test_y):
        # jit hands dicts over with sorted keys: concatenate the categories in the run's order, as a single run does.
        points = {n: points[n] for n in names}
        arrays = device_bounds(layers_from_flax(params), points, bound_cfg, key)
        return arrays, (*_classifier_arrays(apply_fn, params, train_x, train_y), *_classifier_arrays(apply_fn, params, test_x, test_y))

    batched = jax.jit(jax.vmap(one_seed))
    return lambda params, points, key, cats: batched(params, points, key, cats.train_x, cats.train_y, cats.test_x, cats.test_y)


def evaluate(run: "Run", state: TrainState, epoch: int) -> EvalRecord:
    """Bounds and classifier metrics of ``state`` (every seed of a stacked run); no I/O.

    A stacked record has rows for every seed (seed-major) and per-point arrays
    ``[K, n]``.
    """
    if run.stacked:
        return _evaluate_stacked(run, state, epoch)
    key = jax.random.fold_in(run.keys.bounds, epoch)
    result = evaluate_bounds(layers_from_flax(state.params), run.points, run.cfg.bound, key, run.subsets)
    common = common_fields(*classifier_metrics(state, run.cats.train_x, run.cats.train_y), *classifier_metrics(state, run.cats.test_x, run.cats.test_y))
    rows, per_point = rows_and_arrays(epoch, run.cfg.bound.radius, result, common, None)
    return EvalRecord(epoch, rows, per_point)


def _evaluate_stacked(run: "Run", state: TrainState, epoch: int) -> EvalRecord:
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(run.keys.bounds, epoch)
    arrays, metrics = run.eval_fn(state.params, run.points, keys, run.cats)
    arrays, metrics = jax.tree.map(np.asarray, arrays), np.asarray(metrics, np.float64)
    k = len(run.seeds)
    rows, per_seed = [], []
    for i, (seed, params, seed_arrays, points) in enumerate(
        zip(run.seeds, unstack_tree(state.params, k), unstack_tree(arrays, k), unstack_tree(run.points, k))
    ):
        points = {name: points[name] for name in run.points}  # pytree maps sort dict keys: back to CATEGORIES order
        # The exact counter reads each seed's own layers on the host.
        subsets = {name: idx[i] for name, idx in run.subsets.items()}
        result = category_results(layers_from_flax(params), points, run.cfg.bound, seed_arrays, subsets)
        common = common_fields(*(float(v) for v in metrics[:, i]))
        seed_rows, seed_points = rows_and_arrays(epoch, run.cfg.bound.radius, result, common, seed)
        rows.extend(seed_rows)
        per_seed.append(seed_points)
    per_point = {key: np.stack([p[key] for p in per_seed]) for key in per_seed[0]}
    return EvalRecord(epoch, rows, per_point)


# ---------------------------------------------------------------------------
# Setup and resume


class Run(NamedTuple):
    """Everything the loop needs, built by :func:`setup_run`."""

    cfg: Any
    workdir: Path
    keys: RunKeys  # stacked runs: every field [K, 2]
    cats: Categories  # stacked runs: arrays [K, ...]
    points: dict
    epoch_fn: Any
    state: TrainState  # stacked runs: every leaf [K, ...]
    start_epoch: int  # last epoch already done (-1: nothing, epoch 0 still to evaluate)
    rows: list  # metrics rows up to start_epoch
    per_point: dict  # bounds.npz arrays up to start_epoch
    seeds: tuple = ()  # the run's seeds (one for a single run)
    eval_fn: Any = None  # stacked runs: make_stacked_eval_fn
    subsets: Any = None  # {category: indices [k]} counted exactly ([K, k] stacked): exact_subsets

    @property
    def start(self) -> int:
        """The last time already done, for the shared driver."""
        return self.start_epoch

    @property
    def stacked(self) -> bool:
        """Several seeds trained together: a leading seed axis everywhere, a seed field in the rows."""
        return len(self.seeds) > 1


def setup_run(cfg, workdir: Path, start: int | None) -> Run:
    """The run's folder, data, train state and, when resuming, its records up to the checkpoint.

    Call with the run's lock held, after :func:`check_resume` returned ``start``.
    """
    if start is None:
        start_files(cfg, workdir, start, (METRICS, BOUNDS, DATA))
    seeds = run_seeds(cfg)
    stacked = len(seeds) > 1
    keys, cats, state, record = (_stacked_start if stacked else _single_start)(cfg, seeds)
    points = category_points(cats)
    log.info("data: %s (%s); %s", record["source"], record["note"], {k: tuple(v.shape) for k, v in points.items()})
    check_data(workdir, record, resuming=start is not None)
    epoch_fn = make_epoch_fn(cats.train_x.shape[-2], cfg.optim.batch_size, *((True,) if stacked else ()))
    eval_fn = make_stacked_eval_fn(state.apply_fn, cfg.bound, tuple(points)) if stacked else None
    rows, per_point = [], {}
    if start is not None:
        start_files(cfg, workdir, start, ())
        start, state = restore_newest_intact(workdir, start, state)
        rows, per_point = _records_up_to(cfg, workdir, start)
        log.info("resuming from the checkpoint of epoch %d (train state step %d)", start, int(np.max(state.step)))
    sizes = {name: int(x.shape[-2]) for name, x in points.items()}
    if stacked:
        per_seed = [exact_subsets(k, sizes, cfg.bound.exact_points) for k in keys.bounds]
        subsets = {name: np.stack([p[name] for p in per_seed]) for name in sizes}
    else:
        subsets = exact_subsets(keys.bounds, sizes, cfg.bound.exact_points)
    start_epoch = -1 if start is None else start
    return Run(cfg, workdir, keys, cats, points, epoch_fn, state, start_epoch, rows, per_point, seeds, eval_fn, subsets)


def _model_and_optimizer(cfg) -> tuple[MLP, optax.GradientTransformation]:
    model = MLP(depth=cfg.depth, width=cfg.width, num_outputs=cfg.model.num_outputs, init_std=cfg.model.init_std, init_name=cfg.model.init)
    return model, make_optimizer(cfg.optim)


def _single_start(cfg, seeds: tuple) -> tuple[RunKeys, Categories, TrainState, dict]:
    """Keys, points, initial state and ``data.json`` record of a run of one seed."""
    keys = run_keys(seeds[0])
    cats, splits = load_categories(cfg.data, keys.data)
    check_per_class_used(cfg.data, cats, splits.source)
    model, tx = _model_and_optimizer(cfg)
    state = create_train_state(model, tx, keys.init, cats.train_x.shape[1])
    return keys, cats, state, data_record(cats, splits, cfg.data.digits)


def _stacked_start(cfg, seeds: tuple) -> tuple[RunKeys, Categories, TrainState, dict]:
    """The same for K seeds trained together, every part stacked on a leading seed axis.

    Each seed gets exactly what a separate run with ``seed=s`` gets: its keys
    (:func:`run_keys`), its own points (the data key of that seed) and its
    initial state, built one seed at a time and then stacked, so the stack
    starts bit for bit where the K separate runs start.
    """
    cats0, splits = load_categories(cfg.data, run_keys(seeds[0]).data)  # the data source is read once
    per_seed = [cats0] + [categories_from_splits(cfg.data, splits, run_keys(s).data) for s in seeds[1:]]
    for c in per_seed:
        check_per_class_used(cfg.data, c, splits.source)
    model, tx = _model_and_optimizer(cfg)
    # One model and one optimizer object: the K states share their static fields and stack.
    state = stack_trees([create_train_state(model, tx, run_keys(s).init, cats0.train_x.shape[1]) for s in seeds])
    record = stacked_data_record(per_seed, splits, cfg.data.digits, seeds)
    return stacked_run_keys(seeds), stack_categories(per_seed), state, record


# ---------------------------------------------------------------------------
# Records


def _records_up_to(cfg, workdir: Path, epoch: int) -> tuple[list, dict]:
    """The saved rows and per-point arrays up to ``epoch`` (:func:`lr_jax.experiment.run_records.records_up_to`)."""
    return records_up_to(workdir, eval_epochs(cfg), epoch, run_seeds(cfg), CATEGORIES)


def final_check(run: Run) -> None:
    """Checks every expected row and file of a finished run before it is marked complete.

    Raises:
      RunFileError: a missing or inconsistent file (one line).
    """
    cfg, workdir = run.cfg, run.workdir
    rows, _ = _records_up_to(cfg, workdir, cfg.epochs)
    sizes = {c: int(run.points[c].shape[-2]) for c in CATEGORIES}  # [n, d], or [K, n, d] stacked
    for r in rows:
        if r["n_points"] != sizes[r["category"]]:
            raise RunFileError(
                f"{workdir / METRICS}: row of epoch {r['epoch']}, {r['category']} has {r['n_points']} points, "
                f"not {sizes[r['category']]}; {FIX_RUN}."
            )
    read_yaml(workdir / CONFIG_FILE, what="recorded config")
    read_json(workdir / DATA, what="data record")
    if cfg.epochs not in checkpoints.saved_epochs(workdir):
        raise RunFileError(f"{checkpoints.checkpoint_dir(workdir) / str(cfg.epochs)}: final checkpoint is missing; {FIX_RUN}.")
    if cfg.plot and not (workdir / "trajectories.png").is_file():
        raise RunFileError(f"{workdir / 'trajectories.png'}: plot is missing; {FIX_RUN}.")


def _log_evaluation(record: EvalRecord, seconds: float) -> None:
    rows = mean_over_seeds(record.rows) if "seed" in record.rows[0] else record.rows  # a stack: the seeds' mean
    r = {row["category"]: row for row in rows}
    first = rows[0]
    log.info(
        "epoch %3d  train loss %.4f acc %.3f  test acc %.3f  mean C %s  single-region %s  (bounds %.1fs)",
        record.epoch,
        first["train_loss"],
        first["train_accuracy"],
        first["test_accuracy"],
        " ".join(f"{n}={r[n]['mean_log2_bound']:.1f}" for n in r),
        " ".join(f"{n}={r[n]['num_single_region']:g}" for n in r),
        seconds,
    )


def train_epoch(run: Run, state: TrainState, epoch: int) -> TrainState:
    """One epoch of training; a non-finite loss marks the run ``failed`` and raises :class:`TrainingDiverged`.

    A stacked run trains every seed, each with its own epoch key
    ``fold_in(run_keys(s).train, epoch)``; one diverging seed fails the run.
    """
    if run.stacked:
        key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(run.keys.train, epoch)
    else:
        key = jax.random.fold_in(run.keys.train, epoch)
    state, loss = run.epoch_fn(state, run.cats.train_x, run.cats.train_y, key)
    losses = np.atleast_1d(np.asarray(loss, np.float64))
    if not np.all(np.isfinite(losses)):
        bad = [s for s, v in zip(run.seeds, losses) if not math.isfinite(v)]
        where = f" of seed {', '.join(map(str, bad))}" if run.stacked else ""
        fail(run.workdir, epoch, f"training diverged at epoch {epoch} (non-finite loss{where})")
        raise TrainingDiverged(
            f"training diverged at epoch {epoch} (loss{where} {float(losses[~np.isfinite(losses)][0])}); lower lr or data.scale "
            f"(now lr={run.cfg.lr}, data.scale={run.cfg.data.scale}) and start a new run."
        )
    return state


def finish_run(run: Run, rows: list, seconds: float, bound_seconds: float) -> None:
    """Plot, timing, the final check, then ``complete`` (or ``failed`` when the check fails)."""
    cfg, workdir = run.cfg, run.workdir
    if cfg.plot:
        from lr_jax.experiment.plots import plot_run  # matplotlib only when a plot is asked for

        if run.stacked:
            title = f"lr={cfg.lr} depth={cfg.depth} mean of seeds {run.seeds[0]}..{run.seeds[-1]}"
            plotted = mean_over_seeds(rows)
        else:
            title, plotted = f"lr={cfg.lr} depth={cfg.depth} seed={cfg.seed}", rows
        atomic_write(workdir / "trajectories.png", lambda p: plot_run(plotted, p, title=title))
    write_json(workdir / "timing.json", {"total_seconds": seconds, "bound_seconds": bound_seconds})
    try:
        final_check(run)
    except RunFileError as e:
        fail(workdir, cfg.epochs, f"final check: {e}")
        raise
    complete(workdir, cfg.epochs)


# ---------------------------------------------------------------------------
# Entry point


def _check_record(run: Run, record: EvalRecord) -> None:
    if any(r["diverged"] for r in record.rows):
        epoch = record.epoch
        fail(run.workdir, epoch, f"training diverged at epoch {epoch} (non-finite loss at evaluation)")
        raise TrainingDiverged(f"training diverged at epoch {epoch} (non-finite loss); lower lr or data.scale and start a new run.")


PAPER = Study(
    time_key="epoch",
    ticks=lambda cfg: list(range(cfg.epochs + 1)),
    schedule=lambda cfg: eval_epochs(cfg),
    end=lambda cfg: cfg.epochs,
    setup=lambda cfg, workdir, start: setup_run(cfg, workdir, start),
    advance=lambda run, state, t0, t1: train_epoch(run, state, t1),
    evaluate=lambda run, state, t: evaluate(run, state, t),
    log_evaluation=lambda run, record, seconds: _log_evaluation(record, seconds),
    finish=lambda run, rows, seconds, bound_seconds: finish_run(run, rows, seconds, bound_seconds),
    tensorboard=lambda cfg, workdir: _tensorboard(cfg, workdir),
    check_record=_check_record,
)
"""The paper's study (section 5) for :func:`lr_jax.experiment.training_loop.drive`: one tick per epoch."""


def _study_of(cfg, workdir: str | Path) -> str:
    """The study a run belongs to: a resume's is the recorded one (its command line need not name it)."""
    recorded = Path(workdir).expanduser() / CONFIG_FILE
    if cfg.resume and recorded.is_file():
        return read_yaml(recorded, what="recorded config").get("study", "paper")
    return getattr(cfg, "study", "paper")


def train_and_evaluate(cfg, workdir: str | Path, given=None) -> list[dict]:
    """Trains the study's MLP and tracks local bounds; writes the run files into ``workdir``.

    ``cfg.study`` chooses the study: ``paper`` (this module) or ``grokking``
    (:mod:`lr_jax.experiment.grokking`); both run in the shared lifecycle
    (:func:`lr_jax.experiment.run_lifecycle.run_guarded`).

    Args:
      cfg: a composed ``TrainConfig`` (OmegaConf); paths are resolved in place.
      workdir: the run directory (Hydra's output dir under ``scripts/train.py``).
      given: with ``resume=true``, the dotted keys set on the command line:
        only these are compared with the recorded config, which supplies
        every other setting (:func:`check_resume`); None compares every key.

    Returns:
      The ``metrics.jsonl`` rows.

    Raises:
      ConfigError: invalid values (before any data is loaded) or a refused resume.
      RunLockedError: another process is writing into ``workdir``.
      RunFileError: a damaged run file, named in one line.
      RunWriteError: a run file could not be written (full disk, read-only
        folder): one line naming it, the run marked ``failed`` when possible,
        no temporary file left; ``resume=true`` continues it once fixed.
      TrainingDiverged: a non-finite loss (the run is marked ``failed``).
      RunInterrupted: SIGINT/SIGTERM (the run is marked ``interrupted``).
    """
    if _study_of(cfg, workdir) == "grokking":
        from lr_jax.experiment import grokking

        return run_guarded(cfg, workdir, given, lambda c, w, s, stop: drive(grokking.GROKKING, c, w, s, stop), length_key=None)
    return run_guarded(cfg, workdir, given, lambda c, w, s, stop: drive(PAPER, c, w, s, stop))


def _tensorboard(cfg, workdir: Path):
    if cfg.logger != "tensorboard":
        return None
    from lr_jax.experiment.tensorboard_log import TensorBoardLog

    seeds = run_seeds(cfg)
    if len(seeds) == 1:
        return TensorBoardLog(workdir / "tensorboard")
    return _SeedLogs({s: TensorBoardLog(workdir / "tensorboard" / f"seed{s}") for s in seeds})


class _SeedLogs:
    """TensorBoard logs of a stacked run: one event folder per seed (``tensorboard/seed<s>``)."""

    def __init__(self, logs: dict):
        self._logs = logs

    def log(self, record: EvalRecord) -> None:
        for i, (seed, tb) in enumerate(self._logs.items()):
            rows = [r for r in record.rows if r["seed"] == seed]
            tb.log(EvalRecord(record.epoch, rows, {k: v[i] for k, v in record.per_point.items()}))

    def close(self) -> None:
        for tb in self._logs.values():
            tb.close()
