"""Lightning callbacks of the project."""

from __future__ import annotations

import math

import lightning as L

TRAIN_HISTORY = ("train/loss", "train/loss_main", "train/acc", "lr")  # per epoch, into metrics.json
EVAL_HISTORY = ("val/acc", "curve/test_acc")  # per validation epoch


class EpochHistory(L.Callback):
    """Record epoch-level metrics, one value per epoch, for ``metrics.json`` and the curves.

    ``history`` maps each recorded key to a list of floats indexed by epoch, with
    ``nan`` for epochs that did not log it (e.g. a test curve every 5 epochs).

    Args:
        train_keys: keys logged once per training epoch (``train/loss``, ``lr``, ...).
        eval_keys: keys logged by the validation loop (``val/acc``, ``curve/test_acc``).
    """

    def __init__(self, train_keys: list[str], eval_keys: list[str]) -> None:
        self.train_keys, self.eval_keys = list(train_keys), list(eval_keys)
        self.history: dict[str, list[float]] = {}
        self._train_epochs = 0
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _put(self, trainer: L.Trainer, keys: list[str], epoch: int) -> None:
        metrics = trainer.callback_metrics
        for key in keys:
            if key in metrics:
                series = self.history.setdefault(key, [])
                series.extend([math.nan] * (epoch + 1 - len(series)))
                series[epoch] = float(metrics[key])

    # Lightning calls a callback's on_train_epoch_end *before* the LightningModule's,
    # where the training metrics are logged; so an epoch's training metrics are read
    # when the next epoch starts, and the last epoch's when training ends.
    def _record_finished_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > self._train_epochs:
            self._put(trainer, self.train_keys, self._train_epochs)
            self._train_epochs += 1

    on_train_epoch_start = _record_finished_epoch
    on_train_end = _record_finished_epoch

    def record(self, values: dict[str, float], epoch: int) -> None:
        """Record ``values`` (key -> float) for ``epoch`` (from 0) directly, for a run whose
        loop is not this callback's trainer's (a run of a fleet's pack). Training keys
        among them mark the epoch's training metrics as recorded."""
        for key in self.train_keys + self.eval_keys:
            if key in values:
                series = self.history.setdefault(key, [])
                series.extend([math.nan] * (epoch + 1 - len(series)))
                series[epoch] = float(values[key])
        if any(key in values for key in self.train_keys):
            self._train_epochs = max(self._train_epochs, epoch + 1)

    def state_dict(self) -> dict:
        """The history so far, saved in checkpoints so that a resumed run continues it.

        A checkpoint saved at the end of an epoch (after the LightningModule logged its
        training metrics) records that epoch's training metrics first.
        """
        trainer = self._trainer
        if trainer is not None and trainer.training and trainer.current_epoch == self._train_epochs:
            progress = trainer.fit_loop.epoch_progress.current
            if progress.processed > progress.completed:  # between the epoch's end hooks
                self._put(trainer, self.train_keys, self._train_epochs)
                self._train_epochs += 1
        return {"history": {k: list(v) for k, v in self.history.items()}, "train_epochs": self._train_epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.history = {k: list(v) for k, v in state_dict["history"].items()}
        self._train_epochs = state_dict["train_epochs"]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the validation metrics of this epoch are in callback_metrics by now (fresh)
        if not trainer.sanity_checking:
            self._put(trainer, self.eval_keys, trainer.current_epoch)


class EpochLog(L.Callback):
    """One log line every ``every`` epochs (and after the last), instead of a progress bar.

    For logs that are files, not terminals (``python train.py > out.log``, SLURM and
    joblib job logs), where a progress bar writes a refresh per step. Reads what
    :class:`EpochHistory` recorded, so it must come after it in the callback list.

    Args:
        history: the run's :class:`EpochHistory`.
        every: epochs between two lines (>= 1).
    """

    def __init__(self, history: EpochHistory, every: int) -> None:
        self.history, self.every, self._logged = history, max(1, int(every)), 0

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import logging

        done = self.history._train_epochs  # epochs whose training metrics are recorded
        if done <= self._logged or not (done % self.every == 0 or done >= trainer.max_epochs):
            return
        self._logged = done
        parts = []
        for key, fmt in (("train/loss", "{:.4f}"), ("train/acc", "{:.2%}"), ("val/acc", "{:.2%}"), ("lr", "{:g}")):
            series = self.history.history.get(key, [])
            if len(series) >= done and not math.isnan(series[done - 1]):
                parts.append(f"{key} {fmt.format(series[done - 1])}")
        logging.getLogger("digitpairs.training.run").info("epoch %d/%d: %s", done, trainer.max_epochs, ", ".join(parts))

    on_train_epoch_start = _log
    on_train_end = _log
