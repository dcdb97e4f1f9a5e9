"""Aggregation of a multirun folder and the Figure 3 plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from lr_jax.experiment.sweep import collect_runs, summarise
from tests.conftest import ROOT, TINY

from lr_jax.experiment.experiment import CATEGORIES as CATS


def _write_job(root, lr, depth, seed, status="complete", value=0.0):
    job = root / f"lr{lr}_depth{depth}_seed{seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"lr": lr, "depth": depth, "seed": seed, "optim": {"lr": "${lr}"}}))
    (job / "status.json").write_text(json.dumps({"status": status}))
    rows = [
        {
            "epoch": e,
            "category": c,
            "mean_bound": value + e,
            "mean_log2_bound": 1.0 + seed,
            "num_single_region": seed,
            "mean_single_region_radius": 0.1 * seed,
        }
        for e in (0, 2)
        for c in CATS
    ]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_stacked_job(root, lr, depth, seed, seeds, status="complete"):
    """A job of ``seeds`` seeds trained together: one folder, rows with a seed field."""
    job = root / f"lr{lr}_depth{depth}_seed{seed}_seeds{seeds}"
    (job / ".hydra").mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump({"lr": lr, "depth": depth, "seed": seed, "seeds": seeds}))
    (job / ".hydra" / "config.yaml").write_text((job / "config.yaml").read_text())
    (job / "status.json").write_text(json.dumps({"status": status}))
    rows = [
        {"epoch": e, "seed": s, "category": c, "mean_log2_bound": 10.0 * s + e, "num_single_region": s}
        for e in (0, 2)
        for s in range(seed, seed + seeds)
        for c in CATS
    ]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_collector_reads_a_stacked_job_as_its_seeds(tmp_path):
    _write_stacked_job(tmp_path, 0.02, 2, 0, 3)
    _write_stacked_job(tmp_path, 0.02, 3, 0, 3, status="running")
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "seeds": 3, "hydra": {"sweeper": {"params": {"lr": "0.02", "depth": "2,3,4"}}, "overrides": {"task": []}}}
    ))
    runs = collect_runs(tmp_path)
    assert runs.complete == [(0.02, 2, 0), (0.02, 2, 1), (0.02, 2, 2)]
    # The unfinished stack is three missing seeds; depth 4 is in the grid but has no folder.
    missing = sorted((m["depth"], m["seed"], m["reason"]) for m in runs.missing)
    assert missing == [(3, s, "running") for s in range(3)] + [(4, s, "no job folder") for s in range(3)]
    assert sorted({(r["seed"], r["lr"], r["depth"]) for r in runs.rows}) == [(s, 0.02, 2) for s in range(3)]
    row = next(r for r in summarise(runs.rows) if r["epoch"] == 2 and r["category"] == "train")
    # mean_log2_bound is 10 * seed + epoch: seeds 0, 1, 2 at epoch 2 -> 2, 12, 22.
    assert row["mean_log2_bound_n"] == 3 and row["mean_log2_bound_mean"] == 12.0
    assert row["num_single_region_mean"] == 1.0


def test_stacked_job_without_its_seeds_is_named(tmp_path):
    _write_stacked_job(tmp_path, 0.02, 2, 0, 3)
    metrics = tmp_path / "lr0.02_depth2_seed0_seeds3" / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines() if '"seed": 2' not in line))
    runs = collect_runs(tmp_path)
    assert runs.complete == [] and [m["seed"] for m in runs.missing] == [0, 1, 2]
    for m in runs.missing:
        assert m["reason"].startswith(f"{metrics}: rows hold seeds [0, 1], not the job's seeds [0, 1, 2]")


def test_a_stack_of_more_than_ten_seeds_is_read(tmp_path):
    """Seeds 0..11 in one job: the check of the rows' seeds orders them as numbers (10 after 9)."""
    _write_stacked_job(tmp_path, 0.02, 2, 0, 12)
    runs = collect_runs(tmp_path)
    assert runs.complete == [(0.02, 2, s) for s in range(12)] and not runs.missing


@pytest.fixture
def synthetic_multirun(tmp_path):
    # Seeds 0, 1, 2 for (0.02, 2); seed 2 unfinished; seed 3 expected by the grid but absent.
    for seed, value in ((0, 1.0), (1, 3.0)):
        _write_job(tmp_path, 0.02, 2, seed, value=value)
    _write_job(tmp_path, 0.02, 2, 2, status="running", value=100.0)
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"sweeper": {"params": {"lr": "0.02", "depth": "2", "seed": "range(4)"}}, "overrides": {"task": []}}})
    )
    return tmp_path


def test_collect_reports_missing_jobs(synthetic_multirun):
    runs = collect_runs(synthetic_multirun)
    assert runs.complete == [(0.02, 2, 0), (0.02, 2, 1)]
    missing = {(m["seed"], m["reason"]) for m in runs.missing}
    assert missing == {(2, "running"), (3, "no job folder")}
    assert len(runs.rows) == 2 * 2 * 4


def test_summary_means_and_stds_are_exact(synthetic_multirun):
    summary = summarise(collect_runs(synthetic_multirun).rows)
    assert len(summary) == 2 * 4  # epochs x categories
    row = next(r for r in summary if r["epoch"] == 2 and r["category"] == "test")
    # mean_bound is value + epoch: seeds give 3 and 5 -> mean 4, std 1 (ddof 0).
    assert row["mean_bound_mean"] == 4.0 and row["mean_bound_std"] == 1.0 and row["mean_bound_n"] == 2
    assert row["num_single_region_mean"] == 0.5 and row["num_single_region_std"] == 0.5
    assert row["mean_single_region_radius_mean"] == pytest.approx(0.05)


