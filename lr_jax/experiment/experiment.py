"""The paper's experiment (section 5): its categories of points, keys, data and saved runs.

What the trainer, ``saved_runs``, ``scripts/bound.py`` and
``scripts/tightness.py`` share: the four categories (:data:`CATEGORIES`), the
run's keys split from its seed (:func:`run_keys`), the points a config yields
(:func:`load_categories`, reading the data source), the data fingerprint
recorded in ``data.json`` (:func:`data_record`), and a saved run read back
(:func:`load_run`: its recorded config and the params of one checkpoint). The
trainer imports this module, never the other way round.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from lr_jax.experiment import checkpoints
from lr_jax.experiment.config import TrainConfig, flat_keys, per_class
from lr_jax.experiment.datasets import CATEGORIES, Categories, make_categories
from lr_jax.experiment.mnist_io import MnistSplits, load_mnist
from lr_jax.experiment.run_files import RunFileError, read_yaml

CONFIG_FILE = "config.yaml"


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


def run_seeds(cfg: Any) -> tuple[int, ...]:
    """The seeds of a run: ``seed .. seed+seeds-1`` (runs recorded before ``seeds`` existed hold one).

    ``cfg``: a config (DictConfig or a plain mapping such as a job's YAML read
    by the sweep collector) or a structured config object.
    """
    if isinstance(cfg, Mapping):
        seed, k = cfg["seed"], cfg.get("seeds")
    else:
        seed, k = cfg.seed, getattr(cfg, "seeds", None)
    return tuple(range(int(seed), int(seed) + int(k or 1)))


# fold_in tag of the exact-count subsets: far from the epochs folded into the same bounds key.
_SUBSET_TAG = 2**31 - 1


def exact_subsets(bounds_key: jax.Array, sizes: dict[str, int], k: int) -> dict[str, np.ndarray]:
    """The points of each category whose regions are counted exactly, fixed for the whole run.

    ``min(k, n)`` indices per category drawn without replacement with
    ``fold_in(fold_in(bounds_key, 2**31 - 1), category index)`` and sorted:
    chosen once from the run's key, so every evaluation, a resume and a
    separate run of the same seed count the same points.

    Args:
      bounds_key: the run's ``RunKeys.bounds``.
      sizes: ``{category: n}`` in :data:`CATEGORIES` order.
      k: ``bound.exact_points``.

    Returns:
      ``{category: indices [min(k, n)]}`` (int64).
    """
    key = jax.random.fold_in(bounds_key, _SUBSET_TAG)
    out = {}
    for i, (name, n) in enumerate(sizes.items()):
        idx = jax.random.choice(jax.random.fold_in(key, i), n, (min(int(k), int(n)),), replace=False)
        out[name] = np.sort(np.asarray(idx, np.int64))
    return out


def stack_trees(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure stacked leaf by leaf on a new leading (seed) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_tree(tree: Any, num: int) -> list:
    """The ``num`` pytrees of a tree stacked on its leading axis (inverse of :func:`stack_trees`)."""
    return [jax.tree.map(lambda leaf: leaf[i], tree) for i in range(num)]


def stacked_run_keys(seeds: Sequence[int]) -> RunKeys:
    """:class:`RunKeys` of every seed stacked: each field ``[K, 2]``, row ``i`` that of ``run_keys(seeds[i])``."""
    return stack_trees([run_keys(s) for s in seeds])


def load_categories(data_cfg: Any, key: jax.Array) -> tuple[Categories, MnistSplits]:
    """The four categories of a run's ``data`` config (reads the data source).

    A source holding fewer digits of a class than asked for gives all it has
    (``Categories.per_class_used`` says how many); a new run refuses that
    (:func:`check_per_class_used`), a saved run is rebuilt as it was trained.
    """
    d = data_cfg
    splits = load_mnist(d.source, data_dir=d.data_dir, download=d.download, idx_dir=d.dir, test_dir=d.test_dir)
    return categories_from_splits(data_cfg, splits, key), splits


def categories_from_splits(data_cfg: Any, splits: MnistSplits, key: jax.Array) -> Categories:
    """The four categories of a run's ``data`` config from splits already read (pure)."""
    d = data_cfg
    return make_categories(
        splits, key=key, digits=tuple(d.digits), per_class=per_class(d), n_random=d.n_random, scale=d.scale, pooling=d.pooling
    )


