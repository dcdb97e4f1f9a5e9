"""The grokking study: certified local complexity through a long training run (``study=grokking``).

Humayun, Balestriero and Baraniuk ("Deep Networks Always Grok and Here is
Why", ICML 2024) train an MLP 784-200-200-200-10 on 1,000 MNIST digits with
MSE on one-hot targets and AdamW (lr 1e-3, weight decay 0.01, batch 200),
every initial parameter scaled by ``alpha`` (large ``alpha`` delays
generalisation: grokking), and follow a sampled local complexity (the neurons
whose sign changes among the vertices of a random cross-polytope around a
point). This module runs that setting in the shared driver
(:func:`lr_jax.experiment.training_loop.drive`) with the study-specific parts:

* data (:func:`make_data`): ``grokking.n_train`` digits of ``data.digits``
  (balanced) at 28x28, pixels ``/ 255 * data.scale``; the test pool is the
  rest of the embedded subset (or the test split of the source, or the real
  test split with ``data.test_dir``);
* schedule (:func:`eval_steps`): step 0 and ``grokking.num_evals`` steps
  log-spaced up to ``grokking.steps``; ticks every ``grokking.chunk_steps``;
* training (:func:`make_advance_fn`): steps ``t0 .. t1`` as one jitted
  ``lax.fori_loop``; step ``t`` takes batch ``t mod B`` of the permutation of
  epoch ``t // B`` (``B = n_train // batch_size``) drawn with
  ``fold_in(train key, epoch)``, so any step range is reproducible alone and a
  resumed run equals one never stopped;
* categories (:data:`CATEGORIES`): ``train`` and ``test`` (the first
  ``grokking.n_points`` of a per-seed permutation), ``random`` (uniform in
  ``[0, data.scale]^784``) and ``boundary`` (:func:`boundary_points`: for a
  pair of test points with different predictions, the point of the segment
  between them where the prediction changes, by bisection: there the top two
  logits tie);
* measures (:func:`lr_jax.experiment.category_bounds.measures_at_radii`), at every radius of ``grokking.radii``:
  ``frame`` (:func:`lr_jax.frame_complexity`, crossed neurons: a lower
  estimate of the neurons that cut the ball), ``paper`` (Algorithm 1's ``C``:
  certified unstable neurons, an upper bound on them, and ``log2`` of its
  region bound), ``tight`` (the tighter certified unstable neurons and its
  ``log2`` region bound), ``sampled`` (regions found by sampling: a lower
  bound on the regions meeting the ball) and ``exact`` (the exact region count
  on the first ``grokking.exact_points`` points at the smallest radius, on the
  host). Per point ``frame <= tight <= paper`` (neurons) and ``sampled <=
  exact <= 2^tight_log2 <= 2^paper`` (regions) must hold; every row counts
  the points where they fail (``*_violations``, which must be 0).

Files are those of the paper's study (``metrics.jsonl``, ``bounds.npz``,
``data.json``, checkpoints, ``status.json``) with ``step`` as the time field:
one row per (step, category[, seed]) with, for radius index ``i``, the means
over points ``frame_r{i}``, ``paper_r{i}``, ``tight_r{i}``, ``tight_log2_r{i}``,
``sampled_log2_r{i}``, and ``radii``; per-point arrays ``<category>_<measure>``
``[E, n, R]`` (``[K, E, n, R]`` for stacked seeds), ``boundary_valid`` and
``boundary_gap`` ``[E, n]``.
"""

from __future__ import annotations

