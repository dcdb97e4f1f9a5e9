"""Figures of bound trajectories: one run's panels and the Figure 3 panels of a sweep.

Matplotlib with the Agg backend (no display needed). These functions write
image files; they are called by the training loop and ``scripts/plot.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lr_jax.experiment.experiment import CATEGORIES  # noqa: E402

CATEGORY_COLOURS = dict(zip(CATEGORIES, ("tab:blue", "tab:orange", "tab:green", "tab:red")))


def plot_run(rows: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Four trajectories of one run: mean C, mean 2^C, single-region points and radius vs epoch."""
    panels = [
        ("mean_log2_bound", "mean C (log2 of the bound)", False),
        ("mean_bound", "mean upper bound 2^C", True),
        ("num_single_region", "points with a single region (C = 0)", False),
        ("mean_single_region_radius", "mean distance to the nearest region boundary", False),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    categories = list(dict.fromkeys(r["category"] for r in rows))
    for ax, (key, label, log) in zip(axes, panels):
        for cat in categories:
            pts = sorted((r["epoch"], r[key]) for r in rows if r["category"] == cat and key in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=cat, color=CATEGORY_COLOURS.get(cat))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _per_seed(rows, lr, depth, category, metric, scale):
    """``(epochs [E], values [S, E])`` of one metric, seeds with every epoch only; ``scale`` as in :func:`paired_series`."""
    table: dict = {}
    for r in rows:
        if r["lr"] != lr or r["depth"] != depth or r["category"] != category or r.get(metric) is None:
            continue
        v = float(r[metric])
        if scale == "fraction":
            v = v / r["n_points"] if r.get("n_points") else np.nan
        elif scale == "log":
            v = np.log(v) if v > 0 else np.nan
        table.setdefault(r.get("seed", 0), {})[r["epoch"]] = v
    if not table:
        return None, None
    epochs = sorted({e for t in table.values() for e in t})
    values = np.array([[t.get(e, np.nan) for e in epochs] for t in table.values()])
    values = values[np.all(np.isfinite(values), axis=1)]
    return (np.asarray(epochs), values) if values.size else (None, None)


def paired_series(rows, lr, depth, category, metric, scale: str = "linear"):
    """Mean over seeds per epoch, with a band for the paired change from epoch 0.

    Per seed ``s`` the change ``d_s(e) = x_s(e) - x_s(0)``; the band is
    ``mean_s x_s(0) + mean_s d_s(e) +- t_{0.975, S-1} sd_s(d(e)) / sqrt(S)``,
    the 95 % t-interval of the mean within-seed change, drawn from the
    epoch-0 mean (zero width at epoch 0). A band that leaves the epoch-0 level
    is a change the seeds agree on; the between-seed spread of the levels is
    not part of it.

    Args:
      rows: metrics rows with ``lr``, ``depth``, ``category``, ``epoch``, ``seed``.
      scale: ``linear``; ``log`` (the metric's log per seed: geometric mean
        over seeds, relative change, for metrics spanning orders of
        magnitude); ``fraction`` (the metric divided by the row's
        ``n_points``: a share of the category).

    Returns:
      ``(epochs, centre, low, high)`` arrays, or ``None`` without data.
    """
    from scipy import stats

    epochs, x = _per_seed(rows, lr, depth, category, metric, scale)
    if epochs is None:
        return None
    d = x - x[:, :1]
    n = x.shape[0]
    half = stats.t.ppf(0.975, n - 1) * d.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(x.shape[1])
    centre = x[:, 0].mean() + d.mean(axis=0)
    low, high = centre - half, centre + half
    if scale == "log":
        centre, low, high = np.exp(centre), np.exp(low), np.exp(high)
    return epochs, centre, low, high


def _panel(ax, rows, lr, metric, ylabel, letter, scale: str = "linear", log_axis: bool | None = None):
    """One Figure-3 panel from per-seed rows: mean per epoch, band = paired change from epoch 0 (:func:`paired_series`).

    ``log_axis``: ``None`` picks a log axis when the curves span more than a factor of 20.
    """
    depths = sorted({r["depth"] for r in rows})
    styles = ["-", "--", ":", "-."]
    values = []
    for di, depth in enumerate(depths):
        for cat, colour in CATEGORY_COLOURS.items():
            series = paired_series(rows, lr, depth, cat, metric, scale)
            if series is None:
                continue
            e, m, low, high = series
            label = f"{cat}, depth {depth}" if len(depths) > 1 else cat
            ax.plot(e, m, styles[di % 4], marker="o", ms=3, color=colour, label=label)
            ax.fill_between(e, low, high, color=colour, alpha=0.15, linewidth=0)
            values.extend(m[m > 0])
    if log_axis or (log_axis is None and values and max(values) / min(values) > 20):
        ax.set_yscale("log")
    ax.set_title(f"({letter}) lr = {lr:g}" if letter else f"lr = {lr:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _save_figure(fig, out_dir: Path, stem: str, dpi: int) -> list[Path]:
    """Writes ``{stem}.png`` and ``{stem}.pdf`` into ``out_dir`` and closes the figure; returns the paths."""
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


BAND_NOTE = "band: 95 % interval of the mean per-seed change from epoch 0"


def plot_figure3(rows: Sequence[dict], out_dir: str | Path, stem: str = "figure3") -> list[Path]:
    """The paper's Figure 3 from a sweep's per-seed rows, plus the single-region radius panels.

    Every curve is a mean over seeds per epoch and every band the 95 %
    t-interval of the mean *within-seed* change from epoch 0
    (:func:`paired_series`): the yardstick of a trend over epochs, where a
    band of the between-seed spread would mostly show how seeds differ in level.

    Writes ``{stem}.png/.pdf``: (a) mean upper bound ``2^C`` vs epoch for the
    four categories at lr 0.02 (geometric mean over seeds, band on the
    relative change: the mean of ``2^C`` spans orders of magnitude), (b) the
    share of the category's points whose ball meets a single region (``C =
    0``; categories differ in size), (c), (d) the same at lr 0.001 (depth as
    line style). When the rows carry exact counts (``bound=sandwich``) each
    learning rate gains two panels, each with its own y axis: the mean exact
    number of regions meeting the balls of the counted subset (linear axis),
    and the mean ``2^C`` on that same subset (geometric mean over seeds, log
    axis). ``{stem}_radius.png/.pdf``: the mean distance to the nearest region
    boundary at each learning rate; and
    ``{stem}_log2.png/.pdf``: mean ``C`` (log2 of the bound).

    Returns:
      The written paths.
    """
    out_dir = Path(out_dir)
    lrs = sorted({r["lr"] for r in rows}, reverse=True)
    written = []

    counted = any(r.get("exact_mean_count") is not None for r in rows)
    fig = plt.figure(figsize=(13 * (2 if counted else 1), 4.5 * len(lrs)))
    letters = iter("abcdefghijklmnop")
    axes = fig.subplots(len(lrs), 4 if counted else 2, squeeze=False)
    for i, lr in enumerate(lrs):
        _panel(axes[i, 0], rows, lr, "mean_bound", "mean upper bound 2^C (geometric mean over seeds)",
               next(letters), scale="log")
        _panel(axes[i, 1], rows, lr, "num_single_region", "share of points with a single region (C = 0)",
               next(letters), scale="fraction", log_axis=False)
        if counted:  # the true number of regions beside the bound, on the same subset of points, own axes
            _panel(axes[i, 2], rows, lr, "exact_mean_count", "mean exact number of regions (counted subset)",
                   next(letters), log_axis=False)
            _panel(axes[i, 3], rows, lr, "exact_subset_mean_bound", "mean 2^C, same subset (geometric mean over seeds)",
                   next(letters), scale="log")
    axes[0, 0].legend(fontsize=8, ncol=2)
    fig.suptitle(BAND_NOTE, fontsize=9)
    fig.tight_layout()
    written += _save_figure(fig, out_dir, stem, dpi=120)

    for metric, ylabel, suffix in (
        ("mean_single_region_radius", "mean distance to the nearest region boundary", "radius"),
        ("mean_log2_bound", "mean C = log2 of the bound", "log2"),
    ):
        fig, axes = plt.subplots(1, len(lrs), figsize=(6.5 * len(lrs), 5.2), squeeze=False)
        letters = iter("abcdefghij")
        for i, lr in enumerate(lrs):
            _panel(axes[0, i], rows, lr, metric, ylabel, next(letters), log_axis=False)
        # Below the panels, in space kept free for it: inside (a) it hid curves, hung below (a) it covered the x label.
        fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=8, ncol=4, loc="lower center")
        fig.suptitle(BAND_NOTE, fontsize=9)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        written += _save_figure(fig, out_dir, f"{stem}_{suffix}", dpi=120)
    return written


def plot_settings_grid(settings: dict, out_dir: str | Path, metric: str = "mean_log2_bound",
                       ylabel: str = "mean C", stem: str = "robustness_mean_c", columns: int = 4) -> list[Path]:
    """A grid of one metric over epochs: a panel per (setting, learning rate).

    Settings fill rows of ``columns`` panels; each setting's learning rates
    sit one under the other.

    Args:
      settings: ``{setting name: per-seed rows of its sweep}``, in reading order.
      out_dir: where ``{stem}.png/.pdf`` are written.
      metric: the metric (mean over seeds; band: 95 % interval of the mean
        per-seed change from epoch 0, :func:`paired_series`).

    Returns:
      The written paths.
    """
    out_dir = Path(out_dir)
    lrs = sorted({r["lr"] for s in settings.values() for r in s}, reverse=True)
    cols = min(columns, len(settings))
    blocks = -(-len(settings) // cols)
    fig, axes = plt.subplots(blocks * len(lrs), cols, figsize=(4.2 * cols, 3.2 * blocks * len(lrs)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for j, (name, rows) in enumerate(settings.items()):
        for i, lr in enumerate(lrs):
            ax = axes[(j // cols) * len(lrs) + i, j % cols]
            ax.set_visible(True)
            _panel(ax, rows, lr, metric, ylabel if j % cols == 0 else "", "", log_axis=False)
            ax.set_title(f"{name}, lr = {lr:g}", fontsize=10)
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.suptitle(BAND_NOTE, fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, out_dir, stem, dpi=100)
