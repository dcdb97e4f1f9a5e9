"""Optional TensorBoard event files of a run (``logger=tensorboard``), written with tensorboardX.

Scalars of every numeric metric as ``<metric>/<category>`` and a histogram of
Algorithm 1's ``C`` per category at every evaluation. ``metrics.jsonl`` stays
the contract; these files are for looking at a run while it trains
(``tensorboard --logdir outputs``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter


class TensorBoardLog:
    """Writes one evaluation record (:class:`lr_jax.experiment.train.EvalRecord`) at a time."""

    def __init__(self, log_dir: str | Path):
        self._writer = SummaryWriter(str(log_dir))

    def log(self, record) -> None:
        for row in record.rows:
            cat = row["category"]
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch" and np.isfinite(value):
                    self._writer.add_scalar(f"{key}/{cat}", value, record.epoch)
            self._writer.add_histogram(f"C/{cat}", np.asarray(record.per_point[cat]), record.epoch)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
