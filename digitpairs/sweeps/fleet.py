"""The fleet launcher: a sweep's jobs trained side by side, several runs to one packed network.

    python train.py -m hydra/launcher=fleet seed=0,1,2,3 optim.lr1=0.05,0.09

``hydra/launcher=fleet`` (:mod:`hydra_plugins.digitpairs_fleet`) hands each job to this
module. Jobs whose configs differ only in keys that a pack can vary per run
(:data:`digitpairs.training.pack.PER_RUN_KEYS`: the seed, learning rates, weight decay,
momentum, loss weights, ...) are grouped; each group is split into packs of at most
``hydra.launcher.pack`` runs, and ``hydra.launcher.n_jobs`` packs train at a time, each in
a process of its own (:func:`digitpairs.training.pack.train_pack`). Jobs that cannot share
a pack (a resumed run, extra callbacks, 16-bit precision, more than one device, a job
alone in its group, a network with a layer that does not pack) run as ordinary solo runs
in the same launcher.

Each job's folder is written as a solo run's (``.hydra/``, ``train.log``,
``metrics.json``, TensorBoard events, ``checkpoints/last.ckpt``), so the sweep's summary,
report and ranking read it as any. A pack process that dies (killed, out of memory)
leaves each of its unfinished jobs recorded ``killed`` with the reason, and the sweep
summary is written all the same.

Processes are forked from the launcher, which imports torch and Lightning once: a pack
starts at once, without imports (on systems without ``fork``, they are spawned).
"""

from __future__ import annotations

import copy
import logging
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitpairs.utils.errors import require_choice, require_number
from digitpairs.utils.io import FolderLock

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "loop", "grouped")
PACKABLE_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "64-true", "64")


@dataclass
class Job:
    """One job of the sweep: its number and overrides, and once known its folder and record."""

    idx: int
    overrides: list[str]
    job_dir: Path | None = None
    record: dict[str, Any] | None = None


@dataclass
class Task:
    """What one process runs: a pack (``solo=False``) or one ordinary solo job."""

    jobs: list[Job]
    solo: bool
    why_solo: str = ""
    pids: list[int] = field(default_factory=list)


def check_params(pack: Any, n_jobs: Any, strategy: Any) -> tuple[int, int, str]:
    """The launcher's keys, checked: ``(pack, n_jobs, strategy)``; ``n_jobs=-1`` is one per core.

    Raises:
        ConfigError: ``hydra.launcher.pack`` not an integer in [1, 1024], ``n_jobs`` not -1
            or an integer in [1, 1024], an unknown ``strategy``.
    """
    require_number("hydra.launcher.pack", pack, 1, integer=True, high=1024, high_strict=False)
    if n_jobs != -1:
        require_number("hydra.launcher.n_jobs", n_jobs, 1, integer=True, high=1024, high_strict=False)
    require_choice("hydra.launcher.strategy", strategy, STRATEGIES)
    if n_jobs == -1:
        n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return pack, n_jobs, strategy


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def signature(overrides: Sequence[str]) -> tuple[str, ...]:
    """What a job's config depends on besides its per-run keys: two jobs with the same
    signature (under one sweep's command line) differ only in those keys."""
    from digitpairs.training.pack import PER_RUN_KEYS

    return tuple(sorted(o for o in overrides if _key(o) not in PER_RUN_KEYS))


def unpackable_reason(cfg) -> str | None:
    """Why a job of this composed config (``hydra`` node included) cannot train in a pack,
    or None. Only what the config says; the network itself is checked in the pack's process."""
    from omegaconf import OmegaConf

    if cfg.get("ckpt_path"):
        return "it resumes a checkpoint"
    extra = set(cfg.get("callbacks") or {}) - {"checkpoint_on_signal"}
    if extra:
        return f"extra callbacks ({', '.join(sorted(extra))})"
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    if precision not in PACKABLE_PRECISIONS:
        return f"trainer.precision={precision} (a gradient scaler would be shared)"
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if devices not in (1, "1", [0]) and not (isinstance(devices, str) and devices == "auto"):
        return f"trainer.devices={devices}"
    if OmegaConf.select(cfg, "hydra.job.chdir", default=False):
        return "hydra.job.chdir=true (one working folder per job)"
    if OmegaConf.select(cfg, "trainer.max_steps", default=-1) not in (-1, None):
        return "trainer.max_steps is set"
    return None