def stack_categories(cats: Sequence[Categories]) -> Categories:
    """Categories of several seeds stacked on a leading seed axis (all of one size).

    ``per_class_used`` is the first seed's: every seed takes the same number
    per class from the same source (each is checked on its own).
    """
    arrays = [jnp.stack([getattr(c, f) for c in cats]) for f in Categories._fields[:6]]
    index = [np.stack([getattr(c, f) for c in cats]) for f in ("train_index", "test_index")]
    return Categories(*arrays, *index, cats[0].per_class_used)


def check_per_class_used(data_cfg: Any, cats: Categories, source: str) -> None:
    """Raises ValueError when the data held fewer digits per class than the run asks for (a small custom IDX set)."""
    n = per_class(data_cfg)
    short = {split: used for split, used in cats.per_class_used.items() if min(used) < n}
    if short:
        raise ValueError(
            f"invalid config data.per_class={n}: the {source} data holds only {short} digits "
            f"per class of {list(data_cfg.digits)}; lower data.per_class."
        )


def category_points(cats: Categories) -> dict[str, jax.Array]:
    """``{category: points [n, 36]}`` in :data:`CATEGORIES` order."""
    return dict(zip(CATEGORIES, (cats.train_x, cats.test_x, cats.random1, cats.random2)))


def category_labels(cats: Categories) -> dict[str, np.ndarray]:
    """``{category: labels [n]}``: 0/1 for train and test, -1 for the random categories."""
    return {
        "train": np.asarray(cats.train_y, np.int64),
        "test": np.asarray(cats.test_y, np.int64),
        "random1": np.full(cats.random1.shape[0], -1, np.int64),
        "random2": np.full(cats.random2.shape[0], -1, np.int64),
    }


def data_fingerprint(cats: Categories) -> str:
    """SHA-256 of every category's points (float32 bytes): equal iff the points are equal."""
    h = hashlib.sha256()
    for name, x in category_points(cats).items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes())
    return h.hexdigest()


def data_record(cats: Categories, splits: MnistSplits, digits) -> dict:
    """The contents of ``data.json``: source, note, digits, chosen indices and the fingerprint."""
    return {
        "source": splits.source,
        "note": splits.note,
        "digits": [int(d) for d in digits],
        "per_class_used": {k: list(v) for k, v in cats.per_class_used.items()},
        "train_index": np.asarray(cats.train_index).tolist(),
        "test_index": np.asarray(cats.test_index).tolist(),
        "fingerprint": data_fingerprint(cats),
    }


def stacked_data_record(cats: Sequence[Categories], splits: MnistSplits, digits, seeds: Sequence[int]) -> dict:
    """``data.json`` of a stacked run: the source once, then each seed's indices and fingerprint.

    The top-level ``fingerprint`` hashes the per-seed ones in seed order, so a
    resume compares every seed's points at once.
    """
    per_seed = []
    for s, c in zip(seeds, cats):
        record = data_record(c, splits, digits)
        per_seed.append({"seed": int(s), **{k: record[k] for k in ("per_class_used", "train_index", "test_index", "fingerprint")}})
    combined = hashlib.sha256("".join(r["fingerprint"] for r in per_seed).encode()).hexdigest()
    return {
        "source": splits.source,
        "note": splits.note,
        "digits": [int(d) for d in digits],
        "seeds": [int(s) for s in seeds],
        "fingerprint": combined,
        "per_seed": per_seed,
    }


class SavedRun(NamedTuple):
    """A training run read back: its folder, recorded config, one checkpoint's params."""

    run_dir: Path
    config: Any  # OmegaConf DictConfig of the run's config.yaml
    params: Any
    epoch: int


