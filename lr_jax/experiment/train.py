"""Training loop of the paper's experiment with local bounds tracked during training.

``train_and_evaluate(cfg, workdir)`` trains the Flax MLP on MNIST "0" vs "4"
(section 5.1) with Optax and, at epoch 0, every ``bound.eval_every`` epochs
and the last, evaluates the local bound at ``bound.radius`` and the certified
single-region radius around every point of the four categories (section 5.2).
It is split as in the Flax examples: :func:`setup_run` (folder, config, data,
train state, resume), :func:`evaluate` (returns an :class:`EvalRecord`),
:func:`save_evaluation` (the run files and the checkpoint) and the loop.

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
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lr_jax import layers_from_flax, local_bounds, sample_regions, single_region_radius
from lr_jax.experiment import checkpoints
from lr_jax.experiment import config as config_lib
from lr_jax.experiment.bound_summary import summarise_category
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
from lr_jax.experiment.run_files import (
    FIX_RUN,
    RunFileError,
    RunWriteError,
    atomic_write,
    read_json,
    read_metrics,
    read_npz,
    read_yaml,
    write_json,
    write_metrics,
    write_npz,
    write_yaml,
)
from lr_jax.experiment.run_lock import RunLock

log = logging.getLogger(__name__)

METRICS, BOUNDS, STATUS, DATA = "metrics.jsonl", "bounds.npz", "status.json", "data.json"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class RunInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a step; the message says how to resume."""


def _show_progress() -> bool:
    """Progress bars only for a person at a terminal; log lines otherwise."""
    return sys.stderr.isatty()


# ---------------------------------------------------------------------------
# Training


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
    """Optax optimizer from ``optim`` config (SGD as in the paper, or Adam)."""
    if optim_cfg.name == "sgd":
        return optax.sgd(optim_cfg.lr, momentum=optim_cfg.momentum or None)
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
# Bounds


def device_bounds(layers, points: dict[str, jax.Array], bound_cfg, key: jax.Array) -> dict[str, jax.Array]:
    """The bounds that run on the device, per point; pure, so it composes with ``jax.vmap``.

    Algorithm 1's bound and the single-region radius go through the kernels
    with all categories as one batch (one compilation for the whole run,
    whatever the category sizes): ``log2_bound`` and ``single_region_radius``
    are ``[N]`` over the categories concatenated in order. ``tight`` and
    ``sampled`` (when in ``bound.methods``) add ``<category>_tight_log2_bound``
    and ``<category>_sampled_count`` (``[n]``, the sampled one with key
    ``fold_in(key, category index)``).
    """
    names, r, methods = list(points), bound_cfg.radius, bound_cfg.methods
    xs = jnp.concatenate([points[n] for n in names])
    out = {
        "log2_bound": local_bounds(layers, xs, [r], chunk_size=bound_cfg.chunk_size, masks=False).log2_bound[:, 0],
        "single_region_radius": single_region_radius(layers, xs, bound_cfg.r_max, bound_cfg.num_grid, bound_cfg.num_bisect).radius,
    }
    for i, name in enumerate(names):
        if "tight" in methods:
            tight = local_bounds(layers, points[name], [r], method="tight", chunk_size=bound_cfg.chunk_size, masks=False)
            out[f"{name}_tight_log2_bound"] = tight.log2_bound[:, 0]
        if "sampled" in methods:
            sampled = sample_regions(
                layers, points[name], [r], jax.random.fold_in(key, i), num_samples=bound_cfg.num_samples, num_chords=bound_cfg.num_chords
            )
            out[f"{name}_sampled_count"] = sampled[:, 0]
    return out