import hashlib
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
from lr_jax.experiment.category_bounds import common_fields, exact_counts_at, measures_at_radii
from lr_jax.experiment.experiment import CONFIG_FILE, RunKeys, run_keys, run_seeds, stack_trees, stacked_run_keys, unstack_tree
from lr_jax.experiment.mnist_io import MnistSplits, load_mnist
from lr_jax.experiment.models import MLP, init_mlp
from lr_jax.experiment.run_files import FIX_RUN, RunFileError, atomic_write, read_json, read_yaml, write_json
from lr_jax.experiment.run_lifecycle import TrainingDiverged, complete, fail, restore_newest_intact, start_files
from lr_jax.experiment.run_records import BOUNDS, DATA, METRICS, EvalRecord, check_data, mean_over_seeds, records_up_to
from lr_jax.experiment.train import make_optimizer
from lr_jax.experiment.training_loop import Study

log = logging.getLogger(__name__)

CATEGORIES = ("train", "test", "random", "boundary")
NEURON_MEASURES = ("frame", "tight", "paper")  # neurons: frame <= true <= tight <= paper
_LOG2_TOL = 1e-4  # the tight bound's log2 is a float32 sum


# ---------------------------------------------------------------------------
# Schedule


def eval_steps(steps: int, num_evals: int) -> list[int]:
    """Step 0 and ``num_evals`` steps log-spaced in ``[1, steps]`` (rounded, repeats dropped; ``steps`` last)."""
    logs = np.linspace(0.0, math.log10(steps), num_evals)
    return sorted({0, steps, *(int(round(10.0**v)) for v in logs)})


def ticks(cfg) -> list[int]:
    """The evaluated steps and every ``grokking.chunk_steps``: the times at which a run may stop."""
    g = cfg.grokking
    return sorted(set(eval_steps(g.steps, g.num_evals)) | set(range(0, g.steps + 1, g.chunk_steps)))


# ---------------------------------------------------------------------------
# Data


class GrokkingData(NamedTuple):
    """One seed's data (stacked runs: every array with a leading seed axis).

    Attributes:
      train_x: ``[n_train, 784]`` float32, ``train_y``: ``[n_train]`` int32 class indices.
      test_x: ``[m, 784]``, ``test_y``: ``[m]``: the test pool (loss, accuracy, boundary pairs).
      points: ``{"train", "test", "random": [n, 784]}``: the fixed points of three categories.
      pairs: ``[n, c, 2]`` int32 indices into the test pool: the candidate pairs of each boundary point.
      train_index: ``[n_train]`` indices of the training digits in the source's pool.
    """

    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    points: dict
    pairs: jax.Array
    train_index: np.ndarray


