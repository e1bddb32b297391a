"""Run and sweep folders as people have them: shared by two processes, shared by the jobs of
one sweep, a file, read-only, full; a refused run retried in its folder; and a sweep whose
worker is killed.

A folder in use is refused through its lock (``<folder>/.lock``, ``fcntl.flock``), which
the kernel releases when its process ends. Read-only and full file systems are tmpfs
mounts made here (root only; without mount rights a path under /sys stands for a
read-only one and the full-disk cases are skipped).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitpairs.utils.config import check_output_dir
from digitpairs.utils.errors import ConfigError
from digitpairs.utils.io import FolderInUse, FolderLock

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "model=convnet",
    "data.n_pairs=300",
    "threads=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=none",
]


def entry_point(script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python <script> <args>`` in the project root, its output captured."""
    cmd = [sys.executable, script, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def train(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return entry_point("train.py", *args, timeout=timeout)


def only_line(stderr: str) -> str:
    """The single non-empty line of ``stderr`` (fails on a traceback or more lines)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    return lines[0]


def listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def wait_for(condition, timeout: float = 180, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        assert proc is None or proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)


def writer_of(path: Path) -> int | None:
    """The process that has ``path`` open (Linux: ``/proc/<pid>/fd``), e.g. the worker whose
    job logs into a ``train.log``; None if none."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
    return None


# ---- the lock itself -------------------------------------------------------------------
HOLD = (
    "import sys, time; from digitpairs.utils.io import FolderLock; "
    "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
)
TRY = (
    "import sys; from digitpairs.utils.io import FolderLock, FolderInUse\n"
    "try:\n    FolderLock(sys.argv[1]).acquire(); print('acquired')\n"
    "except FolderInUse as err:\n    print('in use by', err.holder)"
)


def try_lock(folder: Path) -> str:
    out = subprocess.run([sys.executable, "-c", TRY, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_folder_lock_is_one_process_s_reentrant_and_freed_when_its_process_is_killed(tmp_path):
    run = tmp_path / "run"
    lock = FolderLock(run).acquire()
    assert (run / ".lock").read_text() == f"{os.getpid()}\n"
    assert FolderLock(run).acquire() is not None and FolderLock(run).held_here()  # again, in this process
    assert try_lock(run) == f"in use by {os.getpid()}"  # another process is refused, told who holds it
    lock.release()
    assert try_lock(run) == f"in use by {os.getpid()}"  # taken twice: held until released twice
    lock.release()
    assert not FolderLock(run).held_here() and try_lock(run) == "acquired"

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert FolderLock(run).holder() == str(holder.pid)
        with pytest.raises(FolderInUse) as err:
            FolderLock(run).acquire()
        assert err.value.holder == str(holder.pid)
        holder.send_signal(signal.SIGKILL)  # as the OOM killer does: no clean-up runs
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert FolderLock(run).holder() is None
    with FolderLock(run):  # the kernel released it with the process
        assert (run / ".lock").read_text() == f"{os.getpid()}\n"


# ---- a refused or failed run does not block a retry; a finished one does ----------------
@pytest.mark.parametrize(
    ("record", "refused_with"),
    [
        ({"status": "invalid", "error": "optim.lr1=0 is not allowed: expected a number > 0"}, None),
        ({"status": "failed", "error": "run failed: diverged"}, None),
        ({"status": "ok", "test_acc": 0.9}, "it holds a run with status ok (metrics.json)"),
        ({"status": "killed", "error": "stopped by SIGUSR2"}, "it holds a run with status killed (metrics.json)"),
        ("{not json", "it holds a metrics.json that cannot be read (metrics.json)"),
        ({}, "it holds a metrics.json that cannot be read (metrics.json)"),
    ],
    ids=["invalid", "failed", "ok", "killed", "torn", "no-status"],
)
def test_a_run_folder_takes_a_retry_unless_it_holds_a_result(tmp_path, record, refused_with):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(record if isinstance(record, str) else json.dumps(record))
    if refused_with is None:
        check_output_dir("hydra.run.dir", run, multirun=False)
        return
    with pytest.raises(ConfigError) as err:
        check_output_dir("hydra.run.dir", run, multirun=False)
    assert str(err.value) == (
        f"hydra.run.dir='{run}' is not allowed: expected a folder that holds no finished run; "
        f"{refused_with}, which a new run would overwrite: choose another hydra.run.dir"
    )


@pytest.mark.slow
def test_a_run_refused_for_its_config_does_not_block_the_corrected_command(tmp_path):
    run = tmp_path / "run"
    refused = train(*QUICK, "trainer.max_epochs=1", "optim.lr1=0", f"hydra.run.dir={run}")
    assert refused.returncode == 2
    assert only_line(refused.stderr) == "error: optim.lr1=0 is not allowed: expected a number > 0"
    assert json.loads((run / "metrics.json").read_text())["status"] == "invalid"

    corrected = train(*QUICK, "trainer.max_epochs=1", "optim.lr1=0.05", f"hydra.run.dir={run}")
    assert corrected.returncode == 0, corrected.stderr[-3000:]
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "ok" and "optim.lr1=0.05" in record["overrides"]
    assert listing(run) == [
        ".hydra",
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        ".lock",
        "checkpoints",
        "checkpoints/last.ckpt",
        "metrics.json",
        "train.log",
    ]

    again = train(*QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run}")  # now it holds a finished run
    assert again.returncode == 2
    assert only_line(again.stderr) == (
        f"error: hydra.run.dir='{run}' is not allowed: expected a folder that holds no finished run; it holds "
        "a run with status ok (metrics.json), which a new run would overwrite: choose another hydra.run.dir"
    )
    assert json.loads((run / "metrics.json").read_text()) == record


# ---- two processes, one folder ------------------------------------------------------------
def in_use_line(key: str, folder: Path, pid: int | str) -> str:
    return (
        f"error: {key}='{folder}' is not allowed: expected a folder that no other process is writing to; "
        f"process {pid} holds its lock ({folder / '.lock'}): wait for it to end, or choose another {key}"
    )


@pytest.mark.slow
def test_two_runs_started_at_once_into_one_folder_one_is_refused(tmp_path):
    run = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, "train.py", *QUICK, "trainer.max_epochs=3", f"seed={seed}", f"hydra.run.dir={run}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [(p.pid, p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for _, code, _ in results)
    assert codes == [0, 2], results
    (winner_pid, _, _), seed = next((r, s) for r, s in zip(results, (1, 2), strict=True) if r[1] == 0)
    loser = next(r for r in results if r[1] == 2)
    assert only_line(loser[2]) == in_use_line("hydra.run.dir", run, winner_pid)
    # the folder is the winner's alone: its config, its log, its record
    assert listing(run) == [
        ".hydra",
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        ".lock",
        "checkpoints",
        "checkpoints/last.ckpt",
        "metrics.json",
        "train.log",
    ]
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "ok" and record["seed"] == seed and record["epochs"] == 3
    assert f"seed={seed}" in (run / ".hydra" / "overrides.yaml").read_text()
    assert (run / ".lock").read_text() == f"{winner_pid}\n"


@pytest.mark.parametrize("name", ["run", "sweep"])
def test_a_folder_that_another_process_holds_is_refused_before_anything_is_written(tmp_path, name):
    folder = tmp_path / name
    with FolderLock(folder):  # this test's process is the other process
        mode = ["-m", "seed=0,1", f"hydra.sweep.dir={folder}"] if name == "sweep" else [f"hydra.run.dir={folder}"]
        out = train(*QUICK, "trainer.max_epochs=1", *mode)
    assert out.returncode == 2
    key = "hydra.sweep.dir" if name == "sweep" else "hydra.run.dir"
    assert only_line(out.stderr) == in_use_line(key, folder, os.getpid())
    assert listing(folder) == [".lock"]


@pytest.mark.slow
def test_a_single_run_into_a_fleet_job_s_folder_is_refused_while_the_pack_trains(tmp_path):
    """The fleet writes its job folders itself: each is locked by the pack's process."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=fleet", "hydra.launcher.n_jobs=1", *QUICK]
    fleet = subprocess.Popen(
        [*cmd, "seed=0,1", "trainer.max_epochs=500", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = sweep / "000" / "train.log"
        wait_for(lambda: (sweep / "000" / "checkpoints").is_dir() and writer_of(log), proc=fleet)
        pack_pid = writer_of(log)  # the pack's process, which trains jobs 000 and 001
        assert pack_pid != fleet.pid
        out = train(*QUICK, "trainer.max_epochs=1", f"hydra.run.dir={sweep / '000'}")
        assert out.returncode == 2
        assert only_line(out.stderr) == in_use_line("hydra.run.dir", sweep / "000", pack_pid)
        assert "trainer.max_epochs=500" in (sweep / "000" / ".hydra" / "overrides.yaml").read_text()  # the job's
        os.kill(pack_pid, signal.SIGKILL)
        _, stderr = fleet.communicate(timeout=120)
    finally:
        fleet.kill()
    assert fleet.returncode == 1
    assert only_line(stderr).startswith(
        f"error: 2 of 2 jobs failed (job 000: the fleet's process {pack_pid} was killed"
    )
    with (sweep / "summary.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["killed", "killed"]


# ---- one sweep, jobs that would share a folder -------------------------------------------
@pytest.mark.parametrize(
    ("launcher", "subdir", "shared"),
    [
        ([], "same", "same"),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "same", "same"),
        (["hydra/launcher=fleet"], "${model_name}", "convnet"),  # resolved for every job: one model
    ],
    ids=["basic", "joblib", "fleet"],
)
def test_a_sweep_whose_jobs_share_a_folder_is_refused_before_any_job_runs(tmp_path, launcher, subdir, shared):
    sweep = tmp_path / "sweep"
    out = train("-m", *launcher, *QUICK, "seed=0,1", f"hydra.sweep.dir={sweep}", f"hydra.sweep.subdir={subdir}")
    assert out.returncode == 2
    assert only_line(out.stderr) == (
        f"error: hydra.sweep.subdir='{subdir}' is not allowed: expected a value that differs between a sweep's jobs "
        f"(e.g. ${{hydra.job.num}}); jobs 0 and 1 would both write into {sweep / shared}, and one would overwrite "
        "the other's results"
    )
    assert listing(sweep) == [".lock", "multirun.yaml"]  # no job ran


@pytest.mark.parametrize(
    ("key", "value", "missing"),
    [
        ("hydra.run.dir", "{tmp}/${{nokey}}", "nokey"),
        ("hydra.sweep.dir", "{tmp}/${{nokey}}", "nokey"),
        ("hydra.sweep.subdir", "${{model.name}}", "model.name"),
        ("hydra.sweep.subdir", "${{hydra.job.num}}_${{model.name}}", "model.name"),  # numbered, yet unresolvable
    ],
    ids=["run dir", "sweep dir", "subdir", "numbered subdir"],
)
def test_a_folder_name_that_does_not_resolve_gets_one_line_before_any_job_runs(tmp_path, key, value, missing):
    value = value.format(tmp=tmp_path)
    sweep = ["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"] if key != "hydra.run.dir" else []
    out = train(*sweep, *QUICK, "trainer.max_epochs=1", f"{key}={value}")
    assert out.returncode == 2
    assert only_line(out.stderr) == (
        f"error: {key}='{value}' is not allowed: expected a folder name whose interpolations resolve "
        f"(Interpolation key '{missing}' not found)"
    )
    assert not list(tmp_path.rglob("metrics.json"))  # no job ran


@pytest.mark.parametrize("kind", ["a finished run", "a finished evaluation", "a file", "read-only", "in use"])
def test_an_evaluation_is_refused_where_a_run_would_be(tmp_path, mounts, kind):
    """evaluate.py writes a metrics.json too: never over a finished run's record, never a
    traceback for a folder that cannot be written, never beside another process."""
    folder = tmp_path / ("ro" if kind == "read-only" else "") / "run"
    record = '{"status": "ok", "test_acc": 0.978, "seed": 0}'
    reason = {
        "a finished run": "a folder that holds no finished run; it holds a run with status ok (metrics.json), "
        "which a new run would overwrite: choose another hydra.run.dir",
        "a file": f"a folder; {folder} is a file",
        "read-only": f"a folder that can be written (Read-only file system: {folder})",
    }
    reason["a finished evaluation"] = reason["a finished run"]
    holder = None
    if kind in ("a finished run", "a finished evaluation"):
        folder.mkdir()
        if kind == "a finished evaluation":
            record = '{"ckpt_path": "ws_aux", "status": "ok", "results": []}'
        (folder / "metrics.json").write_text(record)
    elif kind == "a file":
        folder.write_text("not a folder")
    elif kind == "read-only":
        if not mounts(folder.parent, "1m", read_only=True):
            pytest.skip("a read-only file system needs a tmpfs mount (root)")
    else:
        folder.mkdir()
        hold = [sys.executable, "-c", HOLD, str(folder)]
        holder = subprocess.Popen(hold, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
    try:
        before = listing(folder) if folder.is_dir() else None
        out = entry_point("evaluate.py", "ckpt_path=ws_aux", f"hydra.run.dir={folder}", timeout=120)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert out.returncode == 2
    line = only_line(out.stderr)
    if kind == "in use":
        assert line.startswith(f"error: hydra.run.dir='{folder}' is not allowed: expected a folder that no other ")
        assert f"process {holder.pid} holds its lock" in line
        return
    assert line == f"error: hydra.run.dir='{folder}' is not allowed: expected {reason[kind]}"
    if before is not None:
        assert listing(folder) == before  # the record is untouched
    if kind == "a finished run":
        assert (folder / "metrics.json").read_text() == record


# ---- folders that cannot be written ----------------------------------------------------------
def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    """Mount a tmpfs of ``size`` on ``folder`` (read-only if asked); False where this
    process may not mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode != 0:
        return False
    if read_only and subprocess.run(["mount", "-o", "remount,ro", str(folder)]).returncode != 0:
        subprocess.run(["umount", str(folder)])
        return False
    return True


@pytest.fixture
def mounts():
    """``mounts(folder, size, read_only=False)``: a tmpfs on ``folder``, unmounted after the test."""
    made: list[Path] = []

    def mount(folder: Path, size: str, read_only: bool = False) -> bool:
        ok = mount_tmpfs(folder, size, read_only)
        if ok:
            made.append(folder)
        return ok

    yield mount
    for folder in reversed(made):
        subprocess.run(["umount", "-l", str(folder)])


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full."""
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:
            f.write(bytes(4096))
            f.flush()


@pytest.mark.parametrize("mode", ["run", "sweep", "run named by the time"])
@pytest.mark.parametrize("kind", ["file", "through a file", "read-only", "full"])
def test_an_output_folder_that_cannot_be_written_gets_one_line(tmp_path, mounts, kind, mode):
    where = tmp_path / "disk"
    if kind in ("file", "through a file"):
        where.mkdir()
        (where / "afile").write_text("not a folder")
        folder = where / "afile" if kind == "file" else where / "afile" / "run"
    elif kind == "read-only":
        folder = where / "run" if mounts(where, "1m", read_only=True) else Path("/sys/digitpairs-run")
    else:
        if not mounts(where, "64k"):
            pytest.skip("a full file system needs a tmpfs mount (root)")
        fill(where)
        folder = where / "run"
    key = "hydra.sweep.dir" if mode == "sweep" else "hydra.run.dir"
    given = f"{folder}/" + "${now:%H-%M-%S-%f}" if mode == "run named by the time" else str(folder)
    before = listing(where) if where.is_dir() else None
    out = train(*QUICK, "trainer.max_epochs=1", *(["-m", "seed=0,1"] if mode == "sweep" else []), f"{key}={given}")
    assert out.returncode == 2
    line = only_line(out.stderr)
    if mode != "run":  # checked before Hydra starts: the nearest existing folder, where nothing is created
        if mode == "run named by the time":  # the exact name is not known yet
            name = line.split("'")[1]
            assert Path(name).parent == folder
            folder = Path(name)
        reasons = {
            "file": f"a folder; {where / 'afile'} is a file",
            "through a file": f"a folder; {where / 'afile'} is a file",
            "read-only": f"a folder that can be written (Read-only file system: {where})",
            "full": f"a folder that can be written (No space left on device: {where})",
        }
    else:
        reasons = {
            "file": f"a folder; {where / 'afile'} is a file",
            "through a file": f"a folder; {where / 'afile'} is a file",
            "read-only": f"a folder that can be written (Read-only file system: {folder})",
            "full": f"a folder that can be written (No space left on device: {folder / '.lock'})",
        }
    if not str(folder).startswith(str(where)):  # no mount rights: /sys stands for a read-only file system
        assert line.startswith(f"error: {key}='{folder}' is not allowed: expected a folder that can be written (")
        return
    assert line == f"error: {key}='{folder}' is not allowed: expected {reasons[kind]}"
    assert listing(where) == before  # nothing left behind


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run_keeps_the_last_whole_checkpoint_and_records_the_failure(tmp_path, mounts):
    """A tmpfs that holds one checkpoint (about 390 KB for convnet) and the run's small files,
    but not a second one beside it: the second save fails, the first stays whole."""
    import torch

    from digitpairs.training.checkpoints.store import epochs_done

    disk = tmp_path / "disk"
    if not mounts(disk, "600k"):
        pytest.skip("a full file system needs a tmpfs mount (root)")
    run = disk / "run"
    out = train(*QUICK, "trainer.max_epochs=3", "checkpoint_every=1", f"hydra.run.dir={run}")
    assert out.returncode == 1
    tmp = next(iter(out.stderr.split("No space left on device: ")[1:]), "").split(")")[0]
    assert tmp.startswith(str(run / "checkpoints" / ".last.ckpt.")) and tmp.endswith(".tmp")
    line = (
        f"run failed: cannot write in {run} (No space left on device: {tmp}); it keeps its last whole "
        "checkpoint, checkpoints/last.ckpt"
    )
    assert only_line(out.stderr) == f"error: {line}"
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # the temp file is gone
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert epochs_done(ckpt) == 1  # the first epoch's checkpoint, whole


def test_a_failed_record_that_cannot_be_written_says_so(tmp_path):
    from digitpairs.training.run import write_record

    blocked = tmp_path / "run"
    blocked.write_text("a file where the run folder was")  # nothing can be written under it
    record = write_record(blocked, {"status": "failed", "error": "run failed: diverged"})
    assert record["error"] == f"run failed: diverged; no record could be written ({blocked} is a file)"
    assert blocked.read_text() == "a file where the run folder was"


# ---- a sweep whose worker is killed --------------------------------------------------------
@pytest.mark.slow
def test_a_joblib_worker_killed_mid_sweep_is_recorded_and_the_summary_written(tmp_path):
    """``hydra/launcher=joblib`` as ``make study PLAN=...`` uses it: job 000 finishes, the
    worker that trains job 001 is killed as the OOM killer does (SIGKILL)."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK]
    proc = subprocess.Popen(
        [*cmd, "trainer.max_epochs=1,500", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = sweep / "001" / "train.log"
        wait_for(
            lambda: (
                (sweep / "000" / "metrics.json").is_file()
                and (sweep / "001" / "checkpoints" / "last.ckpt").is_file()
                and writer_of(log)
            ),
            proc=proc,
        )
        worker = writer_of(log)  # the loky worker that trains job 001
        assert worker != proc.pid
        os.kill(worker, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    reason = (
        "the sweep's worker processes stopped before this job finished: one was killed by SIGKILL (the OOM "
        "killer, or kill -9; TerminatedWorkerError)"
    )
    assert only_line(stderr) == f"error: 1 of 2 jobs failed (job 001: {reason}); see {sweep / 'summary.csv'}"
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"], r["error"]) for r in rows] == [("000", "ok", ""), ("001", "killed", reason)]
    killed = json.loads((sweep / "001" / "metrics.json").read_text())
    assert (killed["status"], killed["model"], killed["error"]) == ("killed", "convnet", reason)
    assert "trainer.max_epochs=500" in killed["overrides"]
    assert killed["checkpoint"] == "checkpoints/last.ckpt"  # saved every 5 epochs before the kill
    for name in ("summary.csv", "ranking.csv", "best_overrides.txt", "multirun.yaml", ".lock", "000", "001"):
        assert (sweep / name).exists(), name
    assert json.loads((sweep / "000" / "metrics.json").read_text())["status"] == "ok"
