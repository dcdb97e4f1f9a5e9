"""Training loop of the paper's experiment with local bounds tracked during training.

``train_and_evaluate(cfg, workdir)`` trains the Flax MLP on MNIST "0" vs "4"
(section 5.1) with Optax and, at epoch 0 and every ``bound.eval_every`` epochs,
evaluates the local bound at ``bound.radius`` and the certified single-region
radius around every point of the four categories (section 5.2). This module
does the run's I/O; the numerics live in the pure modules it calls.

A run directory holds (the contract the sweep and the plots read):

* ``metrics.jsonl``: one row per (epoch, category) with ``epoch``, ``category``,
  ``radius``, ``mean_bound``, ``mean_log2_bound``, ``median_log2_bound``,
  ``num_single_region``, ``mean_single_region_radius``, ``n_points`` and the
  epoch's ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``;
  extra bound methods add fields prefixed with their name (``tight_``,
  ``sampled_``, ``exact_``);
* ``bounds.npz``: per-point ``log2_bound`` and single-region radius of every
  category at every evaluated epoch (``<category>`` and
  ``<category>_single_region_radius``, ``[E, n]``; ``epochs`` ``[E]``);
* ``checkpoints/<epoch>``: Orbax checkpoints of params and optimizer state;
* ``data.json``: the data source, its note, the chosen digit indices;
* ``trajectories.png``: the run's four trajectories;
* ``status.json``: ``running`` until the run has finished, then ``complete``.

Files are replaced atomically, so an interrupted run is never half-written; it
is marked ``running`` and can be resumed with ``resume=true``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lr_jax.experiment import config as config_lib
from lr_jax.experiment.bound_summary import summarise_category
from lr_jax.experiment.datasets import Categories, make_categories
from lr_jax.networks.layers import layers_from_flax
from lr_jax.bounds.local_bound import local_bounds
from lr_jax.experiment.mnist_io import load_mnist
from lr_jax.experiment.models import MLP, init_mlp
from lr_jax.experiment.run_files import read_metrics, write_json, write_metrics, write_npz
from lr_jax.bounds.single_region_radius import single_region_radius

log = logging.getLogger(__name__)

CATEGORIES = ("train", "test", "random1", "random2")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainState(NamedTuple):
    """Parameters and optimizer state; the epoch is the checkpoint's step."""

    params: Any
    opt_state: Any


# ---------------------------------------------------------------------------
# Training


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
    """Optax optimizer from ``optim`` config (SGD as in the paper, or Adam)."""
    if optim_cfg.name == "sgd":
        return optax.sgd(optim_cfg.lr, momentum=optim_cfg.momentum or None)
    return optax.adam(optim_cfg.lr)


