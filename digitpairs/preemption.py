"""Save a checkpoint when SLURM is about to end a job, and stop cleanly.

submitit asks SLURM to send its warning signal (``USR2``, or ``$SUBMITIT_PREEMPT_SIGNAL``)
``hydra.launcher.signal_delay_s`` seconds before the time limit; ``scancel`` sends
``SIGTERM`` and, ``KillWait`` seconds later (30 s by default), ``SIGKILL``. Under SLURM,
:class:`CheckpointOnSignal` turns either into a checkpoint at the next consistent point of
training (after an optimiser step for the warning; at the epoch end where Lightning raises
its ``SIGTERMException`` for ``SIGTERM``), written atomically to ``<dirpath>/last.ckpt``,
the file that ``python train.py ckpt_path=...`` resumes from. After the warning the run
ends with :class:`~digitpairs.errors.JobInterrupted`, which the task records as status
``killed`` in ``metrics.json``; after ``SIGTERM`` Lightning exits the process and the
launcher records the job.

Outside SLURM (no ``SLURM_JOB_ID``) or off the main thread it does nothing, so local runs
and their numbers are unchanged. While it is installed, submitit's own handler (which
would requeue a job when ``hydra.launcher.max_num_timeout > 0``) does not run.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from digitpairs.errors import JobInterrupted


def _save_atomically(trainer: L.Trainer, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)
    tmp.replace(path)
    return path


class CheckpointOnSignal(L.Callback):
    """Under SLURM, save ``<dirpath>/last.ckpt`` when the job is warned or cancelled.

    Args:
        dirpath: folder of the checkpoint (the run's ``checkpoints/``).
        signal_name: the warning signal without ``SIG``; default submitit's
            (``$SUBMITIT_PREEMPT_SIGNAL`` or ``USR2``).
        only_under_slurm: do nothing unless ``SLURM_JOB_ID`` is set (tests turn it off).

    Raises:
        JobInterrupted: at the first batch end after the warning signal, once the
            checkpoint is saved; its message names the signal, the epoch and the file.
    """

    def __init__(self, dirpath: str, signal_name: str | None = None, only_under_slurm: bool = True) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        name = signal_name or os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.signum = getattr(signal, "SIG" + name.upper().removeprefix("SIG"))
        self.only_under_slurm = only_under_slurm
        self.received: int | None = None
        self._previous: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:  # a signal handler only sets a flag
        self.received = signum

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.only_under_slurm and "SLURM_JOB_ID" not in os.environ:
            return
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._on_signal)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.received is None:
            return
        name = signal.Signals(self.received).name
        path = _save_atomically(trainer, self.path)
        raise JobInterrupted(
            f"stopped by {name} (SLURM's warning before the time limit) at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}: checkpoint saved to {path}"
        )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and (not self.only_under_slurm or "SLURM_JOB_ID" in os.environ):
            _save_atomically(trainer, self.path)  # scancel: Lightning stops at an epoch end, SIGKILL comes later
        self._restore()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
