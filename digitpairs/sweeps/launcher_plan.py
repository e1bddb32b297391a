"""Print the launcher overrides that run a sweep fastest on the machine that runs it.

    python -m digitpairs.sweeps.launcher_plan        # e.g. "hydra/launcher=fleet hydra.launcher.n_jobs=2 threads=1"
    python -m digitpairs.sweeps.launcher_plan hydra/launcher=digitpairs_slurm hydra.launcher.cpus_per_task=2
    # prints "threads=2"

Used by ``make study``, ``make grid`` and ``make beyond``, which pass it their sweep
(``experiment=study``, ``grid``, ``beyond``) and their ``ARGS``;
override there with ``make study PLAN="..."`` (``PLAN="hydra/launcher=joblib
hydra.launcher.n_jobs=2 threads=1"``: one job at a time per process). A launcher chosen
in the arguments (``hydra/launcher=...``) is respected: the plan then adds only
``threads`` (``hydra.launcher.cpus_per_task``, else 1), unless the arguments set it, and
never a precision (a cluster's nodes may differ from the machine that submits them).

- The fleet launcher (``hydra/launcher=fleet``, :mod:`digitpairs.sweeps.fleet`): the runs
  of a sweep that differ only in seed, learning rates or loss weights train side by side,
  8 to a packed network, one pack per core with one torch thread each (1.2-1.4x less time
  per training step than the same runs one by one on a 2-core CPU,
  ``benchmarks/speed/fleet_speed.py``; whole sweeps: docs/speed.md). The networks are tiny, and
  two 1-thread processes gave 1.4x the throughput of one 2-thread process here.
- On a CPU with bf16 instructions and no GPU, for ``make study``, ``make grid`` and ``make
  beyond`` (``experiment=study``, ``grid``, ``beyond``): bf16 mixed precision. With AMX-BF16
  (Intel Sapphire Rapids and later) the packs also run grouped convolutions
  (``hydra.launcher.strategy=grouped``): ``make study`` took 80-85 s against 120 s in 32-bit
  floats on the fleet and 139 s on joblib. With AVX512-BF16 alone (AMD Zen 4 EPYC) the
  runs' convolutions stay one after another (the fleet's ``auto``, faster there): ``make
  study`` 104 s against 128 s in 32-bit floats and 154-158 s on joblib, ``make grid`` 155 s
  against 223 s on joblib, ``make beyond`` 273 s against 361 s. Each model's 15-run mean
  (the grid's mean validation accuracy) stayed within noise (docs/speed.md). Other sweeps
  (``make search``, a sweep of your own) keep 32-bit floats. Elsewhere: 32-bit floats, and
  each run's convolutions one after another.
- With a CUDA device, packs of up to 64 runs train on it (``trainer.accelerator=auto``),
  two at a time so that their kernels overlap; that setting is a guess, not yet measured
  on a GPU (``benchmarks/speed/fleet_speed.py --accelerator gpu`` measures it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BF16_MEASURED = {"study", "grid", "beyond"}
"""The ``experiment=`` sweeps whose means were measured in bf16 mixed precision on a CPU and
found within noise of 32-bit floats (docs/speed.md)."""


def cpu_has_flag(flag: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if the CPU flags list ``flag``, e.g. ``amx_bf16`` or ``avx512_bf16`` (Linux;
    False where unknown)."""
    try:
        return any(line.startswith("flags") and flag in line.split() for line in cpuinfo.read_text().splitlines())
    except OSError:
        return False


def _value(args: list[str], key: str) -> str | None:
    """The value of the last ``key=value`` in ``args`` (``+``/``++`` prefixes allowed), else None."""
    values = [a.split("=", 1)[1] for a in args if "=" in a and a.split("=", 1)[0].lstrip("+") == key]
    return values[-1] if values else None


def plan(
    cores: int | None = None,
    cuda: bool | None = None,
    amx_bf16: bool | None = None,
    args: list[str] | None = None,
    avx512_bf16: bool | None = None,
) -> str:
    """The overrides, as one line.

    Args:
        args: the user's own overrides (``make study ARGS=...``). With a launcher among
            them (``hydra/launcher=...``) only ``threads`` is added: the value of
            ``hydra.launcher.cpus_per_task``, else 1 (none for Hydra's ``basic``
            launcher, which runs one job at a time). Keys set in ``args`` are never
            repeated.
        cores: CPU cores to use (default: those this process may run on).
        cuda: whether an NVIDIA GPU is present (default: look for its driver; importing
            torch to ask would cost ~3 s of every ``make study``).
        amx_bf16: whether the CPU has AMX-BF16 (default: read ``/proc/cpuinfo``); bf16 is
            added only where ``args`` hold an ``experiment=`` whose accuracy was
            measured in bf16 (:data:`BF16_MEASURED`), with grouped convolutions.
        avx512_bf16: whether the CPU has AVX512-BF16 (default: read ``/proc/cpuinfo``); bf16
            as for AMX, with the fleet's default strategy.
    """
    args = list(args or [])
    launcher = _value(args, "hydra/launcher")
    if launcher is not None:
        if launcher == "basic" or _value(args, "threads") is not None:
            return ""
        return f"threads={_value(args, 'hydra.launcher.cpus_per_task') or 1}"
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cuda is None:
        cuda = Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
    if amx_bf16 is None:
        amx_bf16 = cpu_has_flag("amx_bf16")
    if avx512_bf16 is None:
        avx512_bf16 = cpu_has_flag("avx512_bf16")
    jobs = min(cores, 2) if cuda else cores
    jobs = int(_value(args, "hydra.launcher.n_jobs") or jobs)
    threads = max(1, cores // jobs)
    line = "hydra/launcher=fleet"
    if _value(args, "hydra.launcher.n_jobs") is None:
        line += f" hydra.launcher.n_jobs={jobs}"
    if cuda and _value(args, "hydra.launcher.pack") is None:
        line += " hydra.launcher.pack=64"
    if _value(args, "threads") is None:
        line += f" threads={threads}"
    bf16 = (amx_bf16 or avx512_bf16) and not cuda and _value(args, "experiment") in BF16_MEASURED
    if bf16 and _value(args, "trainer.precision") is None:
        line += " trainer.precision=bf16-mixed"
        if amx_bf16 and _value(args, "hydra.launcher.strategy") is None:
            line += " hydra.launcher.strategy=grouped"
    return line


if __name__ == "__main__":
    import sys

    print(plan(args=sys.argv[1:]))