def category_results(
    layers, points: dict[str, Any], bound_cfg, arrays: dict[str, np.ndarray], subsets: dict[str, np.ndarray]
) -> dict[str, dict]:
    """Per category, the per-point arrays of :func:`device_bounds` and their summary.

    Runs the exact counter (host NumPy and a conic solver, not vmappable) when
    ``exact`` is in ``bound.methods``, on the points ``subsets[category]``
    (:func:`lr_jax.experiment.experiment.exact_subsets`), and summarises every
    other bound on that same subset beside it (:func:`_exact_counts`).

    Returns:
      Per category, ``{"log2_bound": [n], "single_region_radius": [n],
      "summary": {...}}`` with extra methods' per-point arrays and summary
      fields prefixed by their name.
    """
    names = list(points)
    splits = np.cumsum([points[n].shape[0] for n in names])[:-1]
    steps = tqdm(total=len(names), desc="bounds", leave=False, disable=not _show_progress())
    out = {}
    for name, c, s in zip(names, np.split(arrays["log2_bound"], splits), np.split(arrays["single_region_radius"], splits)):
        summary = summarise_category(c, s)
        res = {"log2_bound": c, "single_region_radius": s}
        if f"{name}_tight_log2_bound" in arrays:
            t = res["tight_log2_bound"] = arrays[f"{name}_tight_log2_bound"]
            summary.update({f"tight_{k}": v for k, v in summarise_category(t).items() if k != "n_points"})
        if f"{name}_sampled_count" in arrays:
            sampled = res["sampled_count"] = arrays[f"{name}_sampled_count"]
            summary["sampled_mean_count"] = float(np.mean(sampled))
            summary["sampled_mean_log2_count"] = float(np.mean(np.log2(sampled)))
        if "exact" in bound_cfg.methods:
            res.update(_exact_counts(layers, points[name], np.asarray(subsets[name]), bound_cfg, res, summary))
        res["summary"] = summary
        out[name] = res
        steps.update()
    steps.close()
    return out


def evaluate_bounds(
    layers, points: dict[str, jax.Array], bound_cfg, key: jax.Array, subsets: dict[str, np.ndarray]
) -> dict[str, dict]:
    """Every configured bound around every point of every category (one seed).

    ``subsets``: the points counted exactly per category (:func:`lr_jax.experiment.experiment.exact_subsets`).

    Returns:
      :func:`category_results` of :func:`device_bounds`.
    """
    arrays = {k: np.asarray(v) for k, v in device_bounds(layers, points, bound_cfg, key).items()}
    return category_results(layers, points, bound_cfg, arrays, subsets)


# log2 slack of the sandwich check: the tight bound is a float32 sum of log2 terms.
_LOG2_TOL = 1e-4


def _exact_counts(layers, xs, index: np.ndarray, bound_cfg, res: dict, summary: dict) -> dict:
    """Exact region counts around the points ``xs[index]``, and every bound on that subset.

    Adds to ``summary``: ``exact_n_points``, ``exact_complete`` (no ball hit
    ``bound.exact_max_regions``), ``exact_mean_count``, ``exact_mean_log2_count``,
    ``exact_num_single_region`` (balls meeting one region), Algorithm 1's
    bound on the same points (``exact_subset_mean_bound``: mean ``2^C``,
    ``exact_subset_mean_log2_bound``, ``exact_subset_num_single_region``), the
    tight and sampled bounds there when computed, and
    ``exact_sandwich_violations``: points where
    ``sampled <= exact <= 2^tight <= 2^C`` fails, which must be 0 (a count
    stopped at the cap is a lower bound of the true one: it is checked against
    the upper bounds only).

    Returns:
      ``{"exact_count": [k], "exact_index": [k]}``.
    """
    from lr_jax import count_regions  # the exact counter needs a conic solver: only when asked for

    r = bound_cfg.radius
    xs = np.asarray(xs)
    counts = [count_regions(layers, xs[i], r, max_regions=bound_cfg.exact_max_regions) for i in index]
    c = np.array([rc.count for rc in counts], np.int64)
    complete = np.array([rc.complete for rc in counts], bool)
    k = int(index.size)
    paper = np.asarray(res["log2_bound"], np.float64)[index]
    log2_c = np.log2(np.maximum(c, 1))
    ok = log2_c <= paper + _LOG2_TOL
    summary.update({
        "exact_n_points": k,
        "exact_complete": bool(complete.all()),
        "exact_mean_count": float(np.mean(c)) if k else None,
        "exact_mean_log2_count": float(np.mean(log2_c)) if k else None,
        "exact_num_single_region": int(np.sum(c == 1)),
        "exact_subset_mean_bound": float(np.mean(np.exp2(paper))) if k else None,
        "exact_subset_mean_log2_bound": float(np.mean(paper)) if k else None,
        "exact_subset_num_single_region": int(np.sum(paper == 0)),
    })
    if "tight_log2_bound" in res:
        tight = np.asarray(res["tight_log2_bound"], np.float64)[index]
        ok &= (tight <= paper + _LOG2_TOL) & (log2_c <= tight + _LOG2_TOL)
        summary["exact_subset_tight_mean_log2_bound"] = float(np.mean(tight)) if k else None
    if "sampled_count" in res:
        sampled = np.asarray(res["sampled_count"])[index]
        ok &= ~complete | (sampled <= c)  # a count stopped at the cap is itself only a lower bound
        summary["exact_subset_sampled_mean_log2_count"] = float(np.mean(np.log2(sampled))) if k else None
    summary["exact_sandwich_violations"] = int(np.sum(~ok))
    return {"exact_count": c, "exact_index": np.asarray(index, np.int64)}


