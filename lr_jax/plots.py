"""Figures of bound trajectories: one run's panels and the Figure 3 panels of a sweep.

Matplotlib with the Agg backend (no display needed). These functions write
image files; they are called by the training loop and ``scripts/plot.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CATEGORY_COLOURS = {"train": "tab:blue", "test": "tab:orange", "random1": "tab:green", "random2": "tab:red"}


def plot_run(rows: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Four trajectories of one run: mean C, mean 2^C, single-region points and radius vs epoch."""
    panels = [
        ("mean_log2_bound", "mean C (log2 of the bound)", False),
        ("mean_bound", "mean upper bound 2^C", True),
        ("num_single_region", "points with a single region (C = 0)", False),
        ("mean_single_region_radius", "mean certified single-region radius", False),
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
