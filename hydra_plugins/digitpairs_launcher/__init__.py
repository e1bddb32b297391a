"""The digitpairs SLURM launcher: Hydra's submitit SLURM launcher that never loses a sweep.

    python train.py -m hydra/launcher=digitpairs_slurm hydra.launcher.partition=debug \\
        hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=30 threads=1 seed=0,1

``hydra/launcher=digitpairs_slurm`` selects it (registered below in Hydra's ConfigStore;
plain ``hydra/launcher=submitit_slurm`` stays ``hydra_submitit_launcher``'s own). Every
key of ``hydra_submitit_launcher``'s ``SlurmQueueConf`` works as documented there. It
differs from ``hydra_submitit_launcher``'s ``SlurmLauncher`` (1.2) in four ways:

1. A time limit too short for submitit's warning signal is refused before anything is
   submitted (:func:`digitpairs.sweeps.slurm.check_time_limit`; one line, exit 2).
2. It waits for every job. A job that SLURM killed (scancel, time limit, out of memory,
   lost node) or that crashed outside the task no longer raises ``UncompletedJobError``
   in the launching process: it is recorded in its job folder as status ``killed`` (or
   ``failed``) with SLURM's state, so Hydra's ``on_multirun_end`` runs and
   ``summary.csv``, ``ranking.csv`` and ``best_overrides.txt`` are written; the sweep
   then exits 1 with one line (:class:`digitpairs.sweeps.sweep_end.SweepSummary`).
3. Jobs run without the progress bar (``trainer.enable_progress_bar=false`` unless the
   command line sets it), so their logs under ``.submitit/`` hold no bar refreshes.
4. Ctrl-C while waiting writes the summary of the jobs finished so far and says how to
   stop the others (they keep running on SLURM).

Hydra instantiates launchers only from the ``hydra_plugins`` package, hence this module.
"""

# no "from __future__ import annotations": Hydra scans this module outside sys.modules,
# where dataclasses need real types

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

log = logging.getLogger(__name__)


@dataclass
class DigitpairsSlurmConf(SlurmQueueConf):
    """``hydra_submitit_launcher``'s SLURM config, launched by :class:`DigitpairsSlurmLauncher`."""

    _target_: str = "hydra_plugins.digitpairs_launcher.DigitpairsSlurmLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="digitpairs_slurm", node=DigitpairsSlurmConf, provider="digitpairs"
)


class DigitpairsSlurmLauncher(_SubmititSlurmLauncher):
    """``SlurmLauncher`` that refuses short time limits and records killed jobs (see module doc)."""

    def setup(self, **kwargs: Any) -> None:
        from digitpairs.sweeps.slurm import check_time_limit
        from digitpairs.utils.errors import one_line_errors

        with one_line_errors():  # before the sweeper composes or submits anything
            check_time_limit(self.params.get("timeout_min"), self.params.get("signal_delay_s"))
        super().setup(**kwargs)

    def _executor(self) -> Any:
        """The submitit executor with this launcher's parameters (as ``SlurmLauncher.launch`` 1.2 builds it)."""
        import submitit
        from omegaconf import OmegaConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]},
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k not in init_keys}
        )
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton

        assert self.config is not None and len(job_overrides) > 0
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            overrides = list(overrides)
            if not any(o.lstrip("+~").startswith("trainer.enable_progress_bar=") for o in overrides):
                overrides.append("trainer.enable_progress_bar=false")  # job logs: no bar refreshes
            job_params.append((overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params, strict=False))
        log.info(
            "submitted SLURM array job %s (%d jobs); waiting for all of them (keep this process alive)",
            jobs[0].job_id.split("_")[0],
            len(jobs),
        )
        returns: list[JobReturn] = []
        try:
            for job, (overrides, _, idx, _, _) in zip(jobs, job_params, strict=False):
                returns.append(self._result(job, overrides, idx))
        except KeyboardInterrupt:
            self._interrupted(sweep_dir, jobs, len(returns))
        return returns

    def _result(self, job: Any, overrides: list[str], idx: int) -> JobReturn:
        """Wait for ``job``; a job that ended without a result gets a record instead of an exception."""
        try:
            return job.results()[0]
        except Exception as error:  # noqa: BLE001 - UncompletedJobError, FailedJobError, a failed sacct...
            from digitpairs.sweeps.slurm import job_outcome, record_lost_job

            status, reason = job_outcome(job, error)
            job_dir, extra = self._job_dir(overrides, idx)
            written = record_lost_job(job_dir, status, reason, overrides, {**extra, "slurm_job": job.job_id})
            log.error("job #%d %s: %s%s", idx, status, reason, "" if written else " (its own record is kept)")
            return JobReturn(
                overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED, _return_value=None
            )

    def _job_dir(self, overrides: list[str], idx: int) -> tuple[Path, dict[str, Any]]:
        """The folder that Hydra gives job ``idx`` (``hydra.sweep.dir``/``hydra.sweep.subdir``),
        and its model and seed."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf, open_dict

        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        hydra_config.set_config(cfg)
        try:
            job_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            extra = {
                "model": OmegaConf.select(cfg, "hydra.runtime.choices.model", default=None),
                "seed": OmegaConf.select(cfg, "seed", default=None),
            }
        finally:
            hydra_config.cfg = previous
        return job_dir, extra

    def _interrupted(self, sweep_dir: Path, jobs: list[Any], done: int) -> None:
        """Ctrl-C while waiting: write the summary of what finished, say how to stop the rest, exit 130."""
        from digitpairs.sweeps.summary import write_summary

        rows = write_summary(sweep_dir)
        finished = sum(r["status"] == "ok" for r in rows)
        array_id = jobs[0].job_id.split("_")[0]
        print(
            f"interrupted: {finished} of {len(jobs)} jobs finished, the others still run on SLURM "
            f"(stop them: scancel {array_id}); summary so far: {sweep_dir / 'summary.csv'} "
            f"(rebuild it later: python -m digitpairs.sweeps.summary {sweep_dir})",
            file=sys.stderr,
        )
        sys.exit(130)