class EvalRecord(NamedTuple):
    """One evaluation: its ``metrics.jsonl`` rows and per-point arrays (``bounds.npz`` fields)."""

    epoch: int
    rows: list
    per_point: dict


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


def _common_fields(tr_loss: float, tr_acc: float, te_loss: float, te_acc: float) -> dict:
    return {
        "train_loss": tr_loss,
        "train_accuracy": tr_acc,
        "test_loss": te_loss,
        "test_accuracy": te_acc,
        "diverged": not (math.isfinite(tr_loss) and math.isfinite(te_loss)),
    }


def _rows_and_arrays(epoch: int, radius: float, result: dict, common: dict, seed: int | None) -> tuple[list, dict]:
    """One seed's ``metrics.jsonl`` rows (with a ``seed`` field when not None) and ``bounds.npz`` fields."""
    rows, per_point = [], {}
    head = {"epoch": epoch} if seed is None else {"epoch": epoch, "seed": seed}
    for name, res in result.items():
        rows.append({**head, "category": name, "radius": float(radius), **res["summary"], **common})
        for key, arr in res.items():
            if key != "summary":
                per_point[name if key == "log2_bound" else f"{name}_{key}"] = np.asarray(arr)
    return rows, per_point


def evaluate(run: "Run", state: TrainState, epoch: int) -> EvalRecord:
    """Bounds and classifier metrics of ``state`` (every seed of a stacked run); no I/O.

    A stacked record has rows for every seed (seed-major) and per-point arrays
    ``[K, n]``.
    """
    if run.stacked:
        return _evaluate_stacked(run, state, epoch)
    key = jax.random.fold_in(run.keys.bounds, epoch)
    result = evaluate_bounds(layers_from_flax(state.params), run.points, run.cfg.bound, key, run.subsets)
    common = _common_fields(*classifier_metrics(state, run.cats.train_x, run.cats.train_y), *classifier_metrics(state, run.cats.test_x, run.cats.test_y))
    rows, per_point = _rows_and_arrays(epoch, run.cfg.bound.radius, result, common, None)
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
        common = _common_fields(*(float(v) for v in metrics[:, i]))
        seed_rows, seed_points = _rows_and_arrays(epoch, run.cfg.bound.radius, result, common, seed)
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
    def stacked(self) -> bool:
        """Several seeds trained together: a leading seed axis everywhere, a seed field in the rows."""
        return len(self.seeds) > 1


def _resolved(cfg) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _resume_hint(workdir: Path) -> str:
    return f"python scripts/train.py resume=true hydra.run.dir={workdir}"


def _is_given(key: str, given) -> bool:
    """Whether the dotted ``key`` was set on the command line (``given``: None means every key was)."""
    return given is None or any(key == g or key.startswith(g + ".") for g in given)


