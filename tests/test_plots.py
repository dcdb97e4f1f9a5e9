"""Figures: a run's trajectories and the Figure 3 panels are drawn from rows and a summary."""

from __future__ import annotations

import numpy as np
import pytest

from lr_jax.experiment.experiment import CATEGORIES
from lr_jax.experiment.plots import plot_figure3, plot_run


def _rows(lr=0.02, depth=2, seeds=(0, 1)):
    return [
        {"lr": lr, "depth": depth, "seed": s, "epoch": e, "category": c, "mean_bound": 1.0 + e + s, "n_points": 50,
         "mean_log2_bound": 0.5 * e, "num_single_region": e, "mean_single_region_radius": 0.1 * (e + 1)}
        for s in seeds for e in (0, 2, 4) for c in CATEGORIES
    ]


def test_plot_run_writes_a_png(tmp_path):
    plot_run(_rows(seeds=(0,)), tmp_path / "t.png", title="x")
    data = (tmp_path / "t.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.slow  # matplotlib at full size; the fast tier draws one run's panels
def test_plot_figure3_writes_every_panel(tmp_path):
    written = plot_figure3(_rows(0.02) + _rows(0.001) + _rows(0.02, depth=3), tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(f"figure3{s}.{e}" for s in ("", "_radius", "_log2") for e in ("png", "pdf"))
    assert all(p.stat().st_size > 5_000 for p in written)


def test_bands_are_the_paired_change_from_epoch_0_not_the_spread_between_seeds():
    from lr_jax.experiment.plots import paired_series

    # Seeds far apart in level (0, 10, 20, ...) that all rise by the same 0.5 per epoch, plus a little
    # seed-specific wobble: the band is narrow around the mean, where a +-std band would be +-14 wide.
    rng = np.random.default_rng(0)
    rows = [{"lr": 0.02, "depth": 2, "seed": s, "epoch": e, "category": "train", "n_points": 500,
             "mean_log2_bound": 10.0 * s + 0.5 * e + (0.01 * rng.normal() if e else 0.0),
             "num_single_region": 100 + 10 * e, "mean_bound": 2.0 ** (s + e)}
            for s in range(5) for e in (0, 2, 4)]
    e, centre, low, high = paired_series(rows, 0.02, 2, "train", "mean_log2_bound")
    assert list(e) == [0, 2, 4] and low[0] == high[0] == centre[0] == 20.0
    assert np.allclose(centre, [20.0, 21.0, 22.0], atol=0.05) and np.all(high - low < 0.1)
    _, share, _, _ = paired_series(rows, 0.02, 2, "train", "num_single_region", scale="fraction")
    assert np.allclose(share, [0.2, 0.24, 0.28])  # 100, 120, 140 of 500 points
    _, geo, glow, _ = paired_series(rows, 0.02, 2, "train", "mean_bound", scale="log")
    assert np.allclose(geo, [4.0, 16.0, 64.0]) and np.all(glow > 0)  # geometric mean of 2^(s+e) over s = 0..4


def _png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


@pytest.mark.slow
def test_figure3_gains_the_exact_count_panels_when_regions_were_counted(tmp_path):
    rows = _rows(0.02) + _rows(0.001)
    (tmp_path / "plain").mkdir()
    plain = plot_figure3(rows, tmp_path / "plain")
    counted_rows = [{**r, "exact_mean_count": 1.5 + r["epoch"], "exact_subset_mean_bound": 2.0 + r["epoch"]} for r in rows]
    (tmp_path / "counted").mkdir()
    counted = plot_figure3(counted_rows, tmp_path / "counted")
    # Two panels per learning rate become four: the figure doubles in width, same height.
    assert _png_width(counted[0]) == 2 * _png_width(plain[0])


@pytest.mark.slow  # draws the three Figure 3 figures
def test_radius_and_log2_legends_hide_no_line(tmp_path, monkeypatch):
    from lr_jax.experiment import plots

    saved = {}

    def keep(fig, out_dir, stem, dpi):
        fig.canvas.draw()
        saved[stem] = fig
        return []

    monkeypatch.setattr(plots, "_save_figure", keep)
    plot_figure3(_rows(0.02) + _rows(0.001) + _rows(0.02, depth=3), tmp_path)
    for stem in ("figure3_radius", "figure3_log2"):
        fig = saved[stem]
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            # Outside every panel's plotting area, so no line, marker or band is under it.
            assert all(not box.overlaps(other.get_window_extent(renderer)) for other in fig.axes), stem
