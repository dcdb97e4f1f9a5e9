"""scripts/bound.py end to end on a tiny training run saved in tmp_path."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from lr_jax.experiment.config import BoundScriptConfig, ConfigError, parse_bound_job
from lr_jax.experiment.saved_runs import CSV_COLUMNS
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "bound.py"
COLUMNS = list(CSV_COLUMNS)
SIZES = {"train": 20, "test": 20, "random1": 12, "random2": 12}  # TINY: per_class=10, n_random=12
RADII = [0.1, 0.2, 0.4, 0.8]


def _bound(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _column(rows, category, radius, field, dtype=float):
    return np.array([dtype(r[field]) for r in rows if r["category"] == category and float(r["radius"]) == radius])


def test_all_categories_reproduce_the_runs_bounds(tiny_run):
    # By default the single-region search is the run's own (bound.r_max, num_grid, num_bisect).
    proc = _bound(f"checkpoint={tiny_run / 'checkpoints'}", f"radii=[{','.join(map(str, RADII))}]", "category=all")
    assert proc.returncode == 0, proc.stderr
    out = tiny_run / "bounds_4.csv"  # default: the run folder, latest epoch
    header, rows = _read(out)
    assert header == COLUMNS
    assert not list(tiny_run.glob("*.tmp"))
    assert len(rows) == sum(SIZES.values()) * len(RADII)
    for c, n in SIZES.items():
        for r in RADII:
            idx = _column(rows, c, r, "point_index", int)
            np.testing.assert_array_equal(idx, np.arange(n))
        labels = _column(rows, c, 0.4, "label", int)
        assert set(labels) <= ({-1} if c.startswith("random") else {0, 1})
    # C is monotone in the radius, and log2_bound = C for Algorithm 1.
    cs = np.stack([_column(rows, "test", r, "num_unstable", int) for r in RADII], axis=1)
    assert np.all(np.diff(cs, axis=1) >= 0) and cs[:, -1].max() > 0
    np.testing.assert_array_equal(_column(rows, "test", 0.8, "log2_bound"), cs[:, -1])
    with np.load(tiny_run / "bounds.npz") as z:
        for c in SIZES:
            np.testing.assert_array_equal(_column(rows, c, 0.4, "num_unstable", int), z[c][-1])
            # The same points in the same single batch as during training: identical radii.
            np.testing.assert_array_equal(
                _column(rows, c, 0.1, "single_region_radius", np.float32), z[f"{c}_single_region_radius"][-1]
            )
    summary = [line.split() for line in proc.stdout.splitlines() if line.startswith("train ")]
    assert [s[:3] for s in summary] == [["train", f"{r:g}", "20"] for r in RADII]


def test_one_category_earlier_epoch_and_out_path(tiny_run, tmp_path):
    from lr_jax.experiment.saved_runs import evaluate_run

    out = tmp_path / "sub" / "table.csv"
    job = _job(checkpoint=str(tiny_run), radii=[0.4], category="test", epoch=2, out=str(out), chunk_size=7)
    result = evaluate_run(job)
    assert result.epoch == 2 and result.out == out
    table = result.table
    assert set(table.category) == {"test"} and table.num_unstable.shape == (SIZES["test"], 1)
    with np.load(tiny_run / "bounds.npz") as z:
        assert list(z["epochs"]) == [0, 2, 4]
        np.testing.assert_array_equal(table.num_unstable[:, 0], z["test"][1])
        np.testing.assert_array_equal(table.single_region_radius, z["test_single_region_radius"][1])


def _job(**settings):
    return parse_bound_job(OmegaConf.merge(OmegaConf.structured(BoundScriptConfig), settings))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"checkpoint": "{missing}"}, "no such folder"),
        ({"checkpoint": "{run}", "category": "validation"}, "category=validation: unknown"),
        ({"checkpoint": "{run}", "radii": [0.1, -0.2]}, "-0.2 is negative"),
        ({"checkpoint": "{run}", "r_max": float("inf")}, "r_max=inf"),
        ({"checkpoint": "{run}", "methods": ["tight"]}, "methods="),
        ({"checkpoint": "{run}", "num_grid": 0}, "num_grid=0"),
        ({"radii": [0.4]}, "checkpoint=PATH is required"),
    ],
)
def test_bad_settings_are_refused_in_one_line(tiny_run, tmp_path, settings, message):
    settings = {k: v.format(missing=tmp_path / "nope", run=tiny_run) if isinstance(v, str) else v for k, v in settings.items()}
    with pytest.raises(ConfigError, match=message) as err:
        _job(**settings)
    assert "\n" not in str(err.value)


def test_defaults_take_the_runs_own_search(tiny_run):
    job = _job(checkpoint=str(tiny_run / "checkpoints"))
    assert job.run_dir == tiny_run and job.r_max is None and job.num_grid is None and job.categories[0] == "train"


def test_script_exits_2_with_one_line(tiny_run, tmp_path):
    out = tmp_path / "never.csv"
    proc = _bound(f"checkpoint={tiny_run}", "epoch=3", f"out={out}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bound.py: error: "), proc.stderr
    assert re.search(r"saved epochs are \[0, 2, 4\]", lines[0])
    assert not out.exists()


@pytest.mark.slow
def test_tight_column(tiny_run, tmp_path):
    out = tmp_path / "tight.csv"
    proc = _bound(f"checkpoint={tiny_run}", "radii=[0.4]", "category=train", "methods=[paper,tight]", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, rows = _read(out)
    assert header == COLUMNS + ["tight_log2_bound"]
    assert rows and {r["category"] for r in rows} == {"train"}
    assert all(float(r["tight_log2_bound"]) <= float(r["log2_bound"]) + 1e-6 for r in rows)


def test_run_from_before_config_yaml_is_rebuilt_as_trained(tiny_run, tmp_path):
    import shutil

    import yaml

    from lr_jax.experiment.experiment import load_run, run_points

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["data"]["per_class"] = 500  # the old default: the embedded halves gave 250 per class
    (old / ".hydra").mkdir()
    (old / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (old / "config.yaml").unlink()
    run = load_run(old)
    _, (names, _, label) = run_points(run, ("train",))
    assert run.epoch == 4 and names.size == 500 and np.bincount(label).tolist() == [250, 250]


def _without_key(tiny_run, tmp_path, section, key):
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg[section][key]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def test_config_missing_keys_is_named_in_one_line(tiny_run, tmp_path):
    from lr_jax.experiment.experiment import load_run
    from lr_jax.experiment.run_files import RunFileError

    run = _without_key(tiny_run, tmp_path, "data", "pooling")
    with pytest.raises(RunFileError, match=rf"^{run / 'config.yaml'}: config is damaged \(keys missing: data.pooling\); "):
        load_run(run)


@pytest.mark.slow
def test_script_on_config_missing_keys_exits_2_with_one_line(tiny_run, tmp_path):
    run = _without_key(tiny_run, tmp_path, "bound", "r_max")
    proc = _bound(f"checkpoint={run}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{run / 'config.yaml'}: config is damaged (keys missing: bound.r_max)" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [(["chekpoint=/x"], "unknown key chekpoint; did you mean checkpoint=/x?"), (["epoch=abc"], "invalid config epoch=abc: Value 'abc'")],
)
def test_bad_command_line_is_one_line(args, message):
    from lr_jax.experiment.config import check_command_line

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_command_line(args, ROOT / "configs", "bound")
