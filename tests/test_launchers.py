"""The SLURM launcher's parts that need no cluster: the time-limit check, killed-job
records in the summary, the launch plan with a chosen launcher, and the checkpoint on
SLURM's warning signal (sent here by the test). tests/test_slurm.py runs them on a real
cluster (``make test-slurm``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitpairs.sweeps.launcher_plan import plan
from digitpairs.sweeps.slurm import check_time_limit, job_outcome, record_lost_job
from digitpairs.sweeps.summary import write_summary
from digitpairs.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_time_limit_too_short_for_the_warning_signal_is_refused():
    check_time_limit(3, 120)  # 180 s: 60 s of work before the warning
    check_time_limit(1, 0)
    with pytest.raises(ConfigError) as err:
        check_time_limit(2, 120)
    assert str(err.value).startswith("hydra.launcher.timeout_min=2 is not allowed: expected an integer >= 3 (minutes)")
    with pytest.raises(ConfigError, match=r"signal_delay_s=-1 "):
        check_time_limit(10, -1)
    with pytest.raises(ConfigError, match=r"timeout_min='5' "):
        check_time_limit("5", 120)


def test_short_time_limit_exits_2_before_anything_is_submitted(tmp_path):
    """No cluster needed: the launcher refuses it in setup, before the sweeper composes or submits."""
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=digitpairs_slurm",
        "hydra.launcher.timeout_min=2",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: hydra.launcher.timeout_min=2 is not allowed")
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "sweep").exists()


class _Job:
    def __init__(self, job_id: str, state: str) -> None:
        self.job_id, self.state = job_id, state


class UncompletedJobError(RuntimeError):  # submitit's names: job_outcome reads them, it never imports submitit
    pass


class FailedJobError(UncompletedJobError):
    pass


def test_job_outcome_names_slurm_state_and_what_to_do():
    lost = UncompletedJobError("Job 7_1 (task: 0) with path /x\nhas not produced any output (state: TIMEOUT)")
    assert job_outcome(_Job("7_1", "TIMEOUT"), lost) == (
        "killed",
        "SLURM job 7_1 TIMEOUT: time limit reached: raise hydra.launcher.timeout_min",
    )
    assert job_outcome(_Job("7_0", "OUT_OF_MEMORY"), lost)[1].endswith("out of memory: raise hydra.launcher.mem_gb")
    assert job_outcome(_Job("7_2", "CANCELLED by 0"), lost)[1].startswith("SLURM job 7_2 CANCELLED by 0: cancelled")
    assert job_outcome(_Job("7_3", "NODE_FAIL"), lost)[1] == "SLURM job 7_3 NODE_FAIL: its node failed"
    trace = (
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
        'last):\n  File "x.py", line 1\nValueError: boom\n----------------------\nYou can check full logs with '
        "'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /a.err\n  - /a.out"
    )
    status, reason = job_outcome(_Job("7_4", "COMPLETED"), FailedJobError(trace))
    assert (status, reason) == ("failed", "SLURM job 7_4 (COMPLETED) raised: ValueError: boom")


def test_killed_job_is_a_row_of_the_summary_and_finished_records_are_kept(tmp_path):
    ok = tmp_path / "0"
    (ok / ".hydra").mkdir(parents=True)
    (ok / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (ok / "metrics.json").write_text(
        json.dumps({"status": "ok", "model": "convnet", "seed": 0, "val_acc": 0.9, "test_acc": 0.8})
    )
    # a finished job that SLURM killed afterwards keeps its own record
    assert not record_lost_job(ok, "killed", "SLURM job 3_0 CANCELLED by 0: ...", ["seed=0"], {})
    # a job killed before Hydra made its folder: the launcher writes both files
    reason = "SLURM job 3_1 TIMEOUT: time limit reached: raise hydra.launcher.timeout_min"
    assert record_lost_job(
        tmp_path / "1",
        "killed",
        reason,
        ["model=convnet", "seed=1"],
        {"model": "convnet", "seed": 1, "slurm_job": "3_1"},
    )
    rows = write_summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "killed")]
    assert rows[1]["error"] == reason and rows[1]["overrides"] == "model=convnet seed=1" and rows[1]["seed"] == 1
    assert (tmp_path / "ranking.csv").is_file() and (tmp_path / "best_overrides.txt").is_file()


def test_plan_respects_a_launcher_chosen_in_args():
    slurm = ["hydra/launcher=digitpairs_slurm", "hydra.launcher.partition=debug"]
    assert plan(cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=slurm) == "threads=1"
    assert (
        plan(cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=[*slurm, "hydra.launcher.cpus_per_task=4"])
        == "threads=4"
    )
    assert plan(cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=[*slurm, "threads=2"]) == ""
    assert (
        plan(cores=2, cuda=False, amx_bf16=False, avx512_bf16=False, args=["model=ws"])
        == "hydra/launcher=fleet hydra.launcher.n_jobs=2 threads=1"
    )  # no launcher chosen: the default plan
    assert (
        plan(cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=["threads=2", "trainer.precision=32-true"])
        == "hydra/launcher=fleet hydra.launcher.n_jobs=2"
    )


def test_make_study_passes_args_to_the_plan():
    args = "hydra/launcher=digitpairs_slurm hydra.launcher.partition=debug hydra.launcher.cpus_per_task=1"
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "study", f"ARGS={args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(ln for ln in out.stdout.splitlines() if "train.py -m experiment=study" in ln)
    assert "joblib" not in line and "n_jobs" not in line and " threads=1 " in line and line.endswith(args)


def test_the_plan_reads_the_cpu_s_bf16_flags(tmp_path):
    from digitpairs.sweeps.launcher_plan import cpu_has_flag

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_flag("avx512_bf16", cpuinfo) and not cpu_has_flag("amx_bf16", cpuinfo)
    assert not cpu_has_flag("avx512", cpuinfo)  # whole flags only
    assert not cpu_has_flag("avx512_bf16", tmp_path / "missing")


@pytest.mark.parametrize("target", ["study", "grid", "beyond"])
def test_make_tells_the_plan_its_sweep(target, tmp_path):
    """make study/grid/beyond pass their experiment= to the plan, which adds bf16 for the study only."""
    fake = tmp_path / "python"  # prints its arguments: what make passes to the plan
    fake.write_text('#!/bin/sh\nif [ "$1" = -m ]; then echo "plan: $*"; fi\n')
    fake.chmod(0o755)
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.install-stamp", target, f"PY={fake}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"plan: -m digitpairs.sweeps.launcher_plan experiment={target}" in out.stdout


@pytest.mark.slow
def test_warning_signal_mid_training_saves_a_checkpoint_and_records_killed(tmp_path):
    """SLURM's warning (USR2), sent by the test to a run that trains: it finishes its
    epoch, saves checkpoints/last.ckpt at the epoch boundary, records status killed, exits 1."""
    import torch

    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        "model=convnet",
        "callbacks.checkpoint_on_signal.only_under_slurm=false",
        "trainer.max_epochs=1000",
        "data.n_pairs=300",
        "threads=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not list(run_dir.glob("*.log")) or "data: " not in next(run_dir.glob("*.log")).read_text():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(2.0)  # a few epochs
        proc.send_signal(signal.SIGUSR2)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGUSR2 (SLURM's warning before the time limit) after epoch ")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "killed" and metrics["error"] == last[len("error: ") :]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    epochs = int(last.split("after epoch ")[1].split()[0])
    assert 1 <= epochs < 1000 and ckpt["epoch"] == epochs
    progress = ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert progress["completed"] == progress["started"] == epochs  # an epoch boundary: nothing half done
    assert ckpt["global_step"] == epochs * 3  # 240 training pairs, batches of 100: 3 steps per epoch
