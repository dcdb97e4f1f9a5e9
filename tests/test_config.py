"""The Hydra config composes as documented and bad values fail with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lr_jax.experiment import config as config_lib
from lr_jax.experiment.config import ConfigError, TrainConfig, validate
from tests.conftest import CONFIG_DIR, ROOT, TINY, compose_train


def test_defaults_match_the_paper():
    cfg = compose_train()
    assert cfg.lr == 0.02 and cfg.optim.lr == 0.02 and cfg.optim.name == "sgd"
    assert cfg.model.depth == 3 and cfg.epochs == 20
    assert cfg.bound.radius == 0.4 and cfg.bound.eval_every == 2
    assert cfg.data.source == "embedded" and list(cfg.data.digits) == [0, 4]
    validate(cfg)


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("lr=0.001", "optim.lr", 0.001),
        ("depth=2", "model.depth", 2),
        ("width=64", "model.width", 64),
        ("seed=7", "seed", 7),
        ("seeds=10", "seeds", 10),
        ("optim=adam", "optim.name", "adam"),
        ("bound=sandwich", "bound.methods", ["paper", "tight", "sampled", "exact"]),
        ("data.source=tfds", "data.source", "tfds"),
        ("data.scale=255", "data.scale", 255.0),
        ("bound.radius=0.2", "bound.radius", 0.2),
    ],
)
def test_every_group_and_alias_override(override, key, value):
    cfg = compose_train([override])
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert (list(node) if key == "bound.methods" else node) == value


def test_unknown_key_and_wrong_type_are_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_train(["no_such_key=1"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_train(["depth=three"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("depth=0", "depth"),
        ("lr=-1", "learning rate"),
        ("bound.radius=0", "bound.radius"),
        ("bound.radius=-0.4", "bound.radius"),
        ("data.source=cifar", "data.source"),
        ("data.source=idx", "data.dir"),
        ("bound.methods=[tight]", "bound.methods"),
        ("bound.radius=inf", "bound.radius=inf"),
        ("lr=inf", "lr=inf"),
        ("lr=nan", "lr=nan"),
        ("data.scale=inf", "data.scale=inf"),
        ("bound.r_max=nan", "bound.r_max=nan"),
        ("model.init_std=inf", "model.init_std=inf"),
        ("optim.momentum=-inf", "optim.momentum=-inf"),
        ("model.num_outputs=1", "model.num_outputs"),
        ("data.per_class=100000", "between 1 and 250"),
        ("data.n_random=0", "data.n_random"),
        ("logger=wandb", "logger"),
        ("seeds=0", "seeds=0"),
        ("seeds=-2", "seeds=-2"),
    ],
)
def test_bad_values_raise_config_error(override, match):
    cfg = compose_train([override])
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_missing_idx_dir_raises(tmp_path):
    cfg = compose_train(["data.source=idx", f"data.dir={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="no such directory"):
        validate(cfg)


@pytest.mark.parametrize(
    "override", ["model.depth=2", pytest.param("depth=0", marks=pytest.mark.slow), pytest.param("bound.radius=inf", marks=pytest.mark.slow)]
)
def test_script_fails_fast_with_one_clear_line(override, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), override, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "invalid config" in line]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_script_rejects_unknown_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "bogus=1", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "bogus" in proc.stderr


def test_test_dir_needs_embedded_source_and_an_existing_folder(tmp_path):
    cfg = compose_train(["data.source=tfds", f"data.test_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.test_dir"):
        validate(cfg)
    cfg = compose_train([f"data.test_dir={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError, match="no such directory"):
        validate(cfg)


def test_every_float_of_the_schema_is_checked_for_finiteness():
    keys = config_lib._float_keys(TrainConfig)
    assert {"lr", "optim.lr", "data.scale", "bound.radius", "bound.r_max", "model.init_std", "optim.momentum"} <= set(keys)
    for key in keys:
        if key == "optim.lr":
            continue  # set through its alias (checked as lr)
        cfg = compose_train([f"{key}=inf"])
        with pytest.raises(ConfigError, match=f"{key}=inf"):
            validate(cfg)


def test_every_default_lives_in_the_schema_once():
    """The composed config with no override is the schema itself, and no YAML group file repeats a default."""
    composed = OmegaConf.to_container(compose_train(), resolve=False)
    assert composed == OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False)
    schema = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False)
    for path in sorted(CONFIG_DIR.glob("*/*.yaml")):
        group = path.parent.name
        if group not in schema:
            continue  # hydra/..., experiment/: not groups of the schema
        body = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
        for key, value in body.items():
            assert key in schema[group], f"{path}: unknown key {key}"
            assert value != schema[group][key], f"{path}: {key}={value!r} repeats the schema's default"


@pytest.mark.parametrize("override, alias", [("optim.lr=0.5", "lr"), ("model.depth=2", "depth"), ("model.width=64", "width")])
def test_group_value_disagreeing_with_its_alias_is_refused(override, alias):
    with pytest.raises(ConfigError, match=f"disagrees with {alias}="):
        validate(compose_train([override]))


def test_group_value_agreeing_with_its_alias_passes():
    validate(compose_train(["optim.lr=0.02", "model.depth=3"]))


def test_experiment_figure3_composes_without_plus():
    cfg = compose_train(["experiment=figure3"])
    assert cfg.plot is False
    validate(cfg)


def test_seeds_default_lives_in_the_schema_and_figure3_stacks_thirty():
    assert TrainConfig().seeds == 1 and compose_train().seeds == 1
    raw = yaml.safe_load((CONFIG_DIR / "experiment" / "figure3.yaml").read_text())
    # 2 lr x 2 depths, each job the 30 seeds 0..29 trained together (the report's sweeps).
    assert raw["seeds"] == 30 and set(raw["hydra"]["sweeper"]["params"]) == {"lr", "depth"}
    assert compose_train(["experiment=figure3"]).seeds == 30
    assert compose_train(["experiment=robustness"]).seeds == 30  # inherited from figure3


def test_per_class_limit_follows_the_source(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"")  # present; not read by validation
    validate(compose_train(["data.per_class=250"]))
    with pytest.raises(ConfigError, match="between 1 and 250"):
        validate(compose_train(["data.per_class=251"]))
    # With the official test split, train holds 500 per class and the test split 980 zeros, 982 fours.
    validate(compose_train([f"data.test_dir={tmp_path}", "data.per_class=500"]))
    with pytest.raises(ConfigError, match="between 1 and 500"):
        validate(compose_train([f"data.test_dir={tmp_path}", "data.per_class=501"]))
    validate(compose_train(["data.source=tfds", "data.per_class=980"]))
    with pytest.raises(ConfigError, match="between 1 and 980"):
        validate(compose_train(["data.source=tfds", "data.per_class=981"]))


def test_invalid_values_are_refused_before_any_data_is_loaded(monkeypatch, tmp_path):
    from lr_jax.experiment import train

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before validation")

    monkeypatch.setattr(train, "load_categories", no_loading)
    for override in ("bound.radius=inf", "lr=inf", "model.num_outputs=1", "data.per_class=100000", "data.n_random=0", "optim.lr=0.5"):
        with pytest.raises(ConfigError):
            train.train_and_evaluate(compose_train(TINY + [override]), tmp_path / "run")
        assert not (tmp_path / "run" / "status.json").exists()


def test_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    cfg = compose_train(["data.test_dir=mnist"])
    config_lib.resolve_paths(cfg)
    assert cfg.data.test_dir == str(tmp_path / "mnist")


def test_resume_diff_ignores_output_only_settings():
    a = OmegaConf.to_container(compose_train(TINY), resolve=True)
    b = OmegaConf.to_container(compose_train(TINY + ["plot=false", "logger=tensorboard", "resume=true"]), resolve=True)
    assert config_lib.computation_diff(a, b) == []
    c = OmegaConf.to_container(compose_train(TINY + ["lr=0.5", "data.scale=32"]), resolve=True)
    assert config_lib.computation_diff(a, c) == ["data.scale", "lr", "optim.lr"]


def test_help_is_written_help():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "Aliases" in proc.stdout and "Examples:" in proc.stdout and "bound_cli" not in proc.stdout
    assert proc.stdout.count("python scripts/train.py") == 3


def test_empty_test_dir_asks_only_for_the_test_split(tmp_path):
    with pytest.raises(ConfigError, match="lacks t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte") as err:
        validate(compose_train([f"data.test_dir={tmp_path}"]))
    assert "train-images" not in str(err.value)


def test_every_robustness_setting_composes_changes_one_choice_and_is_swept():
    base = OmegaConf.to_container(compose_train(["experiment=figure3"]), resolve=True)
    expected = {
        "scale16": ("data.scale", 16), "scale32": ("data.scale", 32), "width16": ("width", 16), "width64": ("width", 64),
        "batch128": ("optim.batch_size", 128), "he_init": ("model.init", "he"), "epochs60": ("epochs", 60),
    }
    options = sorted(p.stem for p in (CONFIG_DIR / "robustness").glob("*.yaml"))
    assert options == sorted([*expected, "default"])
    for name in options:
        cfg = compose_train(["experiment=robustness", f"robustness={name}"])
        validate(cfg)
        flat = OmegaConf.to_container(cfg, resolve=True)
        changed = {k for k in config_lib.flat_keys(flat) if _get(flat, k) != _get(base, k)}
        if name == "default":
            assert changed == set(), changed
        else:
            key, value = expected[name]
            # The alias and the group key it feeds change together (width -> model.width).
            assert changed - {"model.width"} == {key} and _get(flat, key) == value, changed
    swept = compose_train(["experiment=robustness"], return_hydra=True).hydra.sweeper.params.robustness
    assert sorted(swept.split(",")) == options


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


def test_he_initialisation_doubles_the_kernel_variance():
    import jax
    import numpy as np

    from lr_jax.experiment.models import MLP, init_mlp

    variances = {}
    for init in ("lecun", "he"):
        params = init_mlp(MLP(depth=2, width=256, init_name=init), jax.random.PRNGKey(0), 36)
        variances[init] = float(np.var(np.asarray(params["hidden_1"]["kernel"])) * 256)  # fan_in = 256
    # 65,536 draws: the sample variance has a standard error of 0.55 %; 2.5 % is 4.5 of them.
    assert variances["lecun"] == pytest.approx(1.0, rel=0.025) and variances["he"] == pytest.approx(2.0, rel=0.025)
    with pytest.raises(ConfigError, match="model.init"):
        validate(compose_train(["model.init=xavier"]))


# ---------------------------------------------------------------------------
# The command line, checked before Hydra runs (issue 18, item 5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["+foo=1"], "invalid config +foo=1: unknown key foo;"),
        (["foo=1"], "invalid config foo=1: unknown key foo;"),
        (["lrr=0.1"], "invalid config lrr=0.1: unknown key lrr; did you mean lr=0.1?"),
        (["data.scal=3"], "did you mean data.scale=3?"),
        (["+lr=0.1"], "lr already exists; set it without '+'"),
        (["lr=abc"], "invalid config lr=abc: Value 'abc'"),
        (["depth=1.5"], "invalid config depth=1.5: Value '1.5'"),
        (["seeds=2.5"], "invalid config seeds=2.5: Value '2.5'"),
        (["lr=0.1", "epochs=x"], "invalid config epochs=x: Value 'x'"),
        (["optim=sgdd"], "did you mean optim=sgd?"),
        (["lr=[1"], "invalid config lr=[1: cannot parse it"),
    ],
)
def test_bad_command_line_is_one_line(args, message):
    with pytest.raises(ConfigError) as err:
        config_lib.check_command_line(args, CONFIG_DIR, "train")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_command_line_passes():
    config_lib.check_command_line(["lr=0.1", "optim=adam", "bound.methods=[paper,tight]", "hydra.run.dir=/x", "--multirun"], CONFIG_DIR, "train")
    config_lib.check_command_line(["lr=0.1,0.2", "robustness=scale16", "data.per_class=null"], CONFIG_DIR, "train")


def test_batch_size_above_the_data_is_refused():
    validate(compose_train(["data.per_class=10", "optim.batch_size=20"]))
    with pytest.raises(ConfigError, match=r"optim.batch_size=21.*above the 20 training points"):
        validate(compose_train(["data.per_class=10", "optim.batch_size=21"]))


@pytest.mark.parametrize("args", [["+foo=1"], pytest.param(["lr=abc"], marks=pytest.mark.slow), ["depth=0"]])
def test_refused_script_run_exits_2_in_one_line_and_leaves_no_folder(args, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and f"invalid config {args[0]}" in lines[0], lines
    assert not (tmp_path / "run").exists()