def check_resume(cfg, workdir: Path, given=None) -> tuple[int | None, Any]:
    """Decides how a run starts in ``workdir``; refuses what would lose or mix work.

    A resume runs the recorded settings: only the keys in ``given`` (those
    set on the command line) are compared with the record, every other one
    comes from ``config.yaml``. Output-only settings (``plot``, ``logger``)
    may change; ``epochs`` may be raised, on an interrupted or a complete run,
    which then continues to the new last epoch (the result equals a run
    trained that long from the start).

    Args:
      cfg: the composed config of this invocation.
      workdir: the run folder.
      given: dotted keys set on the command line
        (:func:`lr_jax.experiment.config.command_line_keys`); None compares
        every setting.

    Returns:
      ``(start, cfg)``: the checkpoint epoch to resume from, or None to start
      from scratch (a new run, or a run killed before its first checkpoint),
      and the config to run (the recorded one when resuming).

    Raises:
      ConfigError: a new run in a folder that holds one, ``resume=true``
        without a run, with a setting that changes the computation, or on a
        complete or diverged run (one line).
      RunFileError: a damaged ``status.json`` or ``config.yaml``.
    """
    recorded_path, status_path = workdir / CONFIG_FILE, workdir / STATUS
    has_run = recorded_path.exists() or status_path.exists()
    status = read_json(status_path, what="run status") if status_path.exists() else {"status": "started"}
    if not cfg.resume:
        if has_run:
            what = "a complete run" if status.get("status") == "complete" else f"a run (status {status.get('status')})"
            cont = "" if status.get("status") == "complete" else f"continue it with `{_resume_hint(workdir)}` or "
            raise config_lib.ConfigError(
                f"invalid config resume=false: {workdir} already holds {what}; {cont}choose another hydra.run.dir."
            )
        return None, cfg
    if not recorded_path.exists():
        raise config_lib.ConfigError(f"invalid config resume=true: {workdir} holds no run to resume; start it without resume=true.")
    recorded = read_yaml(recorded_path, what="recorded config")
    recorded.setdefault("seeds", 1)  # a run recorded before `seeds` existed trained one seed
    recorded.setdefault("model", {}).setdefault("init", "lecun")  # ... and before `model.init`, LeCun normal
    current = _resolved(cfg)
    lost = sorted(set(config_lib.flat_keys(current)) - set(config_lib.flat_keys(recorded)))
    if lost:
        raise RunFileError(f"{recorded_path}: recorded config is damaged (keys missing: {', '.join(lost[:5])}); {FIX_RUN}.")
    diff = [k for k in config_lib.computation_diff(recorded, current) if _is_given(k, given)]
    extend = "epochs" in diff and current["epochs"] > recorded["epochs"]
    if extend:
        diff.remove("epochs")
    if diff:
        changes = ", ".join(f"{k}: {_dotted(recorded, k)!r} -> {_dotted(current, k)!r}" for k in diff)
        raise config_lib.ConfigError(
            f"invalid config resume=true: settings differ from the run's recorded config ({changes}); resume "
            "without these overrides (only epochs may be raised), or start a new run in another hydra.run.dir."
        )
    if status.get("status") == "complete" and not extend:
        raise config_lib.ConfigError(
            f"invalid config resume=true: the run in {workdir} is already complete; nothing to resume "
            f"(raise epochs above {recorded['epochs']} to train it longer)."
        )
    if status.get("status") == "failed" and "diverged" in str(status.get("reason", "")):
        raise config_lib.ConfigError(
            f"invalid config resume=true: the run in {workdir} diverged ({status['reason']}); resuming would diverge "
            "again; start a new run with a lower lr or data.scale."
        )
    saved = checkpoints.saved_epochs(workdir)
    # The recorded settings (in the recorded order), with this invocation's output-only settings and length.
    run_cfg = {**recorded, **{k: current[k] for k in config_lib.OUTPUT_ONLY_KEYS}, "epochs": current["epochs"] if extend else recorded["epochs"]}
    run_cfg = OmegaConf.create(run_cfg)
    if extend:
        log.info("extending the run in %s from %d to %d epochs", workdir, recorded["epochs"], current["epochs"])
    return (saved[-1] if saved else None), run_cfg


