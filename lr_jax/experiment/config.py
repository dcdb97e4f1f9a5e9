"""Structured configs of the training run, registered in Hydra's ConfigStore.

``configs/train.yaml`` composes these through its defaults list: the schema
``train_schema`` first (types and the set of valid keys), then the groups
``data``, ``model``, ``optim`` and ``bound``. The short top-level keys ``lr``,
``depth``, ``width`` and ``seed`` are aliases: the groups interpolate them
(``optim.lr: ${lr}``), so ``python scripts/train.py lr=0.02 depth=3`` works as
written.

:func:`validate` checks values that types cannot (ranges, choices, paths) and
raises :class:`ConfigError` with one line naming the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import II

DATA_SOURCES = ("embedded", "tfds", "idx")
POOLINGS = ("adaptive", "crop")
OPTIMIZERS = ("sgd", "adam")
BOUND_METHODS = ("paper", "tight", "sampled", "exact")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""


@dataclass
class DataConfig:
    """Where the digits come from and how the four categories are built.

    ``scale`` is the input value of a white pixel (inputs are
    ``pooled pixels / 255 * scale``); see the README's calibration table for
    why the default is 64.
    """

    source: str = "embedded"
    data_dir: Optional[str] = None  # tfds: where prepared datasets live
    download: bool = False  # tfds: allow a download (needs network)
    dir: Optional[str] = None  # idx: folder with the four MNIST IDX files
    test_dir: Optional[str] = None  # embedded: folder with the IDX test split, used for `test`
    digits: List[int] = field(default_factory=lambda: [0, 4])
    per_class: int = 500
    n_random: int = 1000
    scale: float = 64.0
    pooling: str = "adaptive"


@dataclass
class ModelConfig:
    depth: int = II("depth")
    width: int = II("width")
    num_outputs: int = 2
    init_std: Optional[float] = None  # None: 1 / sqrt(fan_in)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = II("lr")
    momentum: float = 0.0
    batch_size: int = 32


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
    methods: List[str] = field(default_factory=lambda: ["paper"])
    num_samples: int = 256  # sampled: points drawn per ball
    num_chords: int = 8  # sampled: exact chords per ball
    exact_points: int = 20  # exact: points per category counted exactly
    exact_max_regions: int = 20000
    chunk_size: Optional[int] = None


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    bound: BoundConfig = field(default_factory=BoundConfig)
    lr: float = 0.02
    depth: int = 3
    width: int = 32
    seed: int = 0
    epochs: int = 20
    resume: bool = False
    plot: bool = True


def register_configs() -> None:
    """Registers ``train_schema`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _fail(key: str, value: Any, fix: str) -> None:
    raise ConfigError(f"invalid config {key}={value!r}: {fix}")


def validate(cfg: Any) -> None:
    """Checks the values of a (resolved) train config; raises :class:`ConfigError`.

    Args:
      cfg: a ``TrainConfig``-shaped object (OmegaConf DictConfig or dataclass).
    """
    if cfg.depth < 1 or cfg.model.depth < 1:
        _fail("depth", cfg.model.depth, "need at least one hidden layer (depth >= 1).")
    if cfg.model.width < 1:
        _fail("width", cfg.model.width, "need width >= 1.")
    if cfg.model.init_std is not None and not cfg.model.init_std > 0:
        _fail("model.init_std", cfg.model.init_std, "must be > 0, or null for 1/sqrt(fan_in).")
    if not cfg.optim.lr > 0:
        _fail("lr", cfg.optim.lr, "the learning rate must be > 0 (e.g. lr=0.02).")
    if cfg.optim.name not in OPTIMIZERS:
        _fail("optim.name", cfg.optim.name, f"choose one of {', '.join(OPTIMIZERS)}.")
    if cfg.optim.batch_size < 1:
        _fail("optim.batch_size", cfg.optim.batch_size, "must be >= 1.")
    if cfg.epochs < 0:
        _fail("epochs", cfg.epochs, "must be >= 0.")
    b = cfg.bound
    if not b.radius > 0:
        _fail("bound.radius", b.radius, "the ball radius must be > 0 (the paper uses 0.4).")
    if b.eval_every < 1:
        _fail("bound.eval_every", b.eval_every, "must be >= 1 (epochs between evaluations).")
    if not b.r_max > 0 or b.num_grid < 1 or b.num_bisect < 0:
        _fail("bound.r_max/num_grid/num_bisect", (b.r_max, b.num_grid, b.num_bisect), "need r_max > 0, num_grid >= 1, num_bisect >= 0.")
    unknown = [m for m in b.methods if m not in BOUND_METHODS]
    if unknown or "paper" not in b.methods:
        _fail("bound.methods", list(b.methods), f"a list from {', '.join(BOUND_METHODS)} that includes 'paper'.")
    if b.chunk_size is not None and b.chunk_size < 1:
        _fail("bound.chunk_size", b.chunk_size, "must be >= 1 or null.")
    d = cfg.data
    if d.source not in DATA_SOURCES:
        _fail("data.source", d.source, f"choose one of {', '.join(DATA_SOURCES)}.")
    if d.source == "idx":
        if not d.dir:
            _fail("data.dir", d.dir, "data.source=idx needs data.dir=/path/to/folder/with/the/IDX/files.")
        if not Path(d.dir).is_dir():
            _fail("data.dir", d.dir, "no such directory; point data.dir at the folder holding the four MNIST IDX files.")
    if d.test_dir is not None:
        if d.source != "embedded":
            _fail("data.test_dir", d.test_dir, "only data.source=embedded takes a separate test split.")
        if not Path(d.test_dir).is_dir():
            _fail("data.test_dir", d.test_dir, "no such directory; point it at the folder holding t10k-*-ubyte[.gz].")
    if d.pooling not in POOLINGS:
        _fail("data.pooling", d.pooling, f"choose one of {', '.join(POOLINGS)}.")
    if not d.scale > 0:
        _fail("data.scale", d.scale, "the input value of a white pixel must be > 0.")
    if len(d.digits) != 2 or len(set(d.digits)) != 2 or not all(0 <= int(x) <= 9 for x in d.digits):
        _fail("data.digits", list(d.digits), "two distinct digits in 0-9, e.g. [0,4].")
    if d.per_class < 1 or d.n_random < 1:
        _fail("data.per_class/n_random", (d.per_class, d.n_random), "both must be >= 1.")


__all__ = [
    "BoundConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "register_configs",
    "validate",
]