def _loss(model, params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_epoch_fn(model: MLP, tx: optax.GradientTransformation, n: int, batch_size: int):
    """A jitted function running one epoch of minibatch training.

    Each epoch shuffles the ``n`` training points with its own key and takes
    ``n // batch_size`` full batches (the remainder is left out of that epoch
    only; it is reshuffled into the next), as one ``lax.scan``.
    """
    batch_size = min(batch_size, n)
    num_batches = n // batch_size

    def step(state: TrainState, batch):
        x, y = batch
        loss, grads = jax.value_and_grad(lambda p: _loss(model, p, x, y))(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    @jax.jit
    def epoch(state: TrainState, x, y, key):
        perm = jax.random.permutation(key, n)[: num_batches * batch_size]
        xb = x[perm].reshape(num_batches, batch_size, -1)
        yb = y[perm].reshape(num_batches, batch_size)
        state, losses = jax.lax.scan(step, state, (xb, yb))
        return state, losses.mean()

    return epoch


def classifier_metrics(model: MLP, params, x, y) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``(x [n, d], y [n])``."""
    logits = model.apply({"params": params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return float(loss), float(acc)


# ---------------------------------------------------------------------------
# Bounds


def category_points(cats: Categories) -> dict[str, jax.Array]:
    return {"train": cats.train_x, "test": cats.test_x, "random1": cats.random1, "random2": cats.random2}


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
    log2 = np.asarray(local_bounds(layers, xs, [bound_cfg.radius], chunk_size=bound_cfg.chunk_size).log2_bound[:, 0])
    srr = np.asarray(
        single_region_radius(layers, xs, bound_cfg.r_max, bound_cfg.num_grid, bound_cfg.num_bisect).radius
    )
    out = {}
    for i, (name, c, s) in enumerate(zip(names, np.split(log2, splits), np.split(srr, splits))):
        summary = summarise_category(c, s)
        res = {"log2_bound": c, "single_region_radius": s}
        res.update(_extra_methods(layers, points[name], bound_cfg, bound_cfg.methods, jax.random.fold_in(key, i), summary))
        res["summary"] = summary
        out[name] = res
    return out


def _extra_methods(layers, xs, bound_cfg, methods, key, summary: dict) -> dict:
    """The optional bounds of ``bound.methods`` (tight, sampled, exact)."""
    res = {}
    r = bound_cfg.radius
    if "tight" in methods:
        t = np.asarray(local_bounds(layers, xs, [r], method="tight", chunk_size=bound_cfg.chunk_size).log2_bound[:, 0])
        res["tight_log2_bound"] = t
        summary.update({f"tight_{k}": v for k, v in summarise_category(t).items() if k != "n_points"})
    if "sampled" in methods:
        from lr_jax.bounds.sampled_regions import sample_regions

        s = np.asarray(
            sample_regions(layers, xs, [r], key, num_samples=bound_cfg.num_samples, num_chords=bound_cfg.num_chords)[:, 0]
        )
        res["sampled_count"] = s
        summary["sampled_mean_count"] = float(np.mean(s))
        summary["sampled_mean_log2_count"] = float(np.mean(np.log2(s)))
    if "exact" in methods:
        from lr_jax.bounds.exact_count import count_regions

        k = min(bound_cfg.exact_points, xs.shape[0])
        counts = [count_regions(layers, np.asarray(x), r, max_regions=bound_cfg.exact_max_regions) for x in xs[:k]]
        c = np.array([rc.count for rc in counts])
        res["exact_count"] = c
        summary["exact_n_points"] = int(k)
        summary["exact_complete"] = bool(all(rc.complete for rc in counts))
        summary["exact_mean_count"] = float(np.mean(c)) if k else float("nan")
        summary["exact_mean_log2_count"] = float(np.mean(np.log2(c))) if k else float("nan")
    return res


# ---------------------------------------------------------------------------
# Run files


def _checkpoint_manager(workdir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
    )


def restore_params(checkpoint_dir: str | Path, epoch: int | None = None):
    """Params of a run's checkpoint (the latest epoch unless given), as a dict."""
    import orbax.checkpoint as ocp

    path = Path(checkpoint_dir)
    if path.name != "checkpoints" and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    with ocp.CheckpointManager(path.absolute()) as mngr:
        step = mngr.latest_step() if epoch is None else epoch
        if step is None:
            raise FileNotFoundError(f"no checkpoint found under {path}.")
        restored = mngr.restore(step, args=ocp.args.StandardRestore())
    return restored["params"], step


# ---------------------------------------------------------------------------
# Entry point


class RunKeys(NamedTuple):
    """The keys of a run, all split from ``PRNGKey(seed)``: data selection and
    random points, parameter init, minibatch order, and sampled bounds."""

    data: jax.Array
    init: jax.Array
    train: jax.Array
    bounds: jax.Array


def run_keys(seed: int) -> RunKeys:
    """:class:`RunKeys` of a run with this seed (the one root key of the run)."""
    return RunKeys(*jax.random.split(jax.random.PRNGKey(seed), 4))


def load_categories(cfg, key) -> tuple[Categories, Any]:
    """The four categories of a run's config (reads the data source)."""
    d = cfg.data
    splits = load_mnist(d.source, data_dir=d.data_dir, download=d.download, idx_dir=d.dir, test_dir=d.test_dir)
    cats = make_categories(
        splits,
        key=key,
        digits=tuple(d.digits),
        per_class=d.per_class,
        n_random=d.n_random,
        scale=d.scale,
        pooling=d.pooling,
    )
    return cats, splits


def train_and_evaluate(cfg, workdir: str | Path) -> list[dict]:
    """Trains the MLP and tracks local bounds; writes the run files into ``workdir``.

    Args:
      cfg: a resolved ``TrainConfig`` (OmegaConf or dataclass).
      workdir: the run directory (Hydra's output dir under ``scripts/train.py``).

    Returns:
      The ``metrics.jsonl`` rows.

    Raises:
      ConfigError: on invalid values, before any data is loaded.
    """
    config_lib.validate(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_path, bounds_path = workdir / "metrics.jsonl", workdir / "bounds.npz"
    status_path = workdir / "status.json"
    if not cfg.resume and status_path.exists():
        raise config_lib.ConfigError(
            f"invalid config resume=False: {workdir} already holds a run; pass resume=true to continue it "
            "or choose another hydra.run.dir."
        )
    if cfg.resume and not status_path.exists():
        raise config_lib.ConfigError(
            f"invalid config resume=True: {workdir} holds no run to resume; set hydra.run.dir to the run's folder."
        )

    k_data, k_init, k_train, k_bounds = run_keys(cfg.seed)
    t0 = time.perf_counter()
    cats, splits = load_categories(cfg, k_data)
    log.info("data: %s (%s); %s", splits.source, splits.note, {k: tuple(v.shape) for k, v in category_points(cats).items()})
    write_json(
        workdir / "data.json",
        {
            "source": splits.source,
            "note": splits.note,
            "digits": list(cfg.data.digits),
            "per_class_used": {k: list(v) for k, v in cats.per_class_used.items()},
            "train_index": np.asarray(cats.train_index).tolist(),
            "test_index": np.asarray(cats.test_index).tolist(),
        },
    )

    model = MLP(depth=cfg.model.depth, width=cfg.model.width, num_outputs=cfg.model.num_outputs, init_std=cfg.model.init_std)
    tx = make_optimizer(cfg.optim)
    params = init_mlp(model, k_init, cats.train_x.shape[1])
    state = TrainState(params, tx.init(params))
    epoch_fn = make_epoch_fn(model, tx, cats.train_x.shape[0], cfg.optim.batch_size)
    points = category_points(cats)

    rows: list[dict] = []
    per_point: dict[str, list] = {"epochs": []}
    start = 0
    mngr = _checkpoint_manager(workdir)
    if cfg.resume:
        import orbax.checkpoint as ocp

        start = mngr.latest_step()
        if start is None:
            raise config_lib.ConfigError(f"invalid config resume=True: no checkpoint under {workdir}/checkpoints.")
        restored = mngr.restore(start, args=ocp.args.StandardRestore(state._asdict()))
        state = TrainState(restored["params"], restored["opt_state"])
        rows = [r for r in read_metrics(metrics_path) if r["epoch"] <= start] if metrics_path.exists() else []
        with np.load(bounds_path) as z:
            keep = z["epochs"] <= start
            per_point = {k: list(z[k][keep]) for k in z.files}
        log.info("resuming from epoch %d", start)
    write_json(status_path, {"status": "running", "epoch": start})

    bound_seconds = 0.0

    def evaluate(epoch: int, state: TrainState, train_loss: float | None):
        nonlocal bound_seconds
        tb = time.perf_counter()
        layers = layers_from_flax(state.params)
        result = evaluate_bounds(layers, points, cfg.bound, jax.random.fold_in(k_bounds, epoch))
        bound_seconds += time.perf_counter() - tb
        tr_loss, tr_acc = classifier_metrics(model, state.params, cats.train_x, cats.train_y)
        te_loss, te_acc = classifier_metrics(model, state.params, cats.test_x, cats.test_y)
        common = {"train_loss": tr_loss, "train_accuracy": tr_acc, "test_loss": te_loss, "test_accuracy": te_acc}
        per_point["epochs"].append(epoch)
        for name, res in result.items():
            rows.append({"epoch": epoch, "category": name, "radius": float(cfg.bound.radius), **res["summary"], **common})
            for key, arr in res.items():
                if key != "summary":
                    field = name if key == "log2_bound" else f"{name}_{key}"
                    per_point.setdefault(field, []).append(arr)
        write_metrics(metrics_path, rows)
        write_npz(bounds_path, {k: np.asarray(v) for k, v in per_point.items()})
        mngr.save(epoch, args=_save_args(state))
        mngr.wait_until_finished()
        write_json(status_path, {"status": "running", "epoch": epoch})
        log.info(
            "epoch %3d  train loss %.4f acc %.3f  test acc %.3f  mean C %s  single-region %s  (bounds %.1fs)",
            epoch,
            tr_loss if train_loss is None else train_loss,
            tr_acc,
            te_acc,
            " ".join(f"{n}={result[n]['summary']['mean_log2_bound']:.1f}" for n in result),
            " ".join(f"{n}={result[n]['summary']['num_single_region']}" for n in result),
            time.perf_counter() - tb,
        )

    if not cfg.resume:
        evaluate(0, state, None)
    for epoch in range(start + 1, cfg.epochs + 1):
        state, loss = epoch_fn(state, cats.train_x, cats.train_y, jax.random.fold_in(k_train, epoch))
        if not np.isfinite(float(loss)):
            write_json(status_path, {"status": "failed", "epoch": epoch, "reason": "non-finite loss"})
            raise TrainingDiverged(
                f"training diverged at epoch {epoch} (loss {float(loss)}); lower lr or data.scale "
                f"(now lr={cfg.optim.lr}, data.scale={cfg.data.scale})."
            )
        if epoch % cfg.bound.eval_every == 0 or epoch == cfg.epochs:
            evaluate(epoch, state, float(loss))
    mngr.close()

    if cfg.plot:
        from lr_jax.experiment.plots import plot_run

        plot_run(rows, workdir / "trajectories.png", title=f"lr={cfg.optim.lr} depth={cfg.model.depth} seed={cfg.seed}")
    total = time.perf_counter() - t0
    write_json(workdir / "timing.json", {"total_seconds": total, "bound_seconds": bound_seconds})
    write_json(status_path, {"status": "complete", "epoch": cfg.epochs})
    log.info("done in %.1fs (%.1fs in bound evaluation); run files in %s", total, bound_seconds, workdir)
    return rows


def _save_args(state: TrainState):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(state._asdict())
