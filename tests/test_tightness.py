"""The tightness report's building blocks."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lr_jax import count_regions
from lr_jax.experiment.tightness import grid_count, sandwich_rows
from tests.helpers import random_mlp


def test_grid_count_on_two_lines_through_the_disk():
    # Neurons x1 and x2 (through the centre): four quadrants meet the disk.
    layers = [(np.eye(2), np.zeros(2)), (np.ones((2, 1)), np.zeros(1))]
    assert grid_count(layers, np.zeros(2), 1.0, resolution=101) == 4
    assert count_regions(layers, np.zeros(2) + 1e-3, 1.0).count == 4


def test_grid_count_never_exceeds_exact_count():
    rng = np.random.default_rng(3)
    for _ in range(3):
        layers = random_mlp(rng, 2, [6, 5])
        x = rng.normal(size=2)
        assert grid_count(layers, x, 1.0, resolution=301) <= count_regions(layers, x, 1.0).count


def test_grid_count_rejects_other_dimensions():
    with pytest.raises(ValueError, match="2-D"):
        grid_count(random_mlp(np.random.default_rng(0), 3, [4]), np.zeros(3), 1.0)


@pytest.mark.slow
def test_sandwich_rows_hold_and_are_ordered():
    rng = np.random.default_rng(4)
    layers = random_mlp(rng, 3, [6, 6])
    rows = sandwich_rows(layers, rng.normal(size=(3, 3)), [0.2, 0.8], jax.random.PRNGKey(0), num_samples=32, num_chords=2)
    assert [r["radius"] for r in rows] == [0.2, 0.8]
    for r in rows:
        assert r["violations"] == 0 and r["exact_complete"] == 3
        assert r["log2_sampled"] <= r["log2_exact"] <= r["log2_tight"] + 1e-9 <= r["log2_paper"] + 2e-9


@pytest.mark.slow
def test_tightness_script_on_a_saved_run(tiny_run, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "tables.md"
    args = [str(tiny_run), "--epoch", "2", "--points", "2", "--grid-nets", "1", "--grid-resolution", "101", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tightness.py"), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| depth 2, lr 0.02, seed 0, epoch 2 |")]
    assert len(rows) == 4 * 4 and all(line.rstrip(" |").endswith("| 0") for line in rows)  # no violations
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tightness.py"), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("tightness.py: error: ") and len(proc.stderr.strip().splitlines()) == 1
