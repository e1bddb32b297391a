"""Print the launcher overrides that run a sweep fastest on this machine.

    python -m digitpairs.plan        # e.g. "hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1"

Used by ``make study`` and ``make grid``; override there with ``make study PLAN="..."``.

- One torch thread per job and one job per core: the networks are tiny, and two
  1-thread processes gave 1.4x the throughput of one 2-thread process here. Each joblib
  worker imports torch and Lightning once and then runs many jobs.
- On a CPU with AMX-BF16 (Intel Sapphire Rapids and later) and no GPU: bf16 mixed
  precision, ~10% faster per job here. It changes numerics; over the 15-run study
  here the means stayed within noise (README, Speed). Elsewhere: 32-bit floats.
- With a CUDA device, jobs run on it (``trainer.accelerator=auto``), a few at a time so
  that their kernels overlap; that setting is a guess, not yet measured.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cpu_has_amx_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if the CPU flags list ``amx_bf16`` (Linux; False where unknown)."""
    try:
        return any(line.startswith("flags") and " amx_bf16" in line for line in cpuinfo.read_text().splitlines())
    except OSError:
        return False


def plan(cores: int | None = None, cuda: bool | None = None, amx_bf16: bool | None = None) -> str:
    """The overrides, as one line.

    Args:
        cores: CPU cores to use (default: those this process may run on).
        cuda: whether an NVIDIA GPU is present (default: look for its driver; importing
            torch to ask would cost ~3 s of every ``make study``).
        amx_bf16: whether the CPU has AMX-BF16 (default: read ``/proc/cpuinfo``).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cuda is None:
        cuda = Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
    if amx_bf16 is None:
        amx_bf16 = cpu_has_amx_bf16()
    jobs = min(cores, 4) if cuda else cores
    threads = max(1, cores // jobs)
    line = f"hydra/launcher=joblib hydra.launcher.n_jobs={jobs} threads={threads}"
    if amx_bf16 and not cuda:
        line += " trainer.precision=bf16-mixed"
    return line


if __name__ == "__main__":
    print(plan())