def _dotted(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<absent>"
        d = d[part]
    return d


def _check_data(workdir: Path, record: dict, resuming: bool) -> None:
    """Writes ``data.json``, or on resume checks that the data are the recorded ones."""
    path = workdir / DATA
    if resuming and path.exists():
        recorded = read_json(path, what="data record")
        if recorded.get("fingerprint") != record["fingerprint"]:
            raise config_lib.ConfigError(
                f"invalid config resume=true: the points built from data.source={record['source']} differ from the "
                f"ones recorded in {path} (the data files changed); restore them or start a new run."
            )
        return
    write_json(path, record)


def _records_up_to(cfg, workdir: Path, epoch: int) -> tuple[list, dict]:
    """The saved rows and per-point arrays up to ``epoch``, checked against the schedule.

    Rows written after the checkpoint (a kill between the rows and the
    checkpoint) are dropped: the loop rewrites them identically. A stacked
    run needs a row of every seed and per-point arrays ``[K, E, n]``.

    Raises:
      RunFileError: a damaged file, or one lacking an evaluation up to ``epoch``.
    """
    expected = [e for e in eval_epochs(cfg) if e <= epoch]
    seeds = run_seeds(cfg)
    stacked = len(seeds) > 1
    fix = f"{FIX_RUN} (its checkpoints reach epoch {epoch}, its records do not)"
    metrics_path, bounds_path = workdir / METRICS, workdir / BOUNDS
    # A run extended past its old last epoch: that epoch was evaluated as the last one, and is not
    # evaluated by the longer schedule (a run trained that long from the start has no row of it).
    dropped = epoch if epoch not in expected else None
    rows = [r for r in read_metrics(metrics_path, fix=fix) if r["epoch"] <= epoch and r["epoch"] != dropped]
    # A single run's rows have no seed field: its key is (epoch, -1, category).
    have = sorted((r["epoch"], r.get("seed", -1), r["category"]) for r in rows)
    want = sorted((e, s if stacked else -1, c) for e in expected for s in seeds for c in CATEGORIES)
    if have != want:
        missing = sorted({e for e, _, c in set(want) - set(have)})
        extra = sorted({e for e, _, c in set(have) - set(want)})
        raise RunFileError(
            f"{metrics_path}: metrics do not match the checkpoint of epoch {epoch} (rows missing for epochs {missing}"
            f"{f', unexpected or repeated rows for epochs {extra}' if extra else ''}); {fix}."
        )
    arrays = read_npz(bounds_path, fix=fix)
    if "epochs" not in arrays:
        raise RunFileError(f"{bounds_path}: per-point bounds lack their epochs array; {fix}.")
    if stacked and arrays.get("seeds", np.zeros(0)).tolist() != list(seeds):
        raise RunFileError(f"{bounds_path}: per-point bounds do not hold the run's seeds {list(seeds)}; {fix}.")
    keep, axis = (arrays["epochs"] <= epoch) & (arrays["epochs"] != dropped), _epoch_axis(stacked)
    per_point = {k: v for k, v in arrays.items() if k not in ("epochs", "seeds")}
    if arrays["epochs"][keep].tolist() != expected or any(
        a.ndim <= axis or a.shape[axis] != keep.size or (stacked and a.shape[0] != len(seeds)) for a in per_point.values()
    ):
        raise RunFileError(
            f"{bounds_path}: per-point bounds hold epochs {arrays['epochs'].tolist()}, not {expected} up to the "
            f"checkpoint of epoch {epoch}; {fix}."
        )
    # The seeds array has no epoch axis; epochs and per-point arrays keep the evaluations up to `epoch`.
    return rows, {k: v if k == "seeds" else np.compress(keep, v, axis=0 if k == "epochs" else axis) for k, v in arrays.items()}


def _restore_newest_intact(workdir: Path, start: int, state: TrainState) -> tuple[int, TrainState]:
    """The state of the newest intact checkpoint up to ``start``, and its epoch.

    A damaged checkpoint (unreadable, or arrays that differ from their
    checksums) is set aside as ``checkpoints/<epoch>.damaged`` once an earlier
    intact one is found, with a warning naming both; the records after that
    epoch are dropped and recomputed.

    Raises:
      RunFileError: no checkpoint up to ``start`` is intact (the newest one's error).
    """
    candidates = [e for e in checkpoints.saved_epochs(workdir) if e <= start][::-1]
    damaged = []
    for epoch in candidates:
        try:
            restored = checkpoints.restore_state(workdir, epoch, state)
        except RunFileError as e:
            damaged.append((epoch, e))
            if epoch == candidates[-1]:
                first = str(damaged[0][1]).rsplit("; ", 1)[0]
                either = "; no earlier checkpoint is intact either" if len(damaged) > 1 else ""
                raise RunFileError(f"{first}{either}; {FIX_RUN}.") from None
            continue
        for bad, error in damaged:
            aside = checkpoints.set_aside(workdir, bad)
            log.warning("%s; set aside as %s, resuming from the checkpoint of epoch %d", str(error).rsplit("; ", 1)[0], aside, epoch)
        return epoch, restored
    raise RunFileError(f"{checkpoints.checkpoint_dir(workdir)}: no checkpoint up to epoch {start}; {FIX_RUN}.")


def _epoch_axis(stacked: bool) -> int:
    """The epoch axis of a per-point array in ``bounds.npz``: ``[E, n]``, or ``[K, E, n]`` when stacked."""
    return 1 if stacked else 0


def setup_run(cfg, workdir: Path, start: int | None) -> Run:
    """The run's folder, data, train state and, when resuming, its records up to the checkpoint.

    Call with the run's lock held, after :func:`check_resume` returned ``start``.
    """
    if start is None:
        for name in (METRICS, BOUNDS, DATA):  # leftovers of a run killed before its first checkpoint
            (workdir / name).unlink(missing_ok=True)
        if not (workdir / CONFIG_FILE).exists():  # from scratch in place: the recorded config matched
            write_yaml(workdir / CONFIG_FILE, _resolved(cfg))
        write_json(workdir / STATUS, {"status": "running", "epoch": None})
        if cfg.resume:
            log.info("no checkpoint yet in %s: starting the run from scratch in place", workdir)
    seeds = run_seeds(cfg)
    stacked = len(seeds) > 1
    keys, cats, state, record = (_stacked_start if stacked else _single_start)(cfg, seeds)
    points = category_points(cats)
    log.info("data: %s (%s); %s", record["source"], record["note"], {k: tuple(v.shape) for k, v in points.items()})
    _check_data(workdir, record, resuming=start is not None)
    epoch_fn = make_epoch_fn(cats.train_x.shape[-2], cfg.optim.batch_size, *((True,) if stacked else ()))
    eval_fn = make_stacked_eval_fn(state.apply_fn, cfg.bound, tuple(points)) if stacked else None
    rows, per_point = [], {}
    if start is not None:
        write_json(workdir / STATUS, {"status": "running", "epoch": start})
        start, state = _restore_newest_intact(workdir, start, state)
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
# Run files


def save_evaluation(run: Run, mngr, state: TrainState, record: EvalRecord, rows: list, per_point: dict) -> None:
    """Appends ``record`` to the run's records and writes them, then the checkpoint, then the status.

    The order matters for a kill at any point: rows ahead of the latest
    checkpoint are dropped on resume and recomputed identically.
    """
    rows.extend(record.rows)
    per_point["epochs"] = np.append(per_point.get("epochs", np.zeros(0, np.int64)), record.epoch).astype(np.int64)
    axis = _epoch_axis(run.stacked)
    if run.stacked:
        per_point["seeds"] = np.asarray(run.seeds, np.int64)
    for key, arr in record.per_point.items():
        new = np.expand_dims(arr, axis)
        per_point[key] = np.concatenate([per_point[key], new], axis=axis) if key in per_point else new
    write_metrics(run.workdir / METRICS, rows)
    write_npz(run.workdir / BOUNDS, per_point)
    checkpoints.save(mngr, record.epoch, state)
    write_json(run.workdir / STATUS, {"status": "running", "epoch": record.epoch})


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


# ---------------------------------------------------------------------------
# Interrupts


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops after the current step."""

    def __init__(self):
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def _stop_on_signals():
    """Turns the first SIGINT/SIGTERM into a flag; a second SIGINT stops at once."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set in the main thread (e.g. a launcher's worker)
        return

    def handler(signum, frame):
        if flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal = signum
        log.warning("%s received: stopping after the current step (press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------
# Entry point


def mean_over_seeds(rows: list) -> list:
    """Rows of a stacked run averaged over seeds per (epoch, category) (numeric fields only; others from the first)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["epoch"], r["category"]), []).append(r)
    out = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k != "seed"}
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                vals = [g[k] for g in group if g.get(k) is not None]
                row[k] = float(np.mean(vals)) if vals else None
        out.append(row)
    return out


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


def _fail(workdir: Path, epoch: int, reason: str) -> None:
    write_json(workdir / STATUS, {"status": "failed", "epoch": epoch, "reason": reason})


def train_and_evaluate(cfg, workdir: str | Path, given=None) -> list[dict]:
    """Trains the MLP and tracks local bounds; writes the run files into ``workdir``.

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
    config_lib.validate(cfg)
    if isinstance(cfg, DictConfig):
        config_lib.resolve_paths(cfg)
    workdir = Path(workdir).expanduser().absolute()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunWriteError.of(workdir, OSError(e.strerror) if e.strerror else e, what="run folder") from None
    with RunLock(workdir), _stop_on_signals() as stop:
        start, cfg = check_resume(cfg, workdir, given)  # a refusal writes nothing
        try:
            if cfg.resume:
                recorded = read_yaml(workdir / CONFIG_FILE, what="recorded config")
                if recorded["epochs"] != cfg.epochs:  # an extended run: the record of a run that long
                    write_yaml(workdir / CONFIG_FILE, {**recorded, "epochs": cfg.epochs})
            return _train(cfg, workdir, start, stop)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            _mark(workdir, "interrupted")
            raise
        except RunWriteError as e:  # a full disk or a read-only folder: resumable once it is fixed
            e = e.then(f"continue with `{_resume_hint(workdir)}`")
            _mark(workdir, "failed", f"{type(e).__name__}: {e}")
            raise e from None
        except BaseException as e:
            _mark(workdir, "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            raise


def _mark(workdir: Path, status: str, reason: str | None = None) -> None:
    """Marks a run that stopped on an error (keeping a more specific ``failed`` reason).

    When the status cannot be written (the disk is full), it stays at its last
    consistent value, which a resume reads as a killed run.
    """
    try:
        current = read_json(workdir / STATUS)
    except RunFileError:
        current = {}
    if current.get("status") == "failed":
        return
    try:
        write_json(workdir / STATUS, {"status": status, "epoch": current.get("epoch"), **({"reason": reason} if reason else {})})
    except RunWriteError:
        pass  # the error being raised says which write failed


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
        _fail(run.workdir, epoch, f"training diverged at epoch {epoch} (non-finite loss{where})")
        raise TrainingDiverged(
            f"training diverged at epoch {epoch} (loss{where} {float(losses[~np.isfinite(losses)][0])}); lower lr or data.scale "
            f"(now lr={run.cfg.lr}, data.scale={run.cfg.data.scale}) and start a new run."
        )
    return state


def _evaluate_and_save(run: Run, mngr, tb, state: TrainState, epoch: int, rows: list, per_point: dict) -> float:
    """Evaluates, writes the records and the checkpoint; returns the seconds spent evaluating."""
    t0 = time.perf_counter()
    record = evaluate(run, state, epoch)
    seconds = time.perf_counter() - t0
    save_evaluation(run, mngr, state, record, rows, per_point)
    _log_evaluation(record, seconds)
    if tb is not None:
        tb.log(record)
    if any(r["diverged"] for r in record.rows):
        _fail(run.workdir, epoch, f"training diverged at epoch {epoch} (non-finite loss at evaluation)")
        raise TrainingDiverged(f"training diverged at epoch {epoch} (non-finite loss); lower lr or data.scale and start a new run.")
    return seconds


def _interrupt(run: Run, mngr, state: TrainState, epoch: int) -> None:
    """Saves the state of ``epoch`` (if not saved yet), marks the run ``interrupted`` and raises."""
    if epoch not in checkpoints.saved_epochs(run.workdir):
        checkpoints.save(mngr, epoch, state)
    write_json(run.workdir / STATUS, {"status": "interrupted", "epoch": epoch})
    raise RunInterrupted(f"interrupted after epoch {epoch} of {run.cfg.epochs}; continue with `{_resume_hint(run.workdir)}`.")


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
        _fail(workdir, cfg.epochs, f"final check: {e}")
        raise
    write_json(workdir / STATUS, {"status": "complete", "epoch": cfg.epochs})


@contextmanager
def _writers(run: Run):
    """The checkpoint manager and the optional TensorBoard writer, closed however the loop ends."""
    mngr, tb = checkpoints.manager(run.workdir), _tensorboard(run.cfg, run.workdir)
    try:
        yield mngr, tb
    finally:
        mngr.close()
        if tb is not None:
            tb.close()


def _train(cfg, workdir: Path, start: int | None, stop: _StopFlag) -> list[dict]:
    t0 = time.perf_counter()
    run = setup_run(cfg, workdir, start)
    rows, per_point, state = list(run.rows), dict(run.per_point), run.state
    schedule, bound_seconds = set(eval_epochs(cfg)), 0.0
    first = run.start_epoch + 1
    with _writers(run) as (mngr, tb):
        for epoch in tqdm(range(first, cfg.epochs + 1), desc="epochs", initial=first, total=cfg.epochs + 1, disable=not _show_progress()):
            if epoch > 0:
                state = train_epoch(run, state, epoch)
            if epoch in schedule:
                bound_seconds += _evaluate_and_save(run, mngr, tb, state, epoch, rows, per_point)
            if stop and epoch < cfg.epochs:
                _interrupt(run, mngr, state, epoch)
    finish_run(run, rows, time.perf_counter() - t0, bound_seconds)
    log.info("done in %.1fs (%.1fs in bound evaluation); run files in %s", time.perf_counter() - t0, bound_seconds, workdir)
    return rows


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
