"""A callback for the resume tests: Ctrl-C (SIGINT to this process) at the start of an epoch.

Used on the command line: ``+callbacks.stop._target_=tests.interrupt.InterruptAt +callbacks.stop.epoch=5``.
"""

import os
import signal

import lightning as L


class InterruptAt(L.Callback):
    """Send SIGINT to this process when (1-based) epoch ``epoch`` starts, as a user's Ctrl-C would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)