def _pools(splits: MnistSplits, test_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training pool and test pool: the embedded subset alone is one pool (its rest is the test pool)."""
    if splits.source == "embedded" and test_dir is None:
        images = np.concatenate([splits.train_images, splits.test_images])
        labels = np.concatenate([splits.train_labels, splits.test_labels])
        return images, labels, None, None
    return splits.train_images, splits.train_labels, splits.test_images, splits.test_labels


def make_data(splits: MnistSplits, g, digits, scale: float, key: jax.Array, test_dir=None) -> GrokkingData:
    """One seed's training digits, test pool, fixed points and boundary pairs, all from ``key``.

    ``g.n_train`` digits, as balanced over ``digits`` as the pool allows
    (``n_train // len(digits)`` of each, the remainder from the first
    classes), chosen without replacement; the test pool is every other digit
    of ``digits`` in a single-pool source, else the source's test split.
    """
    images, labels, test_images, test_labels = _pools(splits, test_dir)
    digits = [int(d) for d in digits]
    k_train, k_test, k_random, k_pairs = jax.random.split(key, 4)
    per, extra = divmod(g.n_train, len(digits))
    chosen = []
    for i, (d, k) in enumerate(zip(digits, jax.random.split(k_train, len(digits)))):
        idx = np.flatnonzero(labels == d)
        want = per + (1 if i < extra else 0)
        if idx.size < want:
            raise ValueError(f"the data hold {idx.size} digits {d}, fewer than the {want} grokking.n_train asks for; lower grokking.n_train.")
        chosen.append(idx[np.asarray(jax.random.permutation(k, idx.size))[:want]])
    train_index = np.sort(np.concatenate(chosen))
    if test_images is None:
        rest = np.setdiff1d(np.flatnonzero(np.isin(labels, digits)), train_index)
        test_images, test_labels = images[rest], labels[rest]
    else:
        keep = np.flatnonzero(np.isin(test_labels, digits))
        test_images, test_labels = test_images[keep], test_labels[keep]
    if test_labels.size < 2:
        raise ValueError("the test pool holds fewer than two digits; use another data source or data.test_dir.")
    to_class = np.full(10, -1, np.int64)
    to_class[digits] = np.arange(len(digits))

    def inputs(x):
        return jnp.asarray(np.asarray(x, np.float32).reshape(len(x), -1) / 255.0 * scale)

    train_x, test_x = inputs(images[train_index]), inputs(test_images)
    n, m = g.n_points, int(test_labels.size)
    train_pick = np.asarray(jax.random.permutation(k_test, train_x.shape[0]))[: min(n, train_x.shape[0])]
    test_pick = np.asarray(jax.random.permutation(jax.random.fold_in(k_test, 1), m))[: min(n, m)]
    points = {
        "train": train_x[train_pick],
        "test": test_x[test_pick],
        "random": jax.random.uniform(k_random, (n, train_x.shape[1]), minval=0.0, maxval=scale),
    }
    first, second = jax.random.randint(k_pairs, (2, n, g.boundary_candidates), 0, m)
    second = jnp.where(second == first, (second + 1) % m, second)  # a pair of two different points
    return GrokkingData(
        train_x, jnp.asarray(to_class[labels[train_index]], jnp.int32), test_x, jnp.asarray(to_class[test_labels], jnp.int32),
        points, jnp.stack([first, second], -1).astype(jnp.int32), train_index,
    )


def _fingerprint(data: GrokkingData) -> str:
    h = hashlib.sha256()
    for name in ("train_x", "test_x"):
        h.update(np.ascontiguousarray(np.asarray(getattr(data, name), np.float32)).tobytes())
    for name, x in data.points.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
    h.update(np.asarray(data.pairs, np.int64).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Model and training


def loss_fn(name: str):
    """``(logits [B, c], y [B]) -> scalar``: MSE on one-hot targets (mean over entries, as PyTorch's
    ``MSELoss``) or softmax cross-entropy."""
    if name == "mse":
        return lambda logits, y: jnp.mean((logits - jax.nn.one_hot(y, logits.shape[-1])) ** 2)
    return lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def initial_states(cfg, keys, input_dim: int) -> TrainState:
    """The MLP's train states, one per init key, stacked, every initial parameter multiplied by ``grokking.alpha``."""
    model = MLP(depth=cfg.depth, width=cfg.width, num_outputs=cfg.model.num_outputs, init_std=cfg.model.init_std, init_name=cfg.model.init)
    tx = make_optimizer(cfg.optim)  # one model and one optimizer object: the states share their static fields and stack
    states = []
    for key in keys:
        params = jax.tree.map(lambda p: p * cfg.grokking.alpha, init_mlp(model, key, input_dim))
        states.append(TrainState.create(apply_fn=model.apply, params=params, tx=tx))
    return stack_trees(states)


def make_advance_fn(n: int, batch_size: int, loss_name: str):
    """Jitted ``(state, x, y, key, t0, t1) -> (state, mean loss)`` running steps ``t0 .. t1 - 1``, vmapped over seeds.

    Step ``t`` uses batch ``t mod B`` of epoch ``t // B``'s permutation
    (``B = n // batch_size``; the remainder of a permutation is left out),
    drawn with ``fold_in(key, epoch)``: a pure function of ``t``.
    """
    per_epoch = n // batch_size
    loss = loss_fn(loss_name)

    def one_seed(state, x, y, key, t0, t1):
        def body(t, carry):
            state, total = carry
            perm = jax.random.permutation(jax.random.fold_in(key, t // per_epoch), n)
            idx = jax.lax.dynamic_slice(perm, ((t % per_epoch) * batch_size,), (batch_size,))
            value, grads = jax.value_and_grad(lambda p: loss(state.apply_fn({"params": p}, x[idx]), y[idx]))(state.params)
            return state.apply_gradients(grads=grads), total + value

        state, total = jax.lax.fori_loop(t0, t1, body, (state, jnp.zeros((), jnp.float32)))
        return state, total / jnp.maximum(t1 - t0, 1)

    return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, 0, None, None)))


