"""The grokking study: schedule, training steps, boundary points, an end-to-end tiny run, resume, report."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import compose_train
from lr_jax.experiment import grokking
from lr_jax.experiment.config import ConfigError
from lr_jax.experiment.train import train_and_evaluate

# Small enough for a test: 20 digits, 2 points per category, a 2x8 net, 12 steps, 2 seeds.
TINY_GROK = [
    "experiment=grokking",
    "grokking.steps=12",
    "grokking.num_evals=3",
    "grokking.chunk_steps=5",
    "grokking.n_train=20",
    "optim.batch_size=10",
    "grokking.n_points=2",
    "width=8",
    "depth=2",
    "seeds=2",
    "grokking.radii=[0.01,0.1]",
    "grokking.num_samples=8",
    "grokking.num_chords=2",
    "grokking.exact_points=1",
    "grokking.exact_max_seconds=30",
]
DETERMINISTIC = TINY_GROK + ["grokking.methods=[frame,paper,tight,sampled]"]  # the exact counter stops on time


def test_eval_steps_are_log_spaced_with_zero_and_the_end():
    assert grokking.eval_steps(100, 3) == [0, 1, 10, 100]
    assert grokking.eval_steps(1000, 4) == [0, 1, 10, 100, 1000]  # 10^0, 10^1, 10^2, 10^3 ... with 0 added
    steps = grokking.eval_steps(100000, 30)
    assert steps[0] == 0 and steps[-1] == 100000 and steps == sorted(set(steps))


def test_training_in_two_calls_equals_one(tmp_path):
    """Step t's batch depends on t alone: 0..7 in one call is 0..3 then 3..7, bit for bit (what resume relies on)."""
    cfg = compose_train(TINY_GROK)
    state = grokking.initial_states(cfg, [jax.random.PRNGKey(0), jax.random.PRNGKey(1)], 6)
    x = jax.random.uniform(jax.random.PRNGKey(2), (2, 20, 6))
    y = jax.random.randint(jax.random.PRNGKey(3), (2, 20), 0, 10)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    step = grokking.make_advance_fn(20, 10, "mse")
    once, _ = step(state, x, y, keys, 0, 7)
    first, _ = step(state, x, y, keys, 0, 3)
    twice, _ = step(first, x, y, keys, 3, 7)
    for a, b in zip(jax.tree.leaves(once.params), jax.tree.leaves(twice.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(once.step[0]) == 7


def test_alpha_scales_every_initial_parameter():
    one = grokking.initial_states(compose_train(TINY_GROK + ["grokking.alpha=1"]), [jax.random.PRNGKey(0)], 6)
    eight = grokking.initial_states(compose_train(TINY_GROK + ["grokking.alpha=8"]), [jax.random.PRNGKey(0)], 6)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
        np.testing.assert_allclose(8 * np.asarray(a), np.asarray(b), rtol=1e-6)


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, use_bias=False)(x)


def test_boundary_points_lie_where_the_two_logits_tie():
    """Two classes, logits W x: the boundary is the plane (w1 - w0) . x = 0, found by bisection on each segment."""
    model = _Linear()
    w = jnp.array([[0.0, 1.0], [1.5, 0.0], [0.0, 0.0]])  # logit0 = 1.5 x1, logit1 = x0: they tie where -x0 + 1.5 x1 = 0
    params = {"Dense_0": {"kernel": w}}
    test_x = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 5.0], [0.0, 3.0, 1.0]])  # classes 1, 0, 1, 0
    pairs = jnp.array([[[0, 2], [0, 1]], [[1, 3], [1, 3]]])  # point 0: first pair agrees, second differs; point 1: never
    x, valid, gap = grokking.boundary_points(model.apply, params, test_x, pairs, 40)
    np.testing.assert_array_equal(np.asarray(valid), [True, False])
    # Point 0 lies on the segment from x_0 to x_1 where -x0 + 1.5 x1 = 0: s = 0.4, x = (0.6, 0.4, 0).
    np.testing.assert_allclose(np.asarray(x[0]), [0.6, 0.4, 0.0], atol=1e-6)
    assert abs(float(gap[0])) < 1e-5


