"""Bounds around a saved run's points: the table, the CSV, the summary lines."""

from __future__ import annotations

import csv

import numpy as np

import lr_jax
from lr_jax.experiment.saved_runs import CSV_COLUMNS, TIGHT_COLUMN, PointTable, evaluate_points, summary_lines, write_csv
from tests.helpers import random_mlp


def test_evaluate_points_matches_the_public_api():
    rng = np.random.default_rng(0)
    layers = random_mlp(rng, 4, [6, 5])
    xs = rng.normal(size=(9, 4)).astype(np.float32)
    c, l2, srr, tight = evaluate_points(layers, xs, [0.1, 0.5], r_max=2.0, num_grid=4, num_bisect=3, tight=True)
    ref = lr_jax.local_bounds(layers, xs, [0.1, 0.5])
    np.testing.assert_array_equal(c, np.asarray(ref.num_unstable))
    np.testing.assert_array_equal(srr, np.asarray(lr_jax.single_region_radius(layers, xs, 2.0, 4, 3).radius))
    assert c.shape == (9, 2) and np.all(c[:, 1] >= c[:, 0]) and np.all(tight <= l2 + 1e-6)


def test_csv_and_summary_of_a_hand_made_table(tmp_path):
    table = PointTable(
        category=np.array(["train", "train", "random1"]),
        point_index=np.array([0, 1, 0]),
        label=np.array([0, 1, -1]),
        num_unstable=np.array([[0, 2], [1, 3], [0, 0]]),
        log2_bound=np.array([[0.0, 2.0], [1.0, 3.0], [0.0, 0.0]]),
        single_region_radius=np.array([0.2, 0.05, 0.9]),
        tight_log2_bound=np.array([[0.0, 1.5], [1.0, 2.0], [0.0, 0.0]]),
    )
    out = tmp_path / "sub" / "t.csv"
    write_csv(out, table, [0.1, 0.4])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CSV_COLUMNS) + [TIGHT_COLUMN]
    assert len(rows) == 6
    assert rows[3] == {"point_index": "1", "category": "train", "label": "1", "radius": "0.4", "num_unstable": "3",
                       "log2_bound": "3", "single_region_radius": "0.05", "tight_log2_bound": "2"}
    lines = summary_lines(table, [0.1, 0.4], ["train", "random1"])
    assert len(lines) == 5
    assert lines[2].split() == ["train", "0.4", "2", "2.50", "2.5", "0", "0.125"]
