"""Process-wide CPU settings that make these tiny networks train faster.

They change no result beyond float rounding at the 1e-38 level (denormals), and each
was measured with ``benchmarks/speed/training_loop.py`` and A/B runs on a 2-core x86 machine:

- one torch thread per process when a sweep runs one job per core (two 1-thread
  processes gave 1.4x the throughput of one 2-thread process);
- denormal floats flushed to zero: softmax outputs of confident digit heads fall below
  1.2e-38, and x86 arithmetic on denormals is slow (~10% of a step);
- glibc malloc told to keep freed memory: by default it returns large blocks to the
  OS after every step, and the next step pays page faults to get them back (the
  zero-fill of max-pool gradients took 1 ms instead of 0.06 ms; 10-18% of a step).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import warnings

import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB, so that freed tensors stay in
    the process heap for reuse. Returns False (and changes nothing) without glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def configure_cpu(threads: int | None = None, flush_denormal: bool = True, tune_malloc: bool = True) -> None:
    """Apply the settings above to this process.

    Args:
        threads: torch intra-op threads (``None``: leave torch's default, all cores).
        flush_denormal: flush denormal floats to zero (x86 with SSE3; ignored elsewhere).
        tune_malloc: keep freed memory in the heap (glibc only; ignored elsewhere).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(flush_denormal)
    if tune_malloc and not keep_freed_memory():
        log.debug("malloc tuning skipped: no glibc mallopt")


def quiet_lightning_console(quiet: bool = False) -> None:
    """Under Hydra's logging, keep Lightning's messages to one copy and drop its ads.

    ``quiet`` (the jobs of a sweep) also drops its INFO lines ("GPU available: False",
    "TPU available", "`Trainer.fit` stopped"), which would repeat for every job.
    """
    root, lightning_log = logging.getLogger(), logging.getLogger("lightning")
    if root.handlers:
        lightning_log.handlers.clear()  # the root (Hydra) handlers print and file them
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addFilter(lambda r: "Tip:" not in str(r.msg))
    rank_zero.setLevel(logging.WARNING if quiet else logging.NOTSET)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning 2.6 on torch 2.14, harmless
    warnings.filterwarnings("ignore", message=r".*`srun` command is available.*")  # a hint, on any machine with SLURM
