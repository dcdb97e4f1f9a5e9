"""Seeds trained together (``seeds=K``): each seed is the separate run of that seed, stacked.

The stack must start exactly where the K separate runs start (params,
optimizer state, points, batch order: bit for bit), train to the same params
up to floating-point reassociation (:data:`PARAMS_ATOL`), and keep the run
lifecycle of a single run (resume byte-identical to an uninterrupted run).
"""

from __future__ import annotations

import json
import signal

import jax
import numpy as np
import pytest

from lr_jax.experiment import checkpoints
from lr_jax.experiment.experiment import CATEGORIES, category_points, load_run, run_keys, seed_runs, unstack_tree
from lr_jax.experiment.run_files import read_metrics
from lr_jax.experiment.train import _single_start, _stacked_start, batch_order, make_epoch_fn, train_and_evaluate
from tests.conftest import TINY, compose_train

SEEDS = (0, 1, 2)
STACKED = TINY + ["seeds=2", "plot=true"]
# Largest |param difference| allowed between a seed trained alone and inside the stack after a few
# epochs. Only floating-point reassociation separates them (the batched matmuls of vmap sum in
# another order): measured differences are ~1e-7 on this CPU; a wrong batch or init is O(1e-2) or more.
PARAMS_ATOL = 1e-5


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def starts():
    cfg = compose_train(TINY + [f"seeds={len(SEEDS)}"])
    stacked = _stacked_start(cfg, SEEDS)
    single = [_single_start(cfg, (s,)) for s in SEEDS]
    return cfg, stacked, single


def test_stack_starts_exactly_where_the_separate_runs_start(starts):
    _, (keys, cats, state, record), single = starts
    for i, (s_keys, s_cats, s_state, s_record) in enumerate(single):
        assert _leaves_equal(jax.tree.map(lambda a: a[i], keys), s_keys)
        assert _leaves_equal(jax.tree.map(lambda a: a[i], state.params), s_state.params)
        assert _leaves_equal(jax.tree.map(lambda a: a[i], state.opt_state), s_state.opt_state)
        assert int(state.step[i]) == int(s_state.step) == 0
        for name, x in category_points(s_cats).items():  # each seed keeps the points of its own separate run
            np.testing.assert_array_equal(np.asarray(category_points(cats)[name][i]), np.asarray(x))
        assert record["per_seed"][i]["fingerprint"] == s_record["fingerprint"]
    # Different seeds really differ (the comparison above could not pass by everything being equal).
    assert not np.array_equal(np.asarray(state.params["hidden_0"]["kernel"][0]), np.asarray(state.params["hidden_0"]["kernel"][1]))


@pytest.mark.parametrize("epoch", [1, 2, 5])
def test_batch_order_per_seed_is_that_of_its_separate_run(starts, epoch):
    cfg, (keys, cats, _, _), _ = starts
    n, bs = cats.train_x.shape[1], cfg.optim.batch_size
    epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys.train, epoch)
    stacked = np.asarray(jax.vmap(lambda k: batch_order(k, n, bs))(epoch_keys))
    for i, s in enumerate(SEEDS):
        alone = np.asarray(batch_order(jax.random.fold_in(run_keys(s).train, epoch), n, bs))
        np.testing.assert_array_equal(stacked[i], alone)
    assert not np.array_equal(stacked[0], stacked[1])


def test_params_after_a_few_epochs_agree_within_reassociation(starts):
    cfg, (keys, cats, state, _), single = starts
    n, bs = cats.train_x.shape[1], cfg.optim.batch_size
    stacked_epoch, single_epoch = make_epoch_fn(n, bs, True), make_epoch_fn(n, bs)
    alone = [s_state for _, _, s_state, _ in single]
    for epoch in (1, 2, 3):
        state, _ = stacked_epoch(state, cats.train_x, cats.train_y, jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys.train, epoch))
        alone = [
            single_epoch(st, c.train_x, c.train_y, jax.random.fold_in(k.train, epoch))[0]
            for st, (k, c, _, _) in zip(alone, single)
        ]
    for i, st in enumerate(alone):
        assert int(state.step[i]) == int(st.step) == 3 * (n // bs)
        moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(single[i][2].params)))
        assert moved > 100 * PARAMS_ATOL  # training moved the params far more than the tolerance
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], state.params)), jax.tree.leaves(st.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAMS_ATOL)


