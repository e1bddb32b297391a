"""SLURM sweeps that never lose their summary: the checks and records behind the
``digitpairs_slurm`` launcher (``hydra_plugins/digitpairs_launcher``).

- :func:`check_time_limit`: refuse, before anything is submitted, a time limit that
  leaves no time to train before submitit's warning signal.
- :func:`job_outcome`: turn a job that SLURM killed (scancel, time limit, out of memory,
  lost node) or that crashed outside the task into a status and a one-line reason.
- :func:`record_lost_job`: write that as the job's ``metrics.json`` (and its
  ``.hydra/overrides.yaml`` if the job died before Hydra wrote it), so that
  :mod:`digitpairs.sweeps.summary` lists it as a row like any other.

This module imports neither torch nor Lightning, nor submitit (it reads duck-typed job
objects), so Hydra's plugin scan stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from digitpairs.utils.errors import ConfigError
from digitpairs.utils.io import write_json

MIN_WORK_S = 60  # seconds a job needs before the warning signal: start, imports, data, a few epochs

FINAL_STATUSES = ("ok", "failed", "invalid", "killed")  # a job record that a launcher must never overwrite

# SLURM job states (sacct) that mean SLURM ended the job, with what a user can do about each.
STATE_HINTS = {
    "CANCELLED": "cancelled (scancel, or an administrator)",
    "TIMEOUT": "time limit reached: raise hydra.launcher.timeout_min",
    "OUT_OF_MEMORY": "out of memory: raise hydra.launcher.mem_gb",
    "NODE_FAIL": "its node failed",
    "PREEMPTED": "preempted by a job of higher priority",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "deadline reached",
    "FAILED": "the job script failed",
}


def check_time_limit(timeout_min: Any, signal_delay_s: Any, min_work_s: int = MIN_WORK_S) -> None:
    """Refuse a SLURM time limit too short for submitit's warning signal.

    submitit asks SLURM to send its warning signal (USR2) ``signal_delay_s`` seconds
    before the limit; with a limit of 2 minutes and the default 120 s it comes at once,
    possibly during imports, where nothing can save a checkpoint.

    Args:
        timeout_min: ``hydra.launcher.timeout_min``, minutes (an integer >= 1).
        signal_delay_s: ``hydra.launcher.signal_delay_s``, seconds (an integer >= 0).
        min_work_s: seconds a job needs before the signal.

    Raises:
        ConfigError: one line naming the key, its value and the smallest allowed value,
            e.g. ``hydra.launcher.timeout_min=2 is not allowed: expected an integer >= 3
            (minutes): submitit's warning comes hydra.launcher.signal_delay_s=120 s before
            the limit and a job needs 60 s before it; or lower signal_delay_s``.
    """
    for key, value, low in (
        ("hydra.launcher.timeout_min", timeout_min, 1),
        ("hydra.launcher.signal_delay_s", signal_delay_s, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(key, value, f"an integer >= {low}")
    if timeout_min * 60 < signal_delay_s + min_work_s:
        need = math.ceil((signal_delay_s + min_work_s) / 60)
        raise ConfigError(
            "hydra.launcher.timeout_min",
            timeout_min,
            f"an integer >= {need} (minutes): submitit's warning signal comes hydra.launcher.signal_delay_s="
            f"{signal_delay_s} s before the limit and a job needs {min_work_s} s before it; or lower signal_delay_s",
        )


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def job_outcome(job: Any, error: BaseException) -> tuple[str, str]:
    """``(status, reason)`` of a submitit job whose ``results()`` raised ``error``.

    Args:
        job: a submitit ``Job`` (``job_id``, ``state``; only read).
        error: what ``job.results()`` raised: submitit's ``FailedJobError`` (the job's
            Python code raised; its traceback's last line is kept) or
            ``UncompletedJobError`` (the job ended without a result: SLURM killed it).

    Returns:
        ``("failed", "...")`` for a job that raised, ``("killed", "...")`` otherwise;
        the reason is one line and names the SLURM job id and state, e.g.
        ``SLURM job 12_1 CANCELLED by 0: cancelled (scancel, or an administrator)``.
    """
    try:
        state = str(job.state)
    except Exception as err:  # noqa: BLE001 - sacct may be gone; the record must still be written
        state = f"UNKNOWN ({type(err).__name__})"
    job_id = getattr(job, "job_id", "?")
    if type(error).__name__ == "FailedJobError":
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.startswith("---")]
        last = next((ln for ln in reversed(lines) if not ln.startswith(("You can check", "or at paths", "- /"))), "")
        return "failed", _one_line(f"SLURM job {job_id} ({state}) raised: {last}")
    hint = next((h for s, h in STATE_HINTS.items() if state.startswith(s)), "ended without a result")
    return "killed", _one_line(f"SLURM job {job_id} {state}: {hint}")


def record_lost_job(job_dir: Path, status: str, reason: str, overrides: list[str], extra: dict[str, Any]) -> bool:
    """Write the record of a job that ended without one, for the sweep summary.

    A ``metrics.json`` whose status is final (``FINAL_STATUSES``: the job wrote its own
    result before it died) is kept as it is.

    Args:
        job_dir: the job's folder in the sweep (``<sweep dir>/<job num>``).
        status: ``killed`` or ``failed``.
        reason: one line (:func:`job_outcome`).
        overrides: the job's overrides, written to ``.hydra/overrides.yaml`` if missing.
        extra: more keys for the record (``model``, ``seed``, ``slurm_job``, ...).

    Returns:
        True if a record was written, False if the job's own final record was kept.
    """
    import json

    from omegaconf import OmegaConf

    job_dir = Path(job_dir)
    metrics = job_dir / "metrics.json"
    if metrics.is_file():
        try:
            if json.loads(metrics.read_text()).get("status") in FINAL_STATUSES:
                return False
        except (OSError, ValueError):
            pass  # a torn file: replace it
    hydra_dir = job_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    if not (hydra_dir / "overrides.yaml").is_file():
        OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    record = {"status": status, "error": reason, **extra, "overrides": list(overrides)}
    ckpt = job_dir / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        record["checkpoint"] = str(ckpt.relative_to(job_dir))
    write_json(metrics, record)
    return True