@pytest.mark.slow  # scripts/plot.py end to end; the fast tier keeps its failure path
def test_plot_script_writes_figures_and_summary(synthetic_multirun, tmp_path):
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot.py"), str(synthetic_multirun), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("figure3", "figure3_radius", "figure3_log2"):
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 5_000
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["category"] for r in rows} == set(CATS) and len(rows) == 8
    assert len(json.loads((out / "missing_jobs.json").read_text())) == 2
    assert "seed=3" in proc.stderr
    claims = json.loads((out / "claims.json").read_text())
    claim4 = [c for c in claims if c["claim"] == 4]
    # mean_log2_bound is 1 + seed for every category, so train is never above random.
    assert claim4 and all(c["cells_train_above"] == 0 and c["train_minus_random_mean"] == 0 for c in claim4)
    md = (out / "claims.md").read_text()
    assert "### 4." in md and "| 0.02 | 2 | random1 | +0.00 | 0/4 |" in md


def test_plot_script_on_missing_folder_fails_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot.py"), str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "no multirun folder" in proc.stderr


def _tiny_multirun(sweep, *overrides):
    """Runs scripts/train.py -m on the TINY config into ``sweep``; asserts the sweep itself succeeded."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", *TINY, "plot=false", *overrides, f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_job_multirun_end_to_end(tmp_path):
    sweep = tmp_path / "multirun"
    _tiny_multirun(sweep, "seed=0,1")
    runs = collect_runs(sweep)
    assert len(runs.complete) == 2 and not runs.missing
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot.py"), str(sweep)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "figure3.png").exists() and (sweep / "summary.csv").exists()


@pytest.mark.slow
def test_failed_job_does_not_lose_the_others(tmp_path):
    sweep = tmp_path / "multirun"
    # lr=-1 fails validation; the job with lr=0.02 must still complete, and so must the sweep.
    _tiny_multirun(sweep, "lr=0.02,-1")
    runs = collect_runs(sweep)
    assert [k[0] for k in runs.complete] == [0.02]
    assert [m["lr"] for m in runs.missing] == [-1.0]


def test_dip_then_rise_on_known_trajectories():
    import numpy as np

    from lr_jax.experiment.claims import dip_then_rise, rise_then_dip

    epochs = np.array([0, 2, 4, 6])
    v_shape = np.array([[3.0, 1.0, 2.0, 4.0], [3.0, 2.0, 1.0, 2.0]])
    out = dip_then_rise(epochs, v_shape)
    assert out["holds_on_mean"] and out["argmin_epoch"] == 2 and out["seeds_dip_then_rise"] == 2
    assert out["start"] == 3.0 and out["min"] == 1.5 and out["relative_dip"] == 0.5
    falling = np.array([[4.0, 3.0, 2.0, 1.0]])
    assert not dip_then_rise(epochs, falling)["holds_on_mean"]
    hump = rise_then_dip(epochs, -v_shape)
    assert hump["holds_on_mean"] and hump["max"] == -1.5 and hump["argmax_epoch"] == 2


def test_damaged_job_file_is_listed_and_the_sweep_goes_on(synthetic_multirun, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import plot

    metrics = synthetic_multirun / "lr0.02_depth2_seed1" / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:50])
    runs = collect_runs(synthetic_multirun)
    assert runs.complete == [(0.02, 2, 0)]
    damaged = [m for m in runs.missing if m["seed"] == 1]
    assert len(damaged) == 1 and damaged[0]["reason"].startswith(f"{metrics}: metrics is damaged")
    assert plot.main([str(synthetic_multirun), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if str(metrics) in line] == [f"missing job lr=0.02 depth=2 seed=1: {damaged[0]['reason']}"]
    assert f"wrote {tmp_path / 'out' / 'summary.csv'}" in err  # says what it wrote


@pytest.mark.parametrize("damaged", ["status.json", ".hydra/config.yaml"])
def test_damaged_status_or_config_lists_the_job_as_failed(synthetic_multirun, damaged):
    path = synthetic_multirun / "lr0.02_depth2_seed1" / damaged
    path.write_text('{"status": "compl')
    runs = collect_runs(synthetic_multirun)
    assert runs.complete == [(0.02, 2, 0)]
    listed = [m for m in runs.missing if m["dir"] == str(path.parent if damaged == "status.json" else path.parent.parent)]
    assert len(listed) == 1 and listed[0]["reason"].startswith(f"{path}: ") and "damaged" in listed[0]["reason"]


@pytest.mark.slow
def test_figure3_experiment_runs_without_plus(tmp_path):
    sweep = tmp_path / "multirun"
    # The figure3 sweep cut to one job: its launcher, its sweep parameters, the TINY net.
    _tiny_multirun(sweep, "experiment=figure3", "hydra.sweeper.params.lr=0.02", "hydra.sweeper.params.depth=2", "seeds=2")
    runs = collect_runs(sweep)
    # One job of two stacked seeds: the collector sees seeds 0 and 1.
    assert runs.complete == [(0.02, 2, 0), (0.02, 2, 1)] and not runs.missing
    assert {r["seed"] for r in runs.rows} == {0, 1}
