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


def _series(summary, lr, depth, category, metric, band: str):
    """``(epochs, centre, low, high)``: mean +- std (``band="std"``) or median and quartiles (``"iqr"``)."""
    if band == "iqr":
        fields = ("q50", "q25", "q75")
    else:
        fields = ("mean", "std", "std")
    pts = sorted(
        (r["epoch"], *(r.get(f"{metric}_{f}") for f in fields))
        for r in summary
        if r["lr"] == lr and r["depth"] == depth and r["category"] == category and f"{metric}_{fields[0]}" in r
    )
    if not pts:
        return None
    e, c, a, b = (list(v) for v in zip(*pts))
    if band != "iqr":  # mean -+ std
        a = [m - s for m, s in zip(c, a)]
        b = [m + s for m, s in zip(c, b)]
    return e, c, a, b


def _panel(ax, summary, lr, metric, ylabel, letter, band: str = "std"):
    depths = sorted({r["depth"] for r in summary})
    styles = ["-", "--", ":", "-."]
    values = []
    for di, depth in enumerate(depths):
        for cat, colour in CATEGORY_COLOURS.items():
            series = _series(summary, lr, depth, cat, metric, band)
            if series is None:
                continue
            e, m, low, high = (np.asarray(v, dtype=float) for v in series)
            label = f"{cat}, depth {depth}" if len(depths) > 1 else cat
            ax.plot(e, m, styles[di % 4], marker="o", ms=3, color=colour, label=label)
            ax.fill_between(e, low, high, color=colour, alpha=0.15, linewidth=0)
            values.extend(m[m > 0])
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_title(f"({letter}) lr = {lr:g}")
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


def _share_y(a, b) -> None:
    """One y range for two panels, so that the exact counts and the bound on them compare by eye."""
    if a.get_yscale() != b.get_yscale():
        a.set_yscale("log")
        b.set_yscale("log")
    low = min(a.get_ylim()[0], b.get_ylim()[0])
    high = max(a.get_ylim()[1], b.get_ylim()[1])
    for ax in (a, b):
        ax.set_ylim(low, high)


def plot_figure3(summary: Sequence[dict], out_dir: str | Path, stem: str = "figure3") -> list[Path]:
    """The paper's Figure 3 from a sweep summary, plus the single-region radius panels.

    Writes ``{stem}.png/.pdf``: (a) mean upper bound ``2^C`` vs epoch for the four
    categories at lr 0.02 (median over seeds, shaded between the quartiles: the
    mean of ``2^C`` is dominated by a few points and spans orders of magnitude,
    where a +-1 std band would cross zero on the log axis), (b) number of
    points with a single region at lr 0.02 (mean over seeds, shaded +- one
    standard deviation), (c), (d) the same at lr 0.001 (depth as line style).
    When the rows carry exact counts (``bound=sandwich``) each learning rate
    gains two panels: the mean exact number of regions meeting the balls of
    the counted subset, and the mean ``2^C`` on that same subset (one y range
    for both). ``{stem}_radius.png/.pdf``: the mean
    distance to the nearest region boundary at each learning rate; and
    ``{stem}_log2.png/.pdf``: mean ``C`` (log2 of the bound).

    Returns:
      The written paths.
    """
    out_dir = Path(out_dir)
    lrs = sorted({r["lr"] for r in summary}, reverse=True)
    written = []

    counted = any("exact_mean_count_q50" in r for r in summary)
    fig = plt.figure(figsize=(13 * (2 if counted else 1), 4.5 * len(lrs)))
    letters = iter("abcdefghijklmnop")
    axes = fig.subplots(len(lrs), 4 if counted else 2, squeeze=False)
    for i, lr in enumerate(lrs):
        _panel(axes[i, 0], summary, lr, "mean_bound", "mean upper bound of local regions (2^C), median over seeds",
               next(letters), band="iqr")
        _panel(axes[i, 1], summary, lr, "num_single_region", "points with a single region (C = 0)", next(letters))
        if counted:  # the true number of regions beside the bound, on the same subset of points
            _panel(axes[i, 2], summary, lr, "exact_mean_count", "mean exact number of regions (subset), median over seeds",
                   next(letters), band="iqr")
            _panel(axes[i, 3], summary, lr, "exact_subset_mean_bound", "mean upper bound 2^C (same subset), median over seeds",
                   next(letters), band="iqr")
            _share_y(axes[i, 2], axes[i, 3])
    axes[0, 0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    written += _save_figure(fig, out_dir, stem, dpi=120)

    for metric, ylabel, suffix in (
        ("mean_single_region_radius", "mean distance to the nearest region boundary", "radius"),
        ("mean_log2_bound", "mean C = log2 of the bound", "log2"),
    ):
        fig, axes = plt.subplots(1, len(lrs), figsize=(6.5 * len(lrs), 4.5), squeeze=False)
        letters = iter("abcdefghij")
        for i, lr in enumerate(lrs):
            _panel(axes[0, i], summary, lr, metric, ylabel, next(letters))
        axes[0, 0].legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below (a): hides no line
        fig.tight_layout()
        written += _save_figure(fig, out_dir, f"{stem}_{suffix}", dpi=120)
    return written


def plot_settings_grid(summaries: dict, out_dir: str | Path, metric: str = "mean_log2_bound",
                       ylabel: str = "mean C", stem: str = "robustness_mean_c", columns: int = 4) -> list[Path]:
    """A grid of one metric over epochs: a panel per (setting, learning rate).

    Settings fill rows of ``columns`` panels; each setting's learning rates
    sit one under the other.

    Args:
      summaries: ``{setting name: summarise(rows of its sweep)}``, in reading order.
      out_dir: where ``{stem}.png/.pdf`` are written.
      metric: the summarised metric (mean over seeds, band +- one std over seeds).

    Returns:
      The written paths.
    """
    out_dir = Path(out_dir)
    lrs = sorted({r["lr"] for s in summaries.values() for r in s}, reverse=True)
    cols = min(columns, len(summaries))
    blocks = -(-len(summaries) // cols)
    fig, axes = plt.subplots(blocks * len(lrs), cols, figsize=(4.2 * cols, 3.2 * blocks * len(lrs)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for j, (name, summary) in enumerate(summaries.items()):
        for i, lr in enumerate(lrs):
            ax = axes[(j // cols) * len(lrs) + i, j % cols]
            ax.set_visible(True)
            _panel(ax, summary, lr, metric, ylabel if j % cols == 0 else "", "")
            ax.set_title(f"{name}, lr = {lr:g}", fontsize=10)
            ax.set_yscale("linear")
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _save_figure(fig, out_dir, stem, dpi=100)