@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory):
    """An uninterrupted TINY run of seeds 0 and 1 trained together."""
    workdir = tmp_path_factory.mktemp("stacked_run")
    train_and_evaluate(compose_train(STACKED), workdir)
    return workdir


def test_stacked_run_files_hold_every_seed(stacked_run, tiny_run):
    assert json.loads((stacked_run / "status.json").read_text())["status"] == "complete"
    rows = read_metrics(stacked_run / "metrics.jsonl")
    assert sorted((r["epoch"], r["seed"], r["category"]) for r in rows) == sorted(
        (e, s, c) for e in (0, 2, 4) for s in (0, 1) for c in CATEGORIES
    )
    alone = {(r["epoch"], r["category"]): r for r in read_metrics(tiny_run / "metrics.jsonl")}  # seed 0 trained alone
    with np.load(stacked_run / "bounds.npz") as z, np.load(tiny_run / "bounds.npz") as a:
        assert z["seeds"].tolist() == [0, 1] and z["epochs"].tolist() == [0, 2, 4]
        for c in CATEGORIES:
            assert z[c].shape == (2, 3, a[c].shape[1])
            # Epoch 0: identical params and points, so identical bounds.
            np.testing.assert_array_equal(z[c][0, 0], a[c][0])
            np.testing.assert_array_equal(z[f"{c}_single_region_radius"][0, 0], a[f"{c}_single_region_radius"][0])
            # Later epochs: the params differ by reassociation only; C may flip on a neuron at the edge.
            assert np.mean(z[c][0] == a[c]) >= 0.95
            for i, e in enumerate((0, 2, 4)):  # each seed's rows summarise its own slice
                row = next(r for r in rows if r["epoch"] == e and r["category"] == c and r["seed"] == 1)
                assert row["mean_log2_bound"] == pytest.approx(z[c][1, i].mean())
    for r in rows:
        if r["seed"] == 0:
            assert r["train_loss"] == pytest.approx(alone[(r["epoch"], r["category"])]["train_loss"], abs=1e-5)
            assert r["n_points"] == alone[(r["epoch"], r["category"])]["n_points"]
    data = json.loads((stacked_run / "data.json").read_text())
    assert data["seeds"] == [0, 1] and data["per_seed"][0]["fingerprint"] == json.loads((tiny_run / "data.json").read_text())["fingerprint"]
    assert (stacked_run / "trajectories.png").stat().st_size > 10_000


