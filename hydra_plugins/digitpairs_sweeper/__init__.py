"""A Hydra sweeper plugin of digitpairs (Hydra loads sweepers only from ``hydra_plugins``).

Selected in ``conf/hydra/default.yaml`` (``hydra.sweeper._target_``), so every sweep goes
through it, whatever its launcher.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger(__name__)


class SampledCheckSweeper(BasicSweeper):
    """Hydra's basic sweeper, composing fewer jobs before it launches them, and keeping a
    sweep's folders its own.

    Before launching, ``BasicSweeper`` composes the config of every job in the main
    process, and each job composes it again where it runs: for the 45 jobs of the
    study that took 4.5 s here, with every worker idle. This sweeper composes the first
    job and one job for each new config-group choice (``model=ws``, ``data=...``);
    plain values such as ``seed=3`` or ``optim.lr1=0.1`` cannot break composition, and
    each job still checks its values before it trains. Before any job runs it also

    - refuses a sweep folder that already holds jobs, that another process holds (its
      lock, :class:`~digitpairs.utils.io.FolderLock`, is then this process's until it
      ends), or that cannot be written;
    - refuses a sweep whose jobs would share a folder (a ``hydra.sweep.subdir`` that does
      not vary between them: :func:`~digitpairs.utils.config.check_job_folders`).

    Its launcher is wrapped (:class:`LostJobsRecorded`): when a worker process dies (a
    joblib worker killed by the OOM killer), the jobs that did not finish are recorded
    ``killed`` and the sweep's summary is written, instead of a traceback.

    Otherwise it is ``BasicSweeper`` (same ``params`` and ``max_batch_size``).
    """

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = LostJobsRecorded(self.launcher, hydra_context, config)

    def sweep(self, arguments: list[str]) -> Any:
        """Hydra's basic sweep, refused (one line, exit 2) when the sweep folder already
        holds jobs, is in use by another process or cannot be written."""
        from pathlib import Path

        from digitpairs.utils.config import claim_output_dir
        from digitpairs.utils.errors import one_line_errors

        with one_line_errors():  # the lock stays taken until this process ends
            claim_output_dir("hydra.sweep.dir", Path(str(self.config.hydra.sweep.dir)).resolve(), multirun=True)
        return super().sweep(arguments)

    def validate_batch_is_legal(self, batch) -> None:
        from digitpairs.utils.config import check_job_folders, config_groups  # omegaconf only: cheap at plugin scan
        from digitpairs.utils.errors import one_line_errors

        if self.batch_index == 1:  # the first batch: every job of the sweep, before any runs
            with one_line_errors():
                check_job_folders(self.hydra_context, self.config, [job for jobs in self.overrides for job in jobs])
        groups = config_groups()
        seen: set[str] = set()
        sample = []
        for overrides in batch:
            choices = {o for o in overrides if o.split("=", 1)[0].lstrip("+~") in groups}
            if not sample or not choices <= seen:
                sample.append(overrides)
                seen |= choices
        super().validate_batch_is_legal(sample)


class LostJobsRecorded:
    """A launcher whose worker processes may die: ``launch`` records the jobs they did not
    finish instead of raising.

    A pool of worker processes that breaks (``concurrent.futures.BrokenExecutor``: joblib's
    ``TerminatedWorkerError`` when the OOM killer or ``kill -9`` ends a loky worker; joblib
    then stops the pool's other workers) leaves each job of the batch without a final
    record ``killed``, with the reason (:func:`digitpairs.sweeps.slurm.record_lost_job`, as
    the SLURM launcher does); finished jobs keep their own records. Hydra's end-of-sweep
    callback then writes the summary and the sweep exits 1 with one line.

    Args:
        launcher: the launcher Hydra instantiated.
        hydra_context, config: the sweep's, to find each job's folder.
    """

    def __init__(self, launcher: Any, hydra_context: Any, config: Any) -> None:
        self.launcher, self.hydra_context, self.config = launcher, hydra_context, config

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)

    def launch(self, job_overrides, initial_job_idx: int):
        from concurrent.futures import BrokenExecutor

        try:
            return self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        except BrokenExecutor as err:
            return self.record_lost(job_overrides, initial_job_idx, err)

    def record_lost(self, job_overrides, initial_job_idx: int, err: BaseException) -> list:
        """Record every job of the batch that has no final record as ``killed``; one
        ``JobReturn`` per job."""
        from hydra.core.utils import JobReturn, JobStatus

        from digitpairs.sweeps.slurm import record_lost_job
        from digitpairs.utils.config import job_folder
        from digitpairs.utils.io import FolderInUse, FolderLock

        cause = lost_worker_reason(err)
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            folder, about = job_folder(self.hydra_context, self.config, list(overrides), idx)
            started = (folder / ".hydra").is_dir()
            when = "finished" if started else "started"
            reason = f"the sweep's worker processes stopped before this job {when}: {cause}"
            try:
                lock = FolderLock(folder).acquire(wait_s=60)  # a worker still writing there ends first
            except FolderInUse:
                log.error("job #%d: its folder is still in use, left as it is: %s", idx, folder)
            else:
                try:
                    if record_lost_job(folder, "killed", reason, list(overrides), about):
                        log.error("job #%d killed: %s", idx, reason)
                finally:
                    lock.release()
            returns.append(JobReturn(overrides=list(overrides), working_dir=str(folder), status=JobStatus.COMPLETED))
        return returns


def lost_worker_reason(err: BaseException) -> str:
    """Why a broken pool of workers stopped, for a job's record, e.g. ``one was killed by
    SIGKILL (the OOM killer, or kill -9; TerminatedWorkerError)``."""
    import re

    found = re.search(r"exit codes of the workers are \{([^}]*)\}", str(err))
    signals = sorted(set(re.findall(r"(SIG[A-Z]+)", found.group(1)))) if found else []
    name = type(err).__name__
    if not signals:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"one ended abruptly ({name}{f': {first}' if first else ''})"
    hint = "the OOM killer, or kill -9; " if "SIGKILL" in signals else ""
    return f"one was killed by {', '.join(signals)} ({hint}{name})"
