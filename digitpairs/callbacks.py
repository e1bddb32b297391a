"""Lightning callbacks of the project."""

from __future__ import annotations

import math

import lightning as L


class EpochHistory(L.Callback):
    """Record chosen epoch-level metrics after every training epoch.

    ``history`` maps each key of ``keys`` that was logged to a list of floats, one per
    epoch (``nan`` where an epoch did not log it). The task writes it to
    ``metrics.json``; the report draws the study's Fig. 2 from it.

    Args:
        keys: metric names as logged, e.g. ``["train/loss", "val/acc", "curve/test_acc"]``.
    """

    def __init__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        self.history: dict[str, list[float]] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch
        for key in self.keys:
            if key in metrics:
                series = self.history.setdefault(key, [])
                series.extend([math.nan] * (epoch - len(series)))
                series.append(float(metrics[key]))
