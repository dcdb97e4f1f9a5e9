"""Per-category summaries, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lr_jax.experiment.bound_summary import summarise_category


def test_summary_of_known_values():
    s = summarise_category(np.array([0, 0, 1, 3]), np.array([0.5, 0.3, 0.1, 0.1]))
    assert s["mean_bound"] == (1 + 1 + 2 + 8) / 4
    assert s["mean_log2_bound"] == 1.0 and s["median_log2_bound"] == 0.5 and s["max_log2_bound"] == 3.0
    assert s["num_single_region"] == 2 and s["n_points"] == 4
    assert s["std_log2_bound"] == pytest.approx(np.sqrt((1 + 1 + 0 + 4) / 4))
    assert s["mean_single_region_radius"] == pytest.approx(0.25) and s["median_single_region_radius"] == pytest.approx(0.2)


def test_large_c_does_not_overflow_and_radius_is_optional():
    s = summarise_category(np.array([200.0, 0.0]))
    assert s["mean_bound"] == pytest.approx((2.0**200 + 1) / 2)
    assert "mean_single_region_radius" not in s