# ---------------------------------------------------------------------------
# Measures


def boundary_points(apply_fn, params, test_x: jax.Array, pairs: jax.Array, num_bisect: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Points on the decision boundary between pairs of test points with different predictions.

    For point ``k`` the first candidate pair ``(a, b)`` of ``pairs[k]`` whose
    predictions differ is taken; bisection on ``s in [0, 1]`` keeps
    ``argmax f(a + s (b - a)) = argmax f(a)`` at ``lo`` and not at ``hi``,
    and returns ``x(lo + hi) / 2``: within ``|b - a| / 2^(num_bisect+1)`` of a
    point where the prediction changes, where the top two logits tie.

    Returns:
      ``(points [n, d], valid [n] bool: some candidate pair had different
      predictions, gap [n]: top-1 minus top-2 logit at the point)``.
    """
    preds = jnp.argmax(apply_fn({"params": params}, test_x), -1)
    differ = preds[pairs[..., 0]] != preds[pairs[..., 1]]  # [n, c]
    choice = jnp.argmax(differ, axis=1)
    pair = jnp.take_along_axis(pairs, choice[:, None, None], axis=1)[:, 0]  # [n, 2]
    a, b = test_x[pair[:, 0]], test_x[pair[:, 1]]
    label = preds[pair[:, 0]]

    def predict(s):
        return jnp.argmax(apply_fn({"params": params}, a + s[:, None] * (b - a)), -1)

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        same = predict(mid) == label
        return jnp.where(same, mid, lo), jnp.where(same, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_bisect, body, (jnp.zeros(a.shape[0]), jnp.ones(a.shape[0])))
    x = a + ((lo + hi) / 2)[:, None] * (b - a)
    top = jax.lax.top_k(apply_fn({"params": params}, x), 2)[0]
    return x, jnp.any(differ, axis=1), top[:, 0] - top[:, 1]


def make_eval_fn(apply_fn, cfg):
    """Jitted evaluation of K stacked seeds: ``(params, data, key) -> (arrays, metrics [K, 4])``.

    ``arrays``: :func:`~lr_jax.experiment.category_bounds.measures_at_radii` on the four categories (the boundary
    points found at this evaluation) plus ``boundary_valid``, ``boundary_gap``,
    and ``points_boundary`` (for the exact counter); ``metrics``: train loss,
    train accuracy, test loss, test accuracy (the study's loss).
    """
    g, radii, methods = cfg.grokking, tuple(float(r) for r in cfg.grokking.radii), tuple(cfg.grokking.methods)
    loss = loss_fn(g.loss)

    def metrics(params, x, y):
        logits = apply_fn({"params": params}, x)
        return loss(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)

    def one_seed(params, data: GrokkingData, key):
        boundary, valid, gap = boundary_points(apply_fn, params, data.test_x, data.pairs, g.boundary_bisect)
        points = {name: data.points[name] for name in CATEGORIES[:3]} | {"boundary": boundary}
        arrays = measures_at_radii(layers_from_flax(params), points, radii, methods, key, num_vertices=g.num_vertices,
                                   num_samples=g.num_samples, num_chords=g.num_chords)
        arrays.update(boundary_valid=valid, boundary_gap=gap, points_boundary=boundary)
        return arrays, jnp.stack([*metrics(params, data.train_x, data.train_y), *metrics(params, data.test_x, data.test_y)])

    batched = jax.jit(jax.vmap(one_seed))
    return lambda params, data, key: batched(params, data._replace(train_index=None), key)


def _summary(name: str, arrays: dict, valid: np.ndarray, radii, exact: tuple | None) -> dict:
    """One category's row fields: means over its (valid) points per radius, the exact counts, the checks."""
    out: dict[str, Any] = {"n_points": int(valid.sum()), "radii": [float(r) for r in radii]}
    for measure in ("frame", "paper", "tight", "tight_log2", "sampled"):
        key = f"{name}_{measure}"
        if key not in arrays:
            continue
        v = np.asarray(arrays[key], np.float64)[valid]
        if measure == "sampled":
            v = np.log2(np.maximum(v, 1))
            measure = "sampled_log2"
        for i in range(len(radii)):
            out[f"{measure}_r{i}"] = float(np.mean(v[:, i])) if v.shape[0] else None
    have = [m for m in NEURON_MEASURES if f"{name}_{m}" in arrays]
    bad = np.zeros(valid.shape, bool)
    for lo, hi in zip(have, have[1:]):  # frame <= tight <= paper, per point and radius
        bad |= np.any(np.asarray(arrays[f"{name}_{lo}"]) > np.asarray(arrays[f"{name}_{hi}"]), axis=-1)
    # regions: sampled <= 2^tight_log2 <= 2^C, per point and radius (log2; the bounds are float32 sums)
    region = [np.log2(np.maximum(np.asarray(arrays[f"{name}_sampled"], np.float64), 1))] if f"{name}_sampled" in arrays else []
    region += [np.asarray(arrays[f"{name}_{m}"], np.float64) for m in ("tight_log2", "paper") if f"{name}_{m}" in arrays]
    for lo, hi in zip(region, region[1:]):
        bad |= np.any(lo > hi + _LOG2_TOL, axis=-1)
    if exact is not None:
        count, done = exact
        k = count.size
        log2_c = np.log2(np.maximum(count, 1))
        ok = np.ones(k, bool)
        for m in ("tight_log2", "paper"):
            if f"{name}_{m}" in arrays:
                ok &= log2_c <= np.asarray(arrays[f"{name}_{m}"], np.float64)[:k, 0] + _LOG2_TOL
        if f"{name}_sampled" in arrays:
            ok &= ~done | (np.asarray(arrays[f"{name}_sampled"])[:k, 0] <= count)
        bad[:k] |= ~ok
        out.update({
            "exact_n_points": int(k),
            "exact_complete": bool(done.all()),
            "exact_mean_log2_count": float(np.mean(log2_c)) if k else None,
            "exact_mean_count": float(np.mean(count)) if k else None,
        })
    out["violations"] = int(np.sum(bad & valid))
    return out


def evaluate(run: "Run", state: TrainState, step: int) -> EvalRecord:
    """Every measure and the classifier metrics of ``state`` at ``step`` (all seeds); no I/O."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(run.keys.bounds, step)
    arrays, metrics = run.eval_fn(state.params, run.data, keys)
    arrays, metrics = jax.tree.map(np.asarray, arrays), np.asarray(metrics, np.float64)
    g, k = run.cfg.grokking, len(run.seeds)
    radii = [float(r) for r in g.radii]
    rows, per_seed = [], []
    for i, (seed, params) in enumerate(zip(run.seeds, unstack_tree(state.params, k))):
        a = {name: v[i] for name, v in arrays.items()}
        common = common_fields(*(float(v) for v in metrics[i]))
        layers = layers_from_flax(params) if "exact" in g.methods and g.exact_points else None
        seed_points = {}
        for name in CATEGORIES:
            valid = a["boundary_valid"] if name == "boundary" else np.ones(g.n_points, bool)
            exact = None
            if layers is not None:
                xs = a["points_boundary"] if name == "boundary" else np.asarray(run.data.points[name][i])
                exact = exact_counts_at(layers, np.asarray(xs[: g.exact_points], np.float64), float(min(g.radii)),
                                        g.exact_max_regions, g.exact_max_seconds)
                seed_points[f"{name}_exact_count"], seed_points[f"{name}_exact_complete"] = exact
            head = {"step": step} if k == 1 else {"step": step, "seed": seed}
            rows.append({**head, "category": name, **_summary(name, a, valid, radii, exact), **common})
        for name, v in a.items():
            if name != "points_boundary":
                seed_points[name] = v
        per_seed.append(seed_points)
    per_point = {key: np.stack([p[key] for p in per_seed]) if k > 1 else per_seed[0][key] for key in per_seed[0]}
    return EvalRecord(step, rows, per_point)


# ---------------------------------------------------------------------------
# Setup


class Run(NamedTuple):
    """Everything the loop needs, built by :func:`setup_run` (every array stacked on a leading seed axis)."""

    cfg: Any
    workdir: Path
    keys: RunKeys
    data: GrokkingData
    advance_fn: Any
    eval_fn: Any
    state: TrainState
    start: int  # last step already done (-1: nothing, step 0 still to evaluate)
    rows: list
    per_point: dict
    seeds: tuple


def setup_run(cfg, workdir: Path, start: int | None) -> Run:
    """The run's data, train state and, when resuming, its records up to the checkpoint (lock held)."""
    start_files(cfg, workdir, start, (METRICS, BOUNDS, DATA))
    seeds = run_seeds(cfg)
    d, g = cfg.data, cfg.grokking
    splits = load_mnist(d.source, data_dir=d.data_dir, download=d.download, idx_dir=d.dir, test_dir=d.test_dir)
    per_seed = [make_data(splits, g, d.digits, d.scale, run_keys(s).data, d.test_dir) for s in seeds]
    data = GrokkingData(*(stack_trees([getattr(p, f) for p in per_seed]) for f in GrokkingData._fields[:6]), np.stack([p.train_index for p in per_seed]))
    state = initial_states(cfg, [run_keys(s).init for s in seeds], per_seed[0].train_x.shape[1])
    record = {
        "source": splits.source,
        "note": splits.note,
        "digits": [int(x) for x in d.digits],
        "test_pool": int(per_seed[0].test_x.shape[0]),
        "per_seed": [{"seed": int(s), "train_index": p.train_index.tolist(), "fingerprint": _fingerprint(p)} for s, p in zip(seeds, per_seed)],
    }
    record["fingerprint"] = hashlib.sha256("".join(p["fingerprint"] for p in record["per_seed"]).encode()).hexdigest()
    log.info("data: %s (%s); %d training digits, test pool %d, %d points per category", splits.source, splits.note, g.n_train, record["test_pool"], g.n_points)
    check_data(workdir, record, resuming=start is not None)
    rows, per_point = [], {}
    if start is not None:
        start, state = restore_newest_intact(workdir, start, state)
        rows, per_point = records_up_to(workdir, eval_steps(g.steps, g.num_evals), start, seeds, CATEGORIES, "step")
        log.info("resuming from the checkpoint of step %d", start)
    advance_fn = make_advance_fn(g.n_train, cfg.optim.batch_size, g.loss)
    eval_fn = make_eval_fn(state.apply_fn, cfg)
    return Run(cfg, workdir, stacked_run_keys(seeds), data, advance_fn, eval_fn, state, -1 if start is None else start, rows, per_point, seeds)


def advance(run: Run, state: TrainState, t0: int, t1: int) -> TrainState:
    """Trains every seed from step ``t0`` to ``t1``; a non-finite loss marks the run ``failed``."""
    state, loss = run.advance_fn(state, run.data.train_x, run.data.train_y, run.keys.train, max(t0, 0), t1)
    losses = np.asarray(loss, np.float64)
    if not np.all(np.isfinite(losses)):
        bad = [s for s, v in zip(run.seeds, losses) if not math.isfinite(v)]
        fail(run.workdir, t1, f"training diverged by step {t1} (non-finite loss of seed {', '.join(map(str, bad))})")
        raise TrainingDiverged(f"training diverged by step {t1} (non-finite loss); lower lr or grokking.alpha and start a new run.")
    return state


def _check_record(run: Run, record: EvalRecord) -> None:
    if any(r["diverged"] for r in record.rows):
        fail(run.workdir, record.epoch, f"training diverged at step {record.epoch} (non-finite loss at evaluation)")
        raise TrainingDiverged(f"training diverged at step {record.epoch} (non-finite loss); lower lr or grokking.alpha and start a new run.")


def _log_evaluation(run: Run, record: EvalRecord, seconds: float) -> None:
    rows = mean_over_seeds(record.rows, "step") if "seed" in record.rows[0] else record.rows
    first = rows[0]
    parts = []
    for r in rows:
        fields = " ".join(f"{m}={r[f'{m}_r0']:.1f}" for m in NEURON_MEASURES if r.get(f"{m}_r0") is not None)
        parts.append(f"{r['category']}[{fields}]")
    log.info(
        "step %6d  train loss %.4f acc %.3f  test acc %.3f  r0: %s  (measures %.1fs)",
        record.epoch, first["train_loss"], first["train_accuracy"], first["test_accuracy"], " ".join(parts), seconds,
    )


def final_check(run: Run) -> None:
    """Every expected row and file of a finished run, before it is marked complete (one line when not)."""
    g, workdir = run.cfg.grokking, run.workdir
    rows, _ = records_up_to(workdir, eval_steps(g.steps, g.num_evals), g.steps, run.seeds, CATEGORIES, "step")
    if any(r.get("violations") for r in rows):
        bad = next(r for r in rows if r.get("violations"))
        raise RunFileError(f"{workdir / METRICS}: {bad['violations']} points of {bad['category']} at step {bad['step']} break "
                           "frame <= tight <= paper or sampled <= exact <= 2^tight <= 2^C; report this run.")
    read_yaml(workdir / CONFIG_FILE, what="recorded config")
    read_json(workdir / DATA, what="data record")
    if g.steps not in checkpoints.saved_epochs(workdir):
        raise RunFileError(f"{checkpoints.checkpoint_dir(workdir) / str(g.steps)}: final checkpoint is missing; {FIX_RUN}.")


def finish_run(run: Run, rows: list, seconds: float, bound_seconds: float) -> None:
    """Plot (``plot=true``), timing, the final check, then ``complete`` (or ``failed``)."""
    cfg, workdir = run.cfg, run.workdir
    if cfg.plot:
        from lr_jax.experiment.grokking_report import plot_run  # matplotlib only when a plot is asked for

        plotted = mean_over_seeds(rows, "step") if len(run.seeds) > 1 else rows
        atomic_write(workdir / "trajectories.png", lambda p: plot_run(plotted, p, title=f"alpha={cfg.grokking.alpha} seeds {run.seeds[0]}..{run.seeds[-1]}"))
    write_json(workdir / "timing.json", {"total_seconds": seconds, "bound_seconds": bound_seconds})
    try:
        final_check(run)
    except RunFileError as e:
        fail(workdir, cfg.grokking.steps, f"final check: {e}")
        raise
    complete(workdir, cfg.grokking.steps)


GROKKING = Study(
    time_key="step",
    ticks=ticks,
    schedule=lambda cfg: eval_steps(cfg.grokking.steps, cfg.grokking.num_evals),
    end=lambda cfg: cfg.grokking.steps,
    setup=setup_run,
    advance=advance,
    evaluate=evaluate,
    log_evaluation=_log_evaluation,
    finish=finish_run,
    tensorboard=lambda cfg, workdir: None,
    check_record=_check_record,
)
"""The grokking study for :func:`lr_jax.experiment.training_loop.drive`."""
