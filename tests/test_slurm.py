"""Sweeps through a real SLURM cluster (``make test-slurm`` starts one on the local machine).

Skipped, with one line, when no cluster answers ``sinfo`` (``make test``); under
``make test-slurm`` (``DIGITPAIRS_REQUIRE_SLURM=1``) a missing cluster is an error.
Partition: ``$DIGITPAIRS_SLURM_PARTITION`` (default ``debug``). With
``DIGITPAIRS_SLURM_LAUNCHER=submitit_slurm`` they run Hydra's own launcher, which fails
them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTITION = os.environ.get("DIGITPAIRS_SLURM_PARTITION", "debug")
LAUNCHER = os.environ.get("DIGITPAIRS_SLURM_LAUNCHER", "digitpairs_slurm")  # submitit_slurm: see the old failures
SLURM = [
    f"hydra/launcher={LAUNCHER}",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=5",
]
SHORT = ["model=convnet", "trainer.max_epochs=2", "data.n_pairs=300"]
LONG = ["model=convnet", "trainer.max_epochs=2000", "data.n_pairs=300", "trainer.enable_progress_bar=false"]


def _cluster_answers() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    usable = ("idle", "mix", "alloc", "comp")  # idle, mixed, allocated, completing (+ flags such as "*" or "~")
    return out.returncode == 0 and any(s.startswith(usable) for s in out.stdout.split())


if not _cluster_answers():
    message = "no SLURM cluster answers sinfo: `make test-slurm` starts one and runs these tests"
    if os.environ.get("DIGITPAIRS_REQUIRE_SLURM") == "1":
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

pytestmark = pytest.mark.slurm


def sweep(args: list[str], sweep_dir: Path, timeout: int = 420) -> subprocess.Popen:
    """Start ``train.py -m *args`` with its sweep folder in ``sweep_dir``."""
    cmd = [sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 420) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def slurm_job_ids(sweep_dir: Path) -> list[str]:
    """The SLURM ids of the sweep's jobs (``<array>_<task>``, by task), from submitit's folders."""
    ids = [p.name for p in (sweep_dir / ".submitit").glob("*_*") if p.is_dir()]
    return sorted(ids, key=lambda i: int(i.split("_")[1]))


def wait_until_training(sweep_dir: Path, n_jobs: int, proc: subprocess.Popen, timeout: float = 240) -> list[str]:
    """Wait until each of the sweep's ``n_jobs`` jobs has logged its data source (then it trains); their ids."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "jobs did not start training"
        logs = [p.read_text() for p in sweep_dir.glob(".submitit/*_*/*_log.out")]
        if len(logs) == n_jobs and all("data: " in log for log in logs):
            return slurm_job_ids(sweep_dir)
        time.sleep(0.5)


def test_make_study_through_slurm_gives_two_ok_rows_and_the_report(tmp_path):
    """`make study` with a SLURM launcher in ARGS (the plan used to add joblib's n_jobs)."""
    args = " ".join([*SLURM, *SHORT, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    out = subprocess.run(["make", "study", f"ARGS={args}"], cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_csv(tmp_path / "sweep" / "summary.csv")
    assert [(r["status"], r["model"], r["seed"]) for r in rows] == [("ok", "convnet", "0"), ("ok", "convnet", "1")]
    assert all(0.0 < float(r["test_acc"]) <= 1.0 for r in rows)
    assert (tmp_path / "sweep" / "report.md").is_file()
    script = next((tmp_path / "sweep" / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --cpus-per-task=1" in script and "#SBATCH --array=0-1" in script
    assert "threads=1" in out.stdout + out.stderr  # threads matched to cpus_per_task by the plan


def test_bad_job_is_an_invalid_row_and_exit_1_and_job_logs_stay_small(tmp_path):
    proc = sweep([*SLURM, *SHORT, "optim.lr1=0.09,-1", "trainer.max_epochs=4"], tmp_path / "sweep")
    code, _, err = finish(proc)
    assert code == 1, err[-3000:]
    rows = read_csv(tmp_path / "sweep" / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "invalid"]
    assert "optim.lr1=-1" in rows[1]["error"]
    assert err.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed")
    # Failure 4: the progress bar of the ok job (on by default) leaves at most a line per epoch in its log
    ok_id = slurm_job_ids(tmp_path / "sweep")[0]
    log = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit" / ok_id).glob("*_log.*"))
    assert log.count("\r") <= 8 and log.count("Epoch") <= 8, log[-2000:]


def test_scancel_and_time_limit_warning_leave_the_summary_with_killed_rows(tmp_path):
    """Two long jobs train; job 0 gets SLURM's time-limit
    warning (USR2, as submitit asks SLURM to send it), job 1 is cancelled with scancel.
    The sweep still writes its summary, with both jobs as killed rows (the warned one
    with its checkpoint), and exits 1 with one line."""
    sweep_dir = tmp_path / "sweep"
    proc = sweep([*SLURM, *LONG, "seed=0,1"], sweep_dir)
    warned, cancelled = wait_until_training(sweep_dir, 2, proc)
    time.sleep(2)  # a few epochs
    subprocess.run(["scancel", "--signal=USR2", warned], check=True, timeout=30)
    subprocess.run(["scancel", cancelled], check=True, timeout=30)
    code, _, err = finish(proc)
    assert code == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 2 jobs failed") and last.endswith(f"see {sweep_dir / 'summary.csv'}")
    rows = read_csv(sweep_dir / "summary.csv")
    assert [r["status"] for r in rows] == ["killed", "killed"]
    assert "stopped by SIGUSR2 (SLURM's warning before the time limit) after epoch" in rows[0]["error"]
    assert rows[1]["error"].startswith(f"SLURM job {cancelled} CANCELLED")
    assert (sweep_dir / "ranking.csv").is_file() and (sweep_dir / "best_overrides.txt").is_file()
    for row in rows:
        assert json.loads((sweep_dir / row["job"] / "metrics.json").read_text())["status"] == "killed"
    assert (sweep_dir / rows[0]["job"] / "checkpoints" / "last.ckpt").stat().st_size > 100_000  # saved on the warning


def test_time_limit_too_short_is_refused_before_submission(tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            *SLURM,
            "hydra.launcher.timeout_min=1",
            *SHORT,
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: hydra.launcher.timeout_min=1 is not allowed")
    assert not (tmp_path / "sweep").exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout == before
