"""Save a checkpoint when SLURM warns a job that its time limit is near, and stop cleanly.

submitit asks SLURM to send its warning signal (``USR2``, or ``$SUBMITIT_PREEMPT_SIGNAL``)
``hydra.launcher.signal_delay_s`` seconds before the time limit. Under SLURM,
:class:`CheckpointOnSignal` catches it: training finishes the epoch under way and stops
(``trainer.should_stop``), the checkpoint is written atomically to
``<dirpath>/last.ckpt`` in the same state as the checkpoint of a finished run (so
``python train.py ckpt_path=...`` resumes it), and the run ends with
:class:`~digitpairs.utils.errors.JobInterrupted`, which the task records as status ``killed``
in ``metrics.json``. A warning during the last epoch or the test lets the run finish.

``scancel`` (``SIGTERM``, then ``SIGKILL`` after SLURM's ``KillWait``) is left to
Lightning, which stops at the end of the epoch; the per-epoch ``checkpoints/last.ckpt``
of the run is then the one to resume from, and the launcher records the job.

Outside SLURM (no ``SLURM_JOB_ID``) or off the main thread it does nothing, so local runs
and their numbers are unchanged. Under SLURM its handler replaces submitit's for the rest
of the job, so submitit does not requeue it (``hydra.launcher.max_num_timeout`` has no
effect).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L

from digitpairs.training.checkpoints.resume import resume_command
from digitpairs.training.checkpoints.store import save
from digitpairs.utils.errors import JobInterrupted


class CheckpointOnSignal(L.Callback):
    """Under SLURM, save ``<dirpath>/last.ckpt`` and stop when the job is warned.

    Args:
        dirpath: folder of the checkpoint (the run's ``checkpoints/``).
        signal_name: the warning signal without ``SIG``; default submitit's
            (``$SUBMITIT_PREEMPT_SIGNAL`` or ``USR2``).
        only_under_slurm: do nothing unless ``SLURM_JOB_ID`` is set (tests turn it off).

    Raises:
        JobInterrupted: at the end of fit, after the epoch in which the warning came,
            once the checkpoint is saved; its message names the signal, the epochs
            done, the file and the command that resumes it.
    """

    def __init__(self, dirpath: str, signal_name: str | None = None, only_under_slurm: bool = True) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        name = signal_name or os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.signum = getattr(signal, "SIG" + name.upper().removeprefix("SIG"))
        self.only_under_slurm = only_under_slurm
        self.received: int | None = None
        self.stopped = False

    def _on_signal(self, signum: int, frame: Any) -> None:  # a signal handler only sets a flag
        self.received = signum

    def _active(self) -> bool:
        return not self.only_under_slurm or "SLURM_JOB_ID" in os.environ

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._active() and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._on_signal)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is not None and trainer.current_epoch + 1 < trainer.max_epochs:
            trainer.should_stop = True  # Lightning ends fit after this epoch's hooks (validation, checkpoints)
            self.stopped = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.stopped:
            return
        path = save(trainer, self.path)
        raise JobInterrupted(
            f"stopped by {signal.Signals(self.received).name} (SLURM's warning before the time limit) after epoch "
            f"{trainer.current_epoch} of {trainer.max_epochs}: checkpoint {path} "
            f"(resume: {resume_command(path)})"
        )
