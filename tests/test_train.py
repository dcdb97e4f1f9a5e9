"""End-to-end runs of the training loop on a tiny config, in tmp_path."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from lr_jax import layers_from_flax, local_bounds
from lr_jax.experiment.config import ConfigError
from lr_jax.experiment.experiment import CATEGORIES, load_categories, load_run, run_keys
from lr_jax.experiment.run_files import read_metrics
from lr_jax.experiment.train import train_and_evaluate
from tests.conftest import TINY, compose_train

REQUIRED_FIELDS = {
    "epoch",
    "category",
    "radius",
    "mean_bound",
    "mean_log2_bound",
    "median_log2_bound",
    "num_single_region",
    "mean_single_region_radius",
    "n_points",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "diverged",
}


def test_run_leaves_the_contract_files(tiny_run):
    workdir = tiny_run
    assert json.loads((workdir / "status.json").read_text())["status"] == "complete"
    rows = read_metrics(workdir / "metrics.jsonl")
    assert {(r["epoch"], r["category"]) for r in rows} == {(e, c) for e in (0, 2, 4) for c in CATEGORIES}
    for r in rows:
        assert REQUIRED_FIELDS <= set(r)
        assert r["radius"] == 0.4
        assert 0 <= r["num_single_region"] <= r["n_points"]
        assert r["mean_bound"] >= 2 ** r["mean_log2_bound"] - 1e-9  # Jensen: mean 2^C >= 2^mean C
    counts = {r["category"]: r["n_points"] for r in rows if r["epoch"] == 0}
    assert counts == {"train": 20, "test": 20, "random1": 12, "random2": 12}
    with np.load(workdir / "bounds.npz") as z:
        np.testing.assert_array_equal(z["epochs"], [0, 2, 4])
        for c in CATEGORIES:
            assert z[c].shape == (3, counts[c])
            assert z[f"{c}_single_region_radius"].shape == (3, counts[c])
            # The summary rows are computed from exactly these per-point values.
            for i, e in enumerate((0, 2, 4)):
                row = next(r for r in rows if r["epoch"] == e and r["category"] == c)
                assert row["mean_log2_bound"] == pytest.approx(z[c][i].mean())
                assert row["num_single_region"] == int((z[c][i] == 0).sum())
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "2", "4"]
    assert (workdir / "trajectories.png").stat().st_size > 10_000
    data = json.loads((workdir / "data.json").read_text())
    assert data["source"] == "embedded" and "disjoint halves" in data["note"]
    assert len(data["train_index"]) == 20 and len(data["test_index"]) == 20
    assert len(data["fingerprint"]) == 64
    assert not (workdir / "run.lock").exists()
    assert all(r["diverged"] is False for r in rows)


def test_checkpoint_reproduces_the_logged_bounds(tiny_run):
    workdir = tiny_run
    run = load_run(workdir)
    assert run.epoch == 4 and run.config.width == 8
    cats, _ = load_categories(run.config.data, run_keys(run.config.seed).data)
    c = local_bounds(layers_from_flax(run.params), cats.train_x, [0.4]).log2_bound[:, 0]
    with np.load(workdir / "bounds.npz") as z:
        np.testing.assert_array_equal(np.asarray(c), z["train"][-1])


def test_same_seed_same_metrics(tiny_run, tmp_path):
    rows = train_and_evaluate(compose_train(TINY), tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == (tiny_run / "metrics.jsonl").read_text()
    assert read_metrics(tmp_path / "metrics.jsonl") == rows


def test_existing_run_is_not_overwritten_and_resume_needs_a_run(tiny_run, tmp_path):
    workdir = tiny_run
    with pytest.raises(ConfigError, match="already holds a complete run"):
        train_and_evaluate(compose_train(TINY), workdir)
    with pytest.raises(ConfigError, match="already complete"):
        train_and_evaluate(compose_train(TINY + ["resume=true"]), workdir)
    with pytest.raises(ConfigError, match="no run to resume"):
        train_and_evaluate(compose_train(TINY + ["resume=true"]), tmp_path / "empty")


def test_malformed_idx_fails_before_training(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="ubyte"):
        train_and_evaluate(compose_train(TINY + ["data.source=idx", f"data.dir={tmp_path}"]), run)
    assert not (run / "metrics.jsonl").exists()


@pytest.mark.slow
def test_logged_exact_counts_are_those_of_the_checkpoints_and_sandwiched(tmp_path):
    # A subset of 5 of each category's points, counted at every evaluation: the logged counts must be
    # count_regions on the restored checkpoint of that epoch, on the points exact_subsets draws from the
    # run's key, and sampled <= exact <= 2^tight <= 2^C must hold on every logged point.
    from lr_jax import count_regions
    from lr_jax.experiment.experiment import category_points, exact_subsets

    overrides = TINY + ["bound=sandwich", "bound.exact_points=5", "bound.num_samples=64", "bound.num_chords=4", "epochs=2"]
    rows = train_and_evaluate(compose_train(overrides), tmp_path)
    keys = run_keys(0)
    cats, _ = load_categories(compose_train(overrides).data, keys.data)
    points = category_points(cats)
    subsets = exact_subsets(keys.bounds, {c: x.shape[0] for c, x in points.items()}, 5)
    # Drawn at random, not the first points; every category gets its own subset.
    assert any(not np.array_equal(idx, np.arange(5)) for idx in subsets.values())
    with np.load(tmp_path / "bounds.npz") as z:
        for i, epoch in enumerate(z["epochs"]):
            layers = layers_from_flax(load_run(tmp_path, int(epoch)).params)
            for c in CATEGORIES:
                idx = z[f"{c}_exact_index"][i]
                np.testing.assert_array_equal(idx, subsets[c])
                exact = z[f"{c}_exact_count"][i]
                expected = [count_regions(layers, np.asarray(points[c][j]), 0.4, max_regions=20000).count for j in idx]
                np.testing.assert_array_equal(exact, expected)
                paper, tight, sampled = z[c][i][idx], z[f"{c}_tight_log2_bound"][i][idx], z[f"{c}_sampled_count"][i][idx]
                assert (sampled <= exact).all() and (exact <= np.exp2(tight) * (1 + 1e-6)).all()
                assert (tight <= paper + 1e-6).all()
                row = next(r for r in rows if r["epoch"] == epoch and r["category"] == c)
                assert row["exact_sandwich_violations"] == 0 and row["exact_complete"] and row["exact_n_points"] == 5
                assert row["exact_mean_count"] == pytest.approx(exact.mean())
                assert row["exact_num_single_region"] == int((exact == 1).sum())
                assert row["exact_subset_mean_bound"] == pytest.approx(np.exp2(paper.astype(np.float64)).mean())
                assert row["exact_subset_tight_mean_log2_bound"] == pytest.approx(tight.mean())
                assert {"tight_mean_log2_bound", "sampled_mean_count"} <= set(row)


def test_exact_subsets_are_fixed_per_key_and_without_repeats():
    from lr_jax.experiment.experiment import exact_subsets

    sizes = {"train": 30, "test": 30, "random1": 4}
    a = exact_subsets(run_keys(0).bounds, sizes, 10)
    b = exact_subsets(run_keys(0).bounds, sizes, 10)
    c = exact_subsets(run_keys(1).bounds, sizes, 10)
    for name, n in sizes.items():
        np.testing.assert_array_equal(a[name], b[name])
        assert len(set(a[name].tolist())) == min(10, n) and a[name].max() < n
        assert (np.diff(a[name]) > 0).all()
    assert not np.array_equal(a["train"], a["test"])  # each category its own draw
    assert not np.array_equal(a["train"], c["train"])  # each seed its own draw
    np.testing.assert_array_equal(a["random1"], np.arange(4))  # k above n: every point


def test_real_test_split_replaces_the_embedded_half(tmp_path):
    from tests.conftest import SHARED_MNIST

    if not SHARED_MNIST.is_dir():
        pytest.skip(f"MNIST test split not found in {SHARED_MNIST}")
    from lr_jax.experiment.datasets import make_categories
    from lr_jax.experiment.mnist_io import load_mnist

    splits = load_mnist("embedded", test_dir=SHARED_MNIST)
    assert splits.train_images.shape == (5000, 28, 28) and splits.test_images.shape == (10000, 28, 28)
    assert "official MNIST test split" in splits.note
    import jax

    cats = make_categories(splits, key=jax.random.PRNGKey(0), per_class=500)
    assert cats.per_class_used == {"train": (500, 500), "test": (500, 500)}
    assert cats.train_x.shape == (1000, 36) and cats.test_x.shape == (1000, 36)
    assert np.bincount(np.asarray(splits.test_labels)[cats.test_index], minlength=10)[[0, 4]].tolist() == [500, 500]


def test_diverged_run_is_failed_strict_json_and_not_resumable(tmp_path, monkeypatch):
    from lr_jax.experiment import train
    from lr_jax.experiment.train import TrainingDiverged

    make_epoch_fn = train.make_epoch_fn

    def nan_from_epoch_3(*args):
        epoch_fn = make_epoch_fn(*args)

        def run(state, x, y, key):
            state, loss = epoch_fn(state, x, y, key)
            return state, loss * np.nan if int(state.step) >= 3 * (20 // 8) else loss

        return run

    monkeypatch.setattr(train, "make_epoch_fn", nan_from_epoch_3)
    with pytest.raises(TrainingDiverged, match="diverged at epoch 3"):
        train_and_evaluate(compose_train(TINY), tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "diverged" in status["reason"]
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    with pytest.raises(ConfigError, match="diverged"):
        train_and_evaluate(compose_train(TINY + ["resume=true"]), tmp_path)


def test_library_imports_without_the_experiment():
    import subprocess
    import sys

    code = "import sys, lr_jax; bad = [m for m in sys.modules if m.startswith('lr_jax.experiment') or m in ('hydra', 'orbax', 'matplotlib')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
