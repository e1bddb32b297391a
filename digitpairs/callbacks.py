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
        self.epochs_recorded = 0

    # Lightning calls a callback's on_train_epoch_end *before* the LightningModule's, where
    # the training metrics are logged; so an epoch is recorded when the next one starts,
    # and the last one when training ends.
    def _record(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics
        self.epochs_recorded += 1
        for key in self.keys:
            if key in metrics:
                series = self.history.setdefault(key, [])
                series.extend([math.nan] * (self.epochs_recorded - 1 - len(series)))
                series.append(float(metrics[key]))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > self.epochs_recorded:
            self._record(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > self.epochs_recorded:
            self._record(trainer)
