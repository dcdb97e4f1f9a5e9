"""The claim x setting report of several sweeps (lr_jax.experiment.robustness, scripts/plot.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from lr_jax.experiment.experiment import CATEGORIES
from lr_jax.experiment.robustness import robustness_markdown, setting_intervals, verdict_counts
from tests.conftest import ROOT


def _rows(fall: float, seeds=range(6), lr=0.02, depth=2):
    """Mean C of train/test falls by ``fall`` over the run (random points stay flat), with seed noise."""
    rng = np.random.default_rng(int(fall * 100) + depth)
    rows = []
    for seed in seeds:
        for e in range(0, 9, 2):
            for cat, base in zip(CATEGORIES, (3.0, 3.0, 2.0, 1.0)):
                c = base - (fall * e / 8 if cat in ("train", "test") else 0.0) + 0.05 * rng.normal()
                rows.append({"lr": lr, "depth": depth, "seed": seed, "epoch": e, "category": cat, "mean_log2_bound": c,
                             "mean_bound": 2.0**c, "mean_single_region_radius": 1 / c, "num_single_region": 10 + seed})
    return rows


def test_verdicts_per_setting_follow_the_planted_effect():
    intervals = setting_intervals({"strong": _rows(1.0), "none": _rows(0.0)})
    counts = {(c["claim"], c["setting"], c["lr"]): c for c in verdict_counts(intervals)}
    falls = "1. bound falls"
    # Train and test fall in "strong" (2 of 4 categories), nothing falls in "none".
    assert counts[(falls, "strong", 0.02)]["held"] == 2 and counts[(falls, "strong", 0.02)]["tests"] == 4
    assert counts[(falls, "none", 0.02)]["held"] == 0
    assert counts[("4. more regions at train than random", "strong", 0.02)]["held"] == 2  # train above both random sets
    md = robustness_markdown(intervals)
    assert "| claim | strong | none |" in md and "| 1. bound falls | 2 (2)/4 | 0 (0)/4 |" in md and "Data categories (train, test):" in md in md
    line = next(l for l in md.splitlines() if l.startswith("| 1 | 0.02 | 2 | drop to the minimum (train) |"))
    strong, none = line.split(" | ")[-2:]
    assert strong.startswith("**+") and not none.startswith("**")


def _write_sweep(root, fall):
    for depth in (2, 3):
        job = root / f"lr0.02_depth{depth}_seed0_seeds6"
        (job / ".hydra").mkdir(parents=True)
        cfg = {"lr": 0.02, "depth": depth, "seed": 0, "seeds": 6}
        (job / "config.yaml").write_text(yaml.safe_dump(cfg))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (job / "status.json").write_text(json.dumps({"status": "complete"}))
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(fall, depth=depth)))


@pytest.mark.slow
def test_plot_script_compares_several_sweeps(tmp_path):
    _write_sweep(tmp_path / "default", 1.0)
    _write_sweep(tmp_path / "scale16", 0.0)
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "scripts" / "plot.py"), str(tmp_path / "default"), str(tmp_path / "scale16")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--out" in proc.stderr  # several sweeps need a place for the comparison
    proc = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (out / "robustness.md").read_text()
    assert "| claim | default | scale16 |" in md and "| 1. bound falls | 4 (4)/8 | 0 (0)/8 |" in md  # one lr, two depths
    assert (out / "robustness_mean_c.png").stat().st_size > 10_000
    for name in ("default", "scale16"):  # each sweep's own report beside it
        assert (out / name / "claims.md").exists() and (out / name / "figure3.png").exists()
    intervals = json.loads((out / "robustness_intervals.json").read_text())
    assert {r["setting"] for r in intervals} == {"default", "scale16"}
    proc = subprocess.run(cmd + ["--out", str(out), "--labels", "a"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "one per folder" in proc.stderr


def test_seed_power_and_calibration_scripts_print_their_tables(tmp_path, capsys):
    """The two thin scripts of the claim statistics, run small in-process."""
    import importlib.util

    def script(name):
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    _write_sweep(tmp_path / "sweep", 1.0)
    out = tmp_path / "power.md"
    assert script("seed_power").main([str(tmp_path / "sweep"), "--seeds", "6", "--replicates", "3", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| power, 6 seeds | seeds for 80 % | MDE (80 %) |" in text and "| 4 | 0.02 | 2 | train minus random1 |" in text
    assert "bound C, all points" in text
    # No exact counts in these rows: the exact-count measure is refused, not reported empty.
    assert script("seed_power").main([str(tmp_path / "sweep"), "--measure", "exact_mean_log2_count"]) == 1
    cal = tmp_path / "cal.md"
    assert script("calibrate_claims").main(["--replicates", "5", "--resamples", "19", "--out", str(cal)]) == 0
    assert "| dip_then_rise: fall | iid, no trend | false held |" in cal.read_text()
    assert "Calibration: 5 replicates" in capsys.readouterr().out