def test_a_tiny_study_runs_end_to_end_and_its_measures_are_sandwiched(tmp_path):
    rows = train_and_evaluate(compose_train(TINY_GROK + ["plot=true"]), tmp_path / "run")
    steps = grokking.eval_steps(12, 3)
    assert sorted({r["step"] for r in rows}) == steps
    assert len(rows) == len(steps) * len(grokking.CATEGORIES) * 2
    assert all(r["violations"] == 0 for r in rows)  # frame <= tight <= paper; sampled <= exact <= 2^tight <= 2^C
    assert all(r["frame_r0"] <= r["tight_r0"] <= r["paper_r0"] for r in rows)
    assert all(r["exact_n_points"] == 1 for r in rows)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status == {"status": "complete", "epoch": 12}
    arrays = np.load(tmp_path / "run" / "bounds.npz")
    assert arrays["train_frame"].shape == (2, len(steps), 2, 2)  # [K, E, n, R]
    assert arrays["boundary_gap"].shape == (2, len(steps), 2)
    assert (tmp_path / "run" / "trajectories.png").stat().st_size > 0

    from lr_jax.experiment.grokking_report import report_study

    written = report_study(tmp_path / "run", tmp_path / "report")
    assert {p.name for p in written} >= {"grokking_r0.png", "grokking_tables.md", "grokking_tests.json"}
    tests = json.loads((tmp_path / "report" / "grokking_tests.json").read_text())["tests"]
    assert {t["hypothesis"] for t in tests} >= {"H1"}

    # Two runs of one alpha, or a complete run that lost its last rows: refused in one line, not averaged away.
    import shutil

    from lr_jax.experiment.run_files import RunFileError

    for name in ("a", "b"):
        shutil.copytree(tmp_path / "run", tmp_path / "two" / name)
    with pytest.raises(RunFileError, match="a second run with grokking.alpha=8"):
        report_study(tmp_path / "two", tmp_path / "report2")
    lines = (tmp_path / "two" / "b" / "metrics.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "two" / "b" / "metrics.jsonl").write_text("".join(lines[:-4]))
    with pytest.raises(RunFileError, match="metrics do not match"):
        report_study(tmp_path / "two" / "b", tmp_path / "report3")


@pytest.mark.slow  # three tiny runs
def test_an_interrupted_study_resumes_to_the_same_files(tmp_path, monkeypatch):
    whole = train_and_evaluate(compose_train(DETERMINISTIC), tmp_path / "whole")
    advance = grokking.GROKKING.advance

    def stop_at_ten(run, state, t0, t1):
        if t1 == 10:
            raise KeyboardInterrupt
        return advance(run, state, t0, t1)

    monkeypatch.setattr(grokking, "GROKKING", grokking.GROKKING._replace(advance=stop_at_ten))
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(compose_train(DETERMINISTIC), tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    # As `python scripts/train.py resume=true hydra.run.dir=...`: nothing else on the command line.
    resumed = train_and_evaluate(compose_train(["resume=true"]), tmp_path / "cut", given=set())
    assert resumed == whole
    a, b = np.load(tmp_path / "whole" / "bounds.npz"), np.load(tmp_path / "cut" / "bounds.npz")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "override, key",
    [
        ("grokking.num_vertices=3", "grokking.num_vertices"),
        ("grokking.radii=[]", "grokking.radii"),
        ("grokking.loss=hinge", "grokking.loss"),
        ("grokking.alpha=0", "grokking.alpha"),
        ("model.num_outputs=2", "model.num_outputs"),
        ("grokking.methods=[frame,exactly]", "grokking.methods"),
        ("study=grok", "study"),
    ],
)
def test_bad_grokking_settings_are_refused_in_one_line(tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"invalid config {key}="):
        train_and_evaluate(compose_train(TINY_GROK + [override]), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_three_phases_statistic_by_hand():
    """m = (5, 1, 4, 2): fall 4 to the trough, rise 3 to the peak, fall 2 to the end: T = min(4, 3, 2) = 2."""
    from lr_jax.experiment.grokking_report import three_phases, turning_points

    values = np.array([[5.0, 1.0, 4.0, 2.0], [5.0, 1.0, 4.0, 2.0]])
    (t,) = three_phases(values)
    assert float(t) == 2.0
    assert turning_points(np.array([0, 1, 10, 100]), values) == (1, 10)
    (mono,) = three_phases(np.array([[4.0, 3.0, 2.0, 1.0]]))  # no rise: the best split still has a negative move
    assert float(mono) < 0
    batched = three_phases(np.stack([values, values + 1]))[0]  # [..., S, E] broadcasts
    np.testing.assert_array_equal(batched, [2.0, 2.0])


def test_three_phase_test_holds_its_level_and_finds_planted_phases():
    """A small simulation (the report runs 2,000 replicates): no trend rarely held, a 3-SD three-phase trend mostly."""
    from lr_jax.experiment.grokking_report import simulate_three_phases

    rows = simulate_three_phases(200, seeds=6, epochs=12, rhos=(0.0, 0.5), effect=3.0, n_resamples=199)
    rates = {r["scenario"]: r["held"] / r["replicates"] for r in rows}
    se = (0.025 * 0.975 / 200) ** 0.5
    assert rates["AR(1) 0, no trend"] <= 0.025 + 3 * se
    assert rates["AR(1) 0.5, no trend"] <= 0.025 + 3 * se
    assert rates["AR(1) 0, 3-SD three phases"] >= 0.7
