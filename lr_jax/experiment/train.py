"""Training loop of the paper's experiment with local bounds tracked during training.

``train_and_evaluate(cfg, workdir)`` trains the Flax MLP on MNIST "0" vs "4"
(section 5.1) with Optax and, at epoch 0, every ``bound.eval_every`` epochs
and the last, evaluates the local bound at ``bound.radius`` and the certified
single-region radius around every point of the four categories (section 5.2).
It is split as in the Flax examples: :func:`setup_run` (folder, config, data,
train state, resume), :func:`evaluate` (returns an :class:`EvalRecord`),
:func:`save_evaluation` (the run files and the checkpoint) and the loop.

A run directory holds (the contract the sweep and the plots read):

* ``config.yaml``: the full resolved config, written once when the run starts
  (paths absolute); a resume must match it (:func:`check_resume`);
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
  optimizer state) at every evaluated epoch, and where a run was interrupted;
* ``status.json``: ``running``, ``interrupted``, ``failed`` (with a reason) or
  ``complete``, and the last saved epoch; ``complete`` is written only after a
  final check of every expected row and file;
* ``run.lock`` while a process writes the run; ``trajectories.png``,
  ``timing.json``, and with ``logger=tensorboard`` event files in ``tensorboard/``.
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
    category_points,
    check_per_class_used,
    data_record,
    load_categories,
    run_keys,
)
from lr_jax.experiment.models import MLP, init_mlp
from lr_jax.experiment.run_files import (
    FIX_RUN,
    RunFileError,
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


def make_epoch_fn(n: int, batch_size: int):
    """A jitted function running one epoch of minibatch training.

    Each epoch shuffles the ``n`` training points with its own key and takes
    ``n // batch_size`` full batches (the remainder is left out of that epoch
    only; it is reshuffled into the next), as one ``lax.scan``.
    """
    batch_size = min(batch_size, n)
    num_batches = n // batch_size

    def step(state: TrainState, batch):
        x, y = batch
        loss, grads = jax.value_and_grad(lambda p: _loss(state, p, x, y))(state.params)
        return state.apply_gradients(grads=grads), loss

    @jax.jit
    def epoch(state: TrainState, x, y, key):
        perm = jax.random.permutation(key, n)[: num_batches * batch_size]
        xb = x[perm].reshape(num_batches, batch_size, -1)
        yb = y[perm].reshape(num_batches, batch_size)
        state, losses = jax.lax.scan(step, state, (xb, yb))
        return state, losses.mean()

    return epoch


def classifier_metrics(state: TrainState, x, y) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``(x [n, d], y [n])``."""
    logits = state.apply_fn({"params": state.params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return float(loss), float(acc)


def eval_epochs(cfg) -> list[int]:
    """The evaluated epochs: 0, every ``bound.eval_every`` and the last."""
    every = cfg.bound.eval_every
    return [e for e in range(cfg.epochs + 1) if e % every == 0 or e == cfg.epochs]


# ---------------------------------------------------------------------------
# Bounds


def evaluate_bounds(layers, points: dict[str, jax.Array], bound_cfg, key: jax.Array) -> dict[str, dict]:
    """Every configured bound around every point of every category.

    All categories go through the kernels as one batch (one compilation for
    the whole run, whatever the category sizes).

    Returns, per category, ``{"log2_bound": [n], "single_region_radius": [n],
    "summary": {...}}`` with extra methods' per-point arrays and summary fields
    prefixed by their name.
    """
    names = list(points)
    xs = jnp.concatenate([points[n] for n in names])
    splits = np.cumsum([points[n].shape[0] for n in names])[:-1]
    steps = tqdm(total=2 + len(names), desc="bounds", leave=False, disable=not _show_progress())
    log2 = np.asarray(
        local_bounds(layers, xs, [bound_cfg.radius], chunk_size=bound_cfg.chunk_size, masks=False).log2_bound[:, 0]
    )
    steps.update()
    srr = np.asarray(single_region_radius(layers, xs, bound_cfg.r_max, bound_cfg.num_grid, bound_cfg.num_bisect).radius)
    steps.update()
    out = {}
    for i, (name, c, s) in enumerate(zip(names, np.split(log2, splits), np.split(srr, splits))):
        summary = summarise_category(c, s)
        res = {"log2_bound": c, "single_region_radius": s}
        res.update(_extra_methods(layers, points[name], bound_cfg, jax.random.fold_in(key, i), summary))
        res["summary"] = summary
        out[name] = res
        steps.update()
    steps.close()
    return out


def _extra_methods(layers, xs, bound_cfg, key, summary: dict) -> dict:
    """The optional bounds of ``bound.methods`` (tight, sampled, exact)."""
    res = {}
    r, methods = bound_cfg.radius, bound_cfg.methods
    if "tight" in methods:
        t = np.asarray(
            local_bounds(layers, xs, [r], method="tight", chunk_size=bound_cfg.chunk_size, masks=False).log2_bound[:, 0]
        )
        res["tight_log2_bound"] = t
        summary.update({f"tight_{k}": v for k, v in summarise_category(t).items() if k != "n_points"})
    if "sampled" in methods:
        s = np.asarray(sample_regions(layers, xs, [r], key, num_samples=bound_cfg.num_samples, num_chords=bound_cfg.num_chords)[:, 0])
        res["sampled_count"] = s
        summary["sampled_mean_count"] = float(np.mean(s))
        summary["sampled_mean_log2_count"] = float(np.mean(np.log2(s)))
    if "exact" in methods:
        from lr_jax import count_regions  # the exact counter needs a conic solver: only when asked for

        k = min(bound_cfg.exact_points, xs.shape[0])
        counts = [count_regions(layers, np.asarray(x), r, max_regions=bound_cfg.exact_max_regions) for x in xs[:k]]
        c = np.array([rc.count for rc in counts])
        res["exact_count"] = c
        summary["exact_n_points"] = int(k)
        summary["exact_complete"] = bool(all(rc.complete for rc in counts))
        summary["exact_mean_count"] = float(np.mean(c)) if k else None
        summary["exact_mean_log2_count"] = float(np.mean(np.log2(c))) if k else None
    return res


class EvalRecord(NamedTuple):
    """One evaluation: its ``metrics.jsonl`` rows and per-point arrays (``bounds.npz`` fields)."""

    epoch: int
    rows: list
    per_point: dict


def evaluate(run: "Run", state: TrainState, epoch: int) -> EvalRecord:
    """Bounds and classifier metrics of ``state``; no I/O."""
    result = evaluate_bounds(layers_from_flax(state.params), run.points, run.cfg.bound, jax.random.fold_in(run.keys.bounds, epoch))
    tr_loss, tr_acc = classifier_metrics(state, run.cats.train_x, run.cats.train_y)
    te_loss, te_acc = classifier_metrics(state, run.cats.test_x, run.cats.test_y)
    common = {
        "train_loss": tr_loss,
        "train_accuracy": tr_acc,
        "test_loss": te_loss,
        "test_accuracy": te_acc,
        "diverged": not (math.isfinite(tr_loss) and math.isfinite(te_loss)),
    }
    rows, per_point = [], {}
    for name, res in result.items():
        rows.append({"epoch": epoch, "category": name, "radius": float(run.cfg.bound.radius), **res["summary"], **common})
        for key, arr in res.items():
            if key != "summary":
                per_point[name if key == "log2_bound" else f"{name}_{key}"] = np.asarray(arr)
    return EvalRecord(epoch, rows, per_point)


# ---------------------------------------------------------------------------
# Setup and resume


class Run(NamedTuple):
    """Everything the loop needs, built by :func:`setup_run`."""

    cfg: Any
    workdir: Path
    keys: RunKeys
    cats: Categories
    points: dict
    epoch_fn: Any
    state: TrainState
    start_epoch: int  # last epoch already done (-1: nothing, epoch 0 still to evaluate)
    rows: list  # metrics rows up to start_epoch
    per_point: dict  # bounds.npz arrays up to start_epoch


def _resolved(cfg) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _resume_hint(workdir: Path) -> str:
    return f"python scripts/train.py resume=true hydra.run.dir={workdir}"


def check_resume(cfg, workdir: Path) -> int | None:
    """Decides how a run starts in ``workdir``; refuses what would lose or mix work.

    Returns:
      The checkpoint epoch to resume from, or None to start from scratch
      (a new run, or a run killed before its first checkpoint).

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
        return None
    if not recorded_path.exists():
        raise config_lib.ConfigError(f"invalid config resume=true: {workdir} holds no run to resume; start it without resume=true.")
    recorded = read_yaml(recorded_path, what="recorded config")
    current = _resolved(cfg)
    lost = sorted(set(config_lib.flat_keys(current)) - set(config_lib.flat_keys(recorded)))
    if lost:
        raise RunFileError(f"{recorded_path}: recorded config is damaged (keys missing: {', '.join(lost[:5])}); {FIX_RUN}.")
    diff = config_lib.computation_diff(recorded, current)
    if diff:
        changes = ", ".join(f"{k}: {_dotted(recorded, k)!r} -> {_dotted(current, k)!r}" for k in diff)
        raise config_lib.ConfigError(
            f"invalid config resume=true: settings differ from the run's recorded config ({changes}); resume "
            "without these overrides, or start a new run in another hydra.run.dir."
        )
    if status.get("status") == "complete":
        raise config_lib.ConfigError(f"invalid config resume=true: the run in {workdir} is already complete; nothing to resume.")
    if status.get("status") == "failed" and "diverged" in str(status.get("reason", "")):
        raise config_lib.ConfigError(
            f"invalid config resume=true: the run in {workdir} diverged ({status['reason']}); resuming would diverge "
            "again; start a new run with a lower lr or data.scale."
        )
    saved = checkpoints.saved_epochs(workdir)
    return saved[-1] if saved else None


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
    checkpoint) are dropped: the loop rewrites them identically.

    Raises:
      RunFileError: a damaged file, or one lacking an evaluation up to ``epoch``.
    """
    expected = [e for e in eval_epochs(cfg) if e <= epoch]
    fix = f"{FIX_RUN} (its checkpoints reach epoch {epoch}, its records do not)"
    metrics_path, bounds_path = workdir / METRICS, workdir / BOUNDS
    rows = [r for r in read_metrics(metrics_path, fix=fix) if r["epoch"] <= epoch]
    have = sorted((r["epoch"], r["category"]) for r in rows)
    want = sorted((e, c) for e in expected for c in CATEGORIES)
    if have != want:
        missing = sorted({e for e, c in set(want) - set(have)})
        extra = sorted({e for e, c in set(have) - set(want)})
        raise RunFileError(
            f"{metrics_path}: metrics do not match the checkpoint of epoch {epoch} (rows missing for epochs {missing}"
            f"{f', unexpected or repeated rows for epochs {extra}' if extra else ''}); {fix}."
        )
    arrays = read_npz(bounds_path, fix=fix)
    if "epochs" not in arrays:
        raise RunFileError(f"{bounds_path}: per-point bounds lack their epochs array; {fix}.")
    keep = arrays["epochs"] <= epoch
    if arrays["epochs"][keep].tolist() != expected or any(a.shape[0] != keep.size for a in arrays.values()):
        raise RunFileError(
            f"{bounds_path}: per-point bounds hold epochs {arrays['epochs'].tolist()}, not {expected} up to the "
            f"checkpoint of epoch {epoch}; {fix}."
        )
    return rows, {k: v[keep] for k, v in arrays.items()}


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
    keys = run_keys(cfg.seed)
    cats, splits = load_categories(cfg.data, keys.data)
    check_per_class_used(cfg.data, cats, splits.source)
    points = category_points(cats)
    log.info("data: %s (%s); %s", splits.source, splits.note, {k: tuple(v.shape) for k, v in points.items()})
    _check_data(workdir, data_record(cats, splits, cfg.data.digits), resuming=start is not None)
    model = MLP(depth=cfg.depth, width=cfg.width, num_outputs=cfg.model.num_outputs, init_std=cfg.model.init_std)
    state = create_train_state(model, make_optimizer(cfg.optim), keys.init, cats.train_x.shape[1])
    epoch_fn = make_epoch_fn(cats.train_x.shape[0], cfg.optim.batch_size)
    rows, per_point = [], {}
    if start is not None:
        write_json(workdir / STATUS, {"status": "running", "epoch": start})
        rows, per_point = _records_up_to(cfg, workdir, start)
        state = checkpoints.restore_state(workdir, start, state)
        log.info("resuming from the checkpoint of epoch %d (train state step %d)", start, int(state.step))
    return Run(cfg, workdir, keys, cats, points, epoch_fn, state, -1 if start is None else start, rows, per_point)


# ---------------------------------------------------------------------------
# Run files


def save_evaluation(run: Run, mngr, state: TrainState, record: EvalRecord, rows: list, per_point: dict) -> None:
    """Appends ``record`` to the run's records and writes them, then the checkpoint, then the status.

    The order matters for a kill at any point: rows ahead of the latest
    checkpoint are dropped on resume and recomputed identically.
    """
    rows.extend(record.rows)
    per_point["epochs"] = np.append(per_point.get("epochs", np.zeros(0, np.int64)), record.epoch).astype(np.int64)
    for key, arr in record.per_point.items():
        per_point[key] = np.concatenate([per_point[key], arr[None]]) if key in per_point else arr[None]
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
    sizes = {c: int(run.points[c].shape[0]) for c in CATEGORIES}
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


def _log_evaluation(record: EvalRecord, seconds: float) -> None:
    r = {row["category"]: row for row in record.rows}
    first = record.rows[0]
    log.info(
        "epoch %3d  train loss %.4f acc %.3f  test acc %.3f  mean C %s  single-region %s  (bounds %.1fs)",
        record.epoch,
        first["train_loss"],
        first["train_accuracy"],
        first["test_accuracy"],
        " ".join(f"{n}={r[n]['mean_log2_bound']:.1f}" for n in r),
        " ".join(f"{n}={r[n]['num_single_region']}" for n in r),
        seconds,
    )


def _fail(workdir: Path, epoch: int, reason: str) -> None:
    write_json(workdir / STATUS, {"status": "failed", "epoch": epoch, "reason": reason})


def train_and_evaluate(cfg, workdir: str | Path) -> list[dict]:
    """Trains the MLP and tracks local bounds; writes the run files into ``workdir``.

    Args:
      cfg: a composed ``TrainConfig`` (OmegaConf); paths are resolved in place.
      workdir: the run directory (Hydra's output dir under ``scripts/train.py``).

    Returns:
      The ``metrics.jsonl`` rows.

    Raises:
      ConfigError: invalid values (before any data is loaded) or a refused resume.
      RunLockedError: another process is writing into ``workdir``.
      RunFileError: a damaged run file, named in one line.
      TrainingDiverged: a non-finite loss (the run is marked ``failed``).
      RunInterrupted: SIGINT/SIGTERM (the run is marked ``interrupted``).
    """
    config_lib.validate(cfg)
    if isinstance(cfg, DictConfig):
        config_lib.resolve_paths(cfg)
    workdir = Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    with RunLock(workdir), _stop_on_signals() as stop:
        start = check_resume(cfg, workdir)  # a refusal writes nothing
        try:
            return _train(cfg, workdir, start, stop)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            _mark(workdir, "interrupted")
            raise
        except BaseException as e:
            _mark(workdir, "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            raise


def _mark(workdir: Path, status: str, reason: str | None = None) -> None:
    """Marks a run that stopped on an error (keeping a more specific ``failed`` reason)."""
    try:
        current = read_json(workdir / STATUS)
    except RunFileError:
        current = {}
    if current.get("status") == "failed":
        return
    write_json(workdir / STATUS, {"status": status, "epoch": current.get("epoch"), **({"reason": reason} if reason else {})})


def train_epoch(run: Run, state: TrainState, epoch: int) -> TrainState:
    """One epoch of training; a non-finite loss marks the run ``failed`` and raises :class:`TrainingDiverged`."""
    state, loss = run.epoch_fn(state, run.cats.train_x, run.cats.train_y, jax.random.fold_in(run.keys.train, epoch))
    if not math.isfinite(float(loss)):
        _fail(run.workdir, epoch, f"training diverged at epoch {epoch} (non-finite loss)")
        raise TrainingDiverged(
            f"training diverged at epoch {epoch} (loss {float(loss)}); lower lr or data.scale "
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
    if record.rows[0]["diverged"]:
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

        plot_run(rows, workdir / "trajectories.png", title=f"lr={cfg.lr} depth={cfg.depth} seed={cfg.seed}")
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

    return TensorBoardLog(workdir / "tensorboard")
