"""Print the launcher overrides that run a sweep fastest on this machine.

    python -m digitpairs.plan        # e.g. "hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1"

Used by ``make study`` and ``make grid``; override there with ``make study PLAN="..."``.

The networks are tiny, so one torch thread per job and one job per core beats
fewer jobs with more threads (two 1-thread processes gave 1.4x the throughput of one
2-thread process here). Each joblib worker imports torch and Lightning once and then
runs many jobs. With a CUDA device, jobs run on it (``trainer.accelerator=auto``), a
few at a time so that their kernels overlap; that setting is a guess, not yet measured.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def plan(cores: int | None = None, cuda: bool | None = None) -> str:
    """The overrides, as one line.

    Args:
        cores: CPU cores to use (default: those this process may run on).
        cuda: whether an NVIDIA GPU is present (default: look for its driver; importing
            torch to ask would cost ~3 s of every ``make study``).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cuda is None:
        cuda = Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
    jobs = min(cores, 4) if cuda else cores
    threads = max(1, cores // jobs)
    return f"hydra/launcher=joblib hydra.launcher.n_jobs={jobs} threads={threads}"


if __name__ == "__main__":
    print(plan())