def split(jobs: list[Job], pack: int, n_jobs: int) -> list[list[Job]]:
    """A group's jobs in packs of at most ``pack``, as even as possible; when the group
    fills more than ``n_jobs`` packs, their number is a multiple of ``n_jobs`` (so the last
    round of packs leaves no process idle)."""
    n = math.ceil(len(jobs) / pack)
    if n > n_jobs:
        n = min(len(jobs), math.ceil(n / n_jobs) * n_jobs)
    size, extra = divmod(len(jobs), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(jobs[start:end])
        start = end
    return out


def plan_tasks(jobs: list[Job], pack: int, n_jobs: int, reason_of) -> list[Task]:
    """Group ``jobs`` by :func:`signature`, ask ``reason_of(job)`` (one job per group) why
    the group cannot pack (None: it can), and split the rest into packs. Groups keep the
    sweep's order (the presets list the slowest model first); a pack of one runs solo."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(signature(job.overrides), []).append(job)
    tasks: list[Task] = []
    for members in groups.values():
        reason = reason_of(members[0]) if len(members) > 1 else "alone in its group"
        if reason:
            tasks += [Task([job], solo=True, why_solo=reason) for job in members]
            continue
        for part in split(members, pack, n_jobs):
            tasks.append(Task(part, solo=len(part) == 1, why_solo="alone in its pack" if len(part) == 1 else ""))
    return tasks


# ---- in a pack's process -----------------------------------------------------------
def compose_job(hydra_context, config, job: Job):
    """The job's composed config, numbered as Hydra numbers it (``hydra.job.num``, ``id``)."""
    from omegaconf import open_dict

    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(job.overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{job.idx}"
        sweep_config.hydra.job.num = job.idx
    return sweep_config


def job_folder(hydra_context, config, job: Job) -> tuple[Path, dict[str, Any]]:
    """The job's folder (``hydra.sweep.dir``/``hydra.sweep.subdir``), as Hydra resolves it, and
    its model and seed (:func:`digitpairs.utils.config.job_folder`)."""
    from digitpairs.utils.config import job_folder as folder_of

    return folder_of(hydra_context, config, job.overrides, job.idx)


def prepare_job(hydra_context, config, job: Job):
    """What Hydra's ``run_job`` does before it calls the task, for one run of a pack: the
    job's folder, locked for this process (:class:`~digitpairs.utils.io.FolderLock`), and its
    ``.hydra/`` files, and its task config resolved against its own Hydra config. Returns
    ``(sweep_config, task_cfg)``.

    Raises:
        FolderInUse: another process holds the job folder's lock."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import _save_config
    from omegaconf import OmegaConf, open_dict, read_write

    sweep_config = compose_job(hydra_context, config, job)
    hydra_config = HydraConfig.instance()
    hydra_config.set_config(sweep_config)
    output_dir = os.path.join(
        str(OmegaConf.select(sweep_config, "hydra.sweep.dir")), str(sweep_config.hydra.sweep.subdir)
    )
    with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
        sweep_config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    hydra_config.set_config(sweep_config)
    task_cfg = copy.deepcopy(sweep_config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    FolderLock(output_dir).acquire()  # the job folder is this process's until it ends (as a solo run's)
    if sweep_config.hydra.output_subdir is not None:
        hydra_output = Path(sweep_config.hydra.runtime.output_dir) / str(sweep_config.hydra.output_subdir)
        _save_config(task_cfg, "config.yaml", hydra_output)
        _save_config(copy.deepcopy(hydra_config.cfg), "hydra.yaml", hydra_output)
        _save_config(sweep_config.hydra.overrides.task, "overrides.yaml", hydra_output)
    resolved = OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True))
    job.job_dir = Path(sweep_config.hydra.runtime.output_dir)
    return sweep_config, resolved


def _pack_logging(sweep_configs: list, task_cfgs: list) -> None:
    """Hydra's job logging for a pack: the console, and each run's ``train.log`` with the
    lines written for that run or for the whole pack."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log

    from digitpairs.training.pack import RunFilter

    HydraConfig.instance().set_config(sweep_configs[0])
    configure_log(sweep_configs[0].hydra.job_logging, sweep_configs[0].hydra.verbose)
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    formatter = (
        files[0].formatter if files else logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    )
    for h in files:
        root.removeHandler(h)
        h.close()
    for k, (sweep_config, cfg) in enumerate(zip(sweep_configs, task_cfgs, strict=True)):
        handler = logging.FileHandler(Path(cfg.paths.output_dir) / f"{sweep_config.hydra.job.name}.log")
        handler.setFormatter(formatter)
        handler.addFilter(RunFilter(k))
        root.addHandler(handler)


def check_network_packs(cfg) -> str | None:
    """Why the network of ``cfg`` (a resolved task config) cannot pack, or None: one model is
    built (on a forked random state) and its network packed with a copy of itself."""
    import torch

    from digitpairs.models.packed import NotPackable, pack
    from digitpairs.training.run import instantiate_checked

    try:
        with torch.random.fork_rng(devices=[]):
            model = instantiate_checked(cfg.model, "model")
            pack([model.net, copy.deepcopy(model.net)])
    except NotPackable as err:
        return f"its network does not pack ({err})"
    except Exception:  # noqa: BLE001 - a bad config: the solo run reports it as it would
        return "its config is refused (the solo run says why)"
    return None


def run_task(task: Task, hydra_context, config, task_function, strategy: str, conn) -> None:
    """The body of one process: a pack, or one solo job (Hydra's own ``run_job``). Each
    finished job is sent to the launcher as ``(idx, job_dir, record)``."""
    from hydra.core.utils import run_job

    def send(job: Job, record: dict[str, Any] | None) -> None:
        conn.send((job.idx, str(job.job_dir) if job.job_dir else None, record))

    if not task.solo:
        sweep_configs, cfgs = zip(*(prepare_job(hydra_context, config, job) for job in task.jobs), strict=True)
        reason = check_network_packs(cfgs[0])
        if reason is None:
            _train_pack(task, list(sweep_configs), list(cfgs), hydra_context, task_function, strategy, send)
            return
        log.warning("fleet: jobs %s run solo: %s", ",".join(str(j.idx) for j in task.jobs), reason)
    for job in task.jobs:
        sweep_config = compose_job(hydra_context, config, job)
        ret = run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        job.job_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else None
        send(job, _read_record(job.job_dir))


def _train_pack(task: Task, sweep_configs, cfgs, hydra_context, task_function, strategy, send) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobStatus

    from digitpairs.training.pack import train_pack

    _pack_logging(sweep_configs, cfgs)
    callbacks = hydra_context.callbacks
    for sweep_config in sweep_configs:
        HydraConfig.instance().set_config(sweep_config)
        callbacks.on_job_start(config=sweep_config, task_function=task_function)
    shared, per_run = pack_overrides([job.overrides for job in task.jobs])
    log.info(
        "fleet: a pack of %d runs (jobs %s): %s; per run: %s",
        len(task.jobs),
        ",".join(str(j.idx) for j in task.jobs),
        " ".join(shared),
        " | ".join(" ".join(o) or "-" for o in per_run),
    )

    def report(k: int, record: dict[str, Any]) -> None:
        job, sweep_config = task.jobs[k], sweep_configs[k]
        HydraConfig.instance().set_config(sweep_config)
        ret = JobReturn(overrides=list(job.overrides), cfg=cfgs[k], hydra_cfg=sweep_config, working_dir=os.getcwd())
        ret.return_value, ret.status = record.get("test_acc"), JobStatus.COMPLETED
        callbacks.on_job_end(config=sweep_config, job_return=ret)
        send(job, record)

    train_pack(cfgs, report, strategy)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def pack_overrides(overrides: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """The overrides that every job of a pack shares, in the first job's order, and each
    job's others (what varies between its runs): ``(shared, per_run)``."""
    shared = [o for o in overrides[0] if all(o in job for job in overrides[1:])]
    return shared, [[o for o in job if o not in shared] for job in overrides]


def _read_record(job_dir: Path | None) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((job_dir / "metrics.json").read_text()) if job_dir else None
    except (OSError, ValueError):
        return None


def _child(task: Task, hydra_context, config, task_function, strategy: str, conn, singleton_state) -> None:
    """A process's entry: its own Hydra state, the task, then exit."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    setup_globals()
    if singleton_state is not None:
        Singleton.set_state(singleton_state)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C is the launcher's to handle
    try:
        run_task(task, hydra_context, config, task_function, strategy, conn)
    finally:
        conn.close()


def _exit_reason(exitcode: int | None, pid: int) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (SIGKILL: the OOM killer, or kill -9)" if name == "SIGKILL" else ""
        return f"the fleet's process {pid} was killed by {name}{hint} before this job finished"
    return f"the fleet's process {pid} exited with code {exitcode} before this job finished"


def run_tasks(tasks: list[Task], n_jobs: int, hydra_context, config, task_function, strategy: str) -> None:
    """Run ``tasks`` in up to ``n_jobs`` processes at a time; fill in each job's folder and
    record. A process that dies leaves each of its unfinished jobs recorded ``killed``."""
    from multiprocessing.connection import wait

    from hydra.core.singleton import Singleton

    import digitpairs.training.pack  # noqa: F401 - torch and Lightning, imported once, before forking

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    state = Singleton.get_state() if method == "spawn" else None
    pending = list(tasks)
    running: dict[Any, tuple[Task, Any]] = {}  # sentinel -> (task, process); conn -> task
    conns: dict[Any, Task] = {}
    try:
        while pending or running:
            while pending and len(running) < n_jobs:
                task = pending.pop(0)
                parent, child = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child, args=(task, hydra_context, config, task_function, strategy, child, state)
                )
                process.start()
                child.close()
                task.pids.append(process.pid)
                running[process.sentinel] = (task, process)
                conns[parent] = task
            for ready in wait(list(running) + list(conns)):
                if ready in conns:
                    task = conns[ready]
                    try:
                        idx, job_dir, record = ready.recv()
                    except (EOFError, OSError):
                        del conns[ready]
                        continue
                    job = next(j for j in task.jobs if j.idx == idx)
                    job.job_dir = Path(job_dir) if job_dir else None
                    job.record = record
                elif ready in running:
                    task, process = running.pop(ready)
                    process.join()
                    for conn in [c for c, t in conns.items() if t is task]:
                        while conn.poll():
                            try:
                                idx, job_dir, record = conn.recv()
                            except (EOFError, OSError):
                                break
                            job = next(j for j in task.jobs if j.idx == idx)
                            job.job_dir, job.record = (Path(job_dir) if job_dir else None), record
                        del conns[conn]
                    if process.exitcode != 0:
                        _record_lost(task, hydra_context, config, _exit_reason(process.exitcode, process.pid))
    except KeyboardInterrupt:
        for task, process in running.values():
            process.kill()
            process.join()
            _record_lost(task, hydra_context, config, "the sweep was interrupted (Ctrl-C) before this job finished")
        for task in pending:
            _record_lost(task, hydra_context, config, "the sweep was interrupted (Ctrl-C) before this job started")
        raise


def _record_lost(task: Task, hydra_context, config, reason: str) -> None:
    """Write a ``killed`` record for each job of ``task`` that finished without one."""
    from digitpairs.sweeps.slurm import record_lost_job

    for job in task.jobs:
        if job.record is not None and job.record.get("status") in ("ok", "failed", "invalid", "killed"):
            continue
        folder, about = job_folder(hydra_context, config, job)
        job.job_dir = job.job_dir or folder
        record_lost_job(job.job_dir, "killed", reason, job.overrides, about)
        job.record = _read_record(job.job_dir)
        log.error("job #%d killed: %s", job.idx, reason)


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """The fleet launcher's ``launch``: plan, run, and one ``JobReturn`` per job, in order."""
    from hydra.core.utils import JobReturn, JobStatus

    from digitpairs.utils.errors import one_line_errors

    params = launcher.params
    with one_line_errors():
        pack, n_jobs, strategy = check_params(params.get("pack"), params.get("n_jobs"), params.get("strategy"))
    jobs = [Job(idx, list(overrides)) for idx, overrides in enumerate(job_overrides, start=initial_job_idx)]
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)

    def reason_of(job: Job) -> str | None:
        return unpackable_reason(compose_job(launcher.hydra_context, launcher.config, job))

    tasks = plan_tasks(jobs, pack, n_jobs, reason_of)
    packs = [t for t in tasks if not t.solo]
    solo = [t for t in tasks if t.solo]
    log.info(
        "fleet: %s: %s (%s runs) and %s, at most %d at a time; sweep folder %s",
        _count(len(jobs), "job"),
        _count(len(packs), "pack"),
        "+".join(str(len(t.jobs)) for t in packs) or "0",
        _count(len(solo), "solo run"),
        n_jobs,
        sweep_dir,
    )
    for reason in sorted({t.why_solo for t in solo}):
        log.info(
            "fleet: solo (%s): jobs %s", reason, ",".join(str(t.jobs[0].idx) for t in solo if t.why_solo == reason)
        )
    try:
        run_tasks(tasks, n_jobs, launcher.hydra_context, launcher.config, launcher.task_function, strategy)
    except KeyboardInterrupt:
        from digitpairs.sweeps.summary import write_summary

        rows = write_summary(sweep_dir)
        print(
            f"interrupted: {sum(r['status'] == 'ok' for r in rows)} of {len(jobs)} jobs finished; "
            f"summary so far: {sweep_dir / 'summary.csv'}",
            file=sys.stderr,
        )
        sys.exit(130)
    returns = []
    for job in jobs:
        value = (job.record or {}).get("test_acc")
        returns.append(
            JobReturn(
                overrides=job.overrides,
                working_dir=str(job.job_dir),
                status=JobStatus.COMPLETED,
                _return_value=value,
            )
        )
    return returns