def run_config(run_dir: str | Path):
    """The run's recorded ``config.yaml`` (written once when it started), as a DictConfig.

    Runs made before ``config.yaml`` was recorded are read from Hydra's
    ``.hydra/config.yaml``.

    Raises:
      RunFileError: the file is missing or damaged.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists() and (Path(run_dir) / ".hydra" / "config.yaml").exists():
        path = Path(run_dir) / ".hydra" / "config.yaml"  # a run from before config.yaml was recorded
    fix = "the run's config is needed to rebuild its points; train the run again"
    cfg = read_yaml(path, fix=fix)
    cfg.setdefault("seeds", 1)  # a run recorded before `seeds` existed trained one seed
    if isinstance(cfg.get("model"), dict):
        cfg["model"].setdefault("init", "lecun")  # ... and before `model.init`, LeCun normal
    lost = sorted(set(_schema_keys()) - set(flat_keys(cfg)))
    if lost:
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise RunFileError(f"{path}: config is damaged (keys missing: {', '.join(lost[:5])}{more}); {fix}.")
    return OmegaConf.create(cfg)


def _schema_keys() -> list[str]:
    """Dotted keys of every setting of a training run (``TrainConfig``)."""
    return list(flat_keys(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False)))


def load_run(run_dir: str | Path, epoch: int | None = None) -> SavedRun:
    """A run's recorded config and the params of its checkpoint ``epoch`` (the latest if None).

    Raises:
      RunFileError: no checkpoint, an epoch without one, or a damaged file (one line).
    """
    run_dir = Path(run_dir).expanduser().absolute()
    if run_dir.name == checkpoints.CHECKPOINTS:
        run_dir = run_dir.parent
    cfg = run_config(run_dir)
    saved = checkpoints.saved_epochs(run_dir)
    if not saved:
        raise RunFileError(
            f"{checkpoints.checkpoint_dir(run_dir)}: no checkpoint saved; the run ended before its first evaluation, "
            "resume or train it again."
        )
    if epoch is None:
        epoch = saved[-1]
    elif epoch not in saved:
        raise RunFileError(f"{checkpoints.checkpoint_dir(run_dir)}: no checkpoint of epoch={epoch}; saved epochs are {saved}.")
    return SavedRun(run_dir, cfg, checkpoints.restore_params(run_dir, epoch), epoch)


def seed_runs(run: SavedRun) -> list[SavedRun]:
    """A saved run as per-seed runs: itself for one seed, K runs for a stacked one.

    Seed ``s`` of a stack gets its own params (row ``i`` of the stacked
    checkpoint) and a config with ``seed=s, seeds=1``: exactly the config of a
    separate run of that seed, so :func:`run_points` rebuilds its own points.
    """
    seeds = run_seeds(run.config)
    if len(seeds) == 1:
        return [run]
    out = []
    for s, params in zip(seeds, unstack_tree(run.params, len(seeds))):
        cfg = OmegaConf.merge(run.config, {"seed": s, "seeds": 1})
        out.append(SavedRun(run.run_dir, cfg, params, run.epoch))
    return out


def run_points(run: SavedRun, categories=CATEGORIES):
    """The run's points of ``categories`` rebuilt as during training.

    Returns:
      ``xs [N, d]`` (float32, categories in the given order) and per point
      ``(category [N], point_index [N], label [N])``.
    """
    cats, _ = load_categories(run.config.data, run_keys(run.config.seed).data)
    points, labels = category_points(cats), category_labels(cats)
    xs = [np.asarray(points[c], np.float32) for c in categories]
    names = [np.full(x.shape[0], c) for c, x in zip(categories, xs)]
    index = [np.arange(x.shape[0]) for x in xs]
    label = [labels[c] for c in categories]
    return np.concatenate(xs), (np.concatenate(names), np.concatenate(index), np.concatenate(label))