def test_stacked_checkpoint_is_every_seed(stacked_run, tiny_run):
    saved = load_run(stacked_run)
    per_seed = seed_runs(saved)
    assert [r.config.seed for r in per_seed] == [0, 1] and all(r.config.seeds == 1 for r in per_seed)
    alone = load_run(tiny_run)
    for a, b in zip(jax.tree.leaves(per_seed[0].params), jax.tree.leaves(alone.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=PARAMS_ATOL)
    assert not _leaves_equal(per_seed[0].params, per_seed[1].params)
    assert len(unstack_tree(saved.params, 2)) == 2 and checkpoints.saved_epochs(stacked_run) == [0, 2, 4]


def test_bound_script_reads_a_stacked_run_as_its_seeds(stacked_run, tmp_path):
    from omegaconf import OmegaConf

    from lr_jax.experiment.config import BoundScriptConfig, parse_bound_job
    from lr_jax.experiment.saved_runs import evaluate_run, write_csv

    job = parse_bound_job(OmegaConf.merge(OmegaConf.structured(BoundScriptConfig), {"checkpoint": str(stacked_run), "radii": [0.4]}))
    table = evaluate_run(job).table
    with np.load(stacked_run / "bounds.npz") as z:
        for i, s in enumerate((0, 1)):
            for c in CATEGORIES:
                sel = (table.seed == s) & (table.category == c)
                np.testing.assert_array_equal(table.num_unstable[sel, 0], z[c][i, -1])
                np.testing.assert_allclose(table.single_region_radius[sel], z[f"{c}_single_region_radius"][i, -1], rtol=1e-5)
    out = tmp_path / "t.csv"
    write_csv(out, table, [0.4])
    assert out.read_text().splitlines()[0].startswith("seed,point_index,category")


def test_seeds_1_is_a_single_run(tiny_run, tmp_path):
    # seeds=1 spelled out: the files of a single run, byte for byte (no seed field, no seed axis).
    train_and_evaluate(compose_train(TINY + ["seeds=1"]), tmp_path)
    for name in ("metrics.jsonl", "bounds.npz", "data.json"):
        assert (tmp_path / name).read_bytes() == (tiny_run / name).read_bytes(), name
    assert all("seed" not in r for r in read_metrics(tmp_path / "metrics.jsonl"))
    with np.load(tmp_path / "bounds.npz") as z:
        assert "seeds" not in z and z["train"].ndim == 2


@pytest.mark.slow
@pytest.mark.parametrize("fault", [("after_checkpoint", 2, "SIGKILL"), ("in_epoch", 3, "SIGKILL")], ids=lambda f: f"{f[0]}-{f[1]}")
def test_killed_stacked_run_resumes_to_identical_files(tmp_path, stacked_run, fault):
    from tests.test_run_lifecycle import CONTRACT, _status, _train_script

    run_dir = tmp_path / "run"
    proc = _train_script(run_dir, "seeds=2", fault=fault)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _status(run_dir)["status"] == "running"
    train_and_evaluate(compose_train(STACKED + ["resume=true"]), run_dir)
    for name in CONTRACT:
        assert (run_dir / name).read_bytes() == (stacked_run / name).read_bytes(), name


@pytest.mark.slow
def test_every_bound_method_of_a_stacked_seed_is_that_of_its_separate_run(tmp_path):
    # Epoch 0: each seed's params and points are those of its separate run, so the tight bound, the
    # sampled count (vmapped keys) and the exact count (host loop over seeds) must be identical.
    methods = TINY + ["bound=sandwich", "bound.exact_points=3", "bound.num_samples=64", "bound.num_chords=4", "epochs=2", "plot=false"]
    train_and_evaluate(compose_train(methods + ["seeds=2"]), tmp_path / "stack")
    train_and_evaluate(compose_train(methods + ["seed=1"]), tmp_path / "alone")
    with np.load(tmp_path / "stack" / "bounds.npz") as z, np.load(tmp_path / "alone" / "bounds.npz") as a:
        for c in CATEGORIES:
            for field in ("tight_log2_bound", "sampled_count", "exact_count", "exact_index"):
                np.testing.assert_array_equal(z[f"{c}_{field}"][1, 0], a[f"{c}_{field}"][0])
    rows = [r for r in read_metrics(tmp_path / "stack" / "metrics.jsonl") if r["seed"] == 1 and r["epoch"] == 0]
    alone = read_metrics(tmp_path / "alone" / "metrics.jsonl")
    for r in rows:
        a = next(x for x in alone if x["epoch"] == 0 and x["category"] == r["category"])
        # Bound summaries identical; the losses are a mean computed inside the vmapped program (reassociation).
        losses = ("train_loss", "test_loss")
        assert {k: v for k, v in r.items() if k not in ("seed", *losses)} == {k: v for k, v in a.items() if k not in losses}
        assert [r[k] for k in losses] == pytest.approx([a[k] for k in losses], abs=1e-5)
