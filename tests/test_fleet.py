"""The fleet launcher (``hydra/launcher=fleet``): packs of runs trained as one network.

Each run of a pack is its solo run (the same initial weights, batches and dropout masks at
the start; its own figures after training), each job folder reads as a solo run's
(evaluate.py reproduces its test accuracy exactly, resume continues it), a run that
diverges fails alone, and a pack process that is killed leaves its jobs recorded.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from digitpairs.sweeps.fleet import Job, check_params, pack_overrides, plan_tasks, signature, split
from digitpairs.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.n_pairs=300", "data.eval_batch_size=300", "trainer.max_epochs=3", "threads=1"]

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")


def fleet(args: list[str], sweep_dir: Path, timeout: int = 300, wait: bool = True):
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=fleet", *args, f"hydra.sweep.dir={sweep_dir}"]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def python(*args: str) -> subprocess.CompletedProcess:
    """``python <args>`` in the project root, its output captured."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    import csv

    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


# ---- planning (no training) ------------------------------------------------------------
def test_jobs_differing_in_per_run_keys_share_a_pack_and_others_do_not():
    a = signature(["model=ws_aux", "seed=0", "optim.lr1=0.05", "loss.alpha=0.5"])
    assert a == signature(["model=ws_aux", "seed=7", "optim.lr1=0.09", "loss.alpha=1.0"])
    assert a != signature(["model=ws", "seed=0", "optim.lr1=0.05", "loss.alpha=0.5"])
    assert a != signature(["model=ws_aux", "seed=0", "optim.lr1=0.05", "loss.alpha=0.5", "data.augment=affine"])


def test_a_packs_log_line_names_what_its_runs_share_and_what_varies():
    jobs = [["model=ws", "seed=0", "optim.lr1=0.1"], ["model=ws", "seed=1", "optim.lr1=0.1"], ["seed=2", "model=ws"]]
    per_run = [["seed=0", "optim.lr1=0.1"], ["seed=1", "optim.lr1=0.1"], ["seed=2"]]
    assert pack_overrides(jobs) == (["model=ws"], per_run)


def test_packs_are_even_and_fill_every_process():
    jobs = [Job(i, [f"seed={i}"]) for i in range(72)]
    sizes = [len(p) for p in split(jobs, 8, 2)]
    assert sizes == [8, 8, 7, 7, 7, 7, 7, 7, 7, 7] and sum(sizes) == 72  # 10 packs: a multiple of 2 processes
    assert [len(p) for p in split(jobs[:15], 8, 2)] == [8, 7]
    assert [len(p) for p in split(jobs[:3], 8, 2)] == [3]
    study = [
        Job(i, [f"model={m}", f"seed={s}"])
        for i, (m, s) in enumerate((m, s) for m in ("ws_aux", "ws") for s in range(3))
    ]
    tasks = plan_tasks(study + [Job(6, ["model=convnet", "seed=0"])], 2, 2, lambda job: None)
    assert [([j.idx for j in t.jobs], t.solo) for t in tasks] == [
        ([0, 1], False),
        ([2], True),
        ([3, 4], False),
        ([5], True),
        ([6], True),
    ]
    tasks = plan_tasks(study, 8, 2, lambda job: "it resumes a checkpoint")
    assert all(t.solo and t.why_solo == "it resumes a checkpoint" for t in tasks) and len(tasks) == 6


def test_bad_launcher_keys_are_refused():
    assert check_params(8, 2, "auto") == (8, 2, "auto")
    with pytest.raises(ConfigError, match=r"hydra.launcher.pack=0 is not allowed"):
        check_params(0, 2, "auto")
    with pytest.raises(ConfigError, match=r"hydra.launcher.strategy='wide' is not allowed"):
        check_params(8, 2, "wide")
    with pytest.raises(ConfigError, match=r"hydra.launcher.n_jobs=0 is not allowed"):
        check_params(8, 0, "loop")


# ---- each run is its solo run ----------------------------------------------------------
def test_a_run_starts_as_its_solo_run(compose_cfg, tmp_path):
    """Initial weights, the first batch and the first dropout mask of a pack's run equal the
    solo run's of the same seed."""
    from digitpairs.models.packed import PackedDropout
    from digitpairs.training.pack import PackedLoader, build_run
    from digitpairs.training.run import build

    overrides = ["model=ws_aux", "logger=none", *TINY]
    cfgs = [compose_cfg(*overrides, f"seed={s}") for s in (3, 5)]
    runs = [build_run(k, cfg) for k, cfg in enumerate(cfgs)]
    dm, model, _, _ = build(compose_cfg(*overrides, "seed=5"), loggers=False, quiet=True)  # the solo run of seed 5
    for (name, a), b in zip(runs[1].model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(runs[0].model.net.comparator[0].weight, model.net.comparator[0].weight)
    x, target, classes = next(
        iter(PackedLoader(runs, [r.datamodule.train_dataloader() for r in runs], torch.device("cpu")))
    )
    solo_x, solo_target, solo_classes = next(iter(dm.train_dataloader()))  # the solo run's first batch, from its state
    b = len(solo_target)
    assert x.shape == (2 * b, 2, 14, 14)
    assert (
        torch.equal(x[b:], solo_x) and torch.equal(target[b:], solo_target) and torch.equal(classes[b:], solo_classes)
    )
    assert not torch.equal(x[:b], solo_x)
    drops = [run.model.net.branch1[10] for run in runs]  # the trunk's first Dropout
    mask = PackedDropout(drops).train()(torch.ones(2 * b, 200))
    assert torch.equal(mask[b:], model.net.branch1[10].train()(torch.ones(b, 200)))


def test_the_gpu_way_of_drawing_runs_on_the_cpu(compose_cfg):
    """Dropout masks and affine maps drawn from per-run generators on the training device (a
    GPU's way, here on the CPU): the pack trains, reproducibly, each run from its own streams."""
    from digitpairs.models.packed import PackedDropout
    from digitpairs.training.pack import PackModule, build_run, pack_trainer

    overrides = ["recipe=beyond", "model.second=none", "model.tta=0", "logger=none", *TINY, "trainer.max_epochs=1"]

    def train_once() -> list[torch.Tensor]:
        cfgs = [compose_cfg(*overrides, f"seed={s}") for s in (0, 1)]
        runs = [build_run(k, cfg) for k, cfg in enumerate(cfgs)]
        module = PackModule(runs, device_draws=True)
        pack_trainer(cfgs[0], [100, 100]).fit(module)
        assert all(torch.device("cpu") in run.rng.generators for run in runs)  # the affine maps' generators
        drops = [m for m in module.packed.modules() if isinstance(m, PackedDropout)]
        assert drops and all(torch.device("cpu") in m._device_generators for m in drops)  # the masks'
        assert all(math.isfinite(run.history.history["train/loss"][0]) for run in runs)
        return [run.model.net[0][-1].weight.detach().clone() for run in runs]

    first, second = train_once(), train_once()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # the same draws again
    assert not torch.equal(first[0], first[1])


@pytest.mark.slow
def test_fleet_runs_match_their_solo_runs_and_their_folders_read_as_solo(tmp_path):
    """Two runs packed: each run's per-epoch training loss and its test figures are its solo
    run's (float sums aside); evaluate.py reproduces a job's test accuracy from its
    checkpoint exactly; the job's checkpoint resumes as a solo run."""
    args = ["model=ws_aux", "seed=0,1", *TINY]
    out = fleet(args, tmp_path / "sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fleet: 2 jobs: 1 pack (2 runs) and 0 solo runs" in out.stdout + out.stderr
    assert "(jobs 0,1): model=ws_aux " in out.stdout + out.stderr
    assert "; per run: seed=0 | seed=1" in out.stdout + out.stderr  # what varies, run by run
    assert [r["status"] for r in rows(tmp_path / "sweep")] == ["ok", "ok"]
    job = tmp_path / "sweep" / "001"
    assert sorted(p.name for p in (job / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert (job / "train.log").read_text().count("ws_aux seed=1 on MNIST") == 1
    assert "ws_aux seed=0 on MNIST" not in (job / "train.log").read_text()
    assert list(job.glob("ws_aux/seed=01/events.out.tfevents.*"))
    fleet_m = json.loads((job / "metrics.json").read_text())
    assert fleet_m["pack"]["runs"] == 2 and fleet_m["epochs"] == 3
    solo = python("train.py", "model=ws_aux", "seed=1", *TINY, f"hydra.run.dir={tmp_path / 'solo'}")
    assert solo.returncode == 0, solo.stderr[-2000:]
    solo_m = json.loads((tmp_path / "solo" / "metrics.json").read_text())
    for key in ("train/loss", "lr"):  # the same batches, masks and steps: the same losses, float sums aside
        assert fleet_m["history"][key] == pytest.approx(solo_m["history"][key], rel=1e-3), key
    for key, n in (("train/acc", fleet_m["n_train"]), ("val/acc", fleet_m["n_val"])):  # at most 2 pairs flip
        assert fleet_m["history"][key] == pytest.approx(solo_m["history"][key], abs=2.01 / n), key
    assert abs(fleet_m["test_errors"] - solo_m["test_errors"]) <= 2
    # evaluate.py on the job folder: its checkpoint gives exactly the recorded test accuracy
    ev = python("evaluate.py", f"ckpt_path={job}", "data.n_pairs=300", f"hydra.run.dir={tmp_path / 'ev'}")
    assert ev.returncode == 0, ev.stderr[-2000:]
    (result,) = json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"]
    assert result["acc"] == fleet_m["test_acc"] and result["errors"] == fleet_m["test_errors"]
    # resume the job's checkpoint as a solo run, two epochs further
    ckpt = job / "checkpoints" / "last.ckpt"
    resumed = python("train.py", f"ckpt_path={ckpt}", "trainer.max_epochs=5", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert m["status"] == "ok" and m["epochs"] == 5 and len(m["history"]["train/loss"]) == 5
    assert m["history"]["train/loss"][:3] == pytest.approx(fleet_m["history"]["train/loss"], rel=1e-6)


@pytest.mark.slow
def test_a_diverging_run_fails_alone(tmp_path):
    args = ["model=ws_aux", "seed=0", "optim.lr1=0.05,1e9,0.09", *TINY]
    out = fleet(args, tmp_path / "sweep")
    assert out.returncode == 1
    assert "fleet: 3 jobs: 1 pack (3 runs)" in out.stdout + out.stderr
    assert (
        out.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 jobs failed (job 001: run failed: train/loss is")
    )
    table = rows(tmp_path / "sweep")
    assert [r["status"] for r in table] == ["ok", "failed", "ok"]
    assert "diverged" in table[1]["error"]
    for job in ("000", "002"):  # the others trained on: a finite loss that falls over the epochs
        loss = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())["history"]["train/loss"]
        assert len(loss) == 3 and all(math.isfinite(v) for v in loss) and loss[-1] < 0.9 * loss[0]
    assert not (tmp_path / "sweep" / "001" / "checkpoints").exists()
    assert (tmp_path / "sweep" / "002" / "checkpoints" / "last.ckpt").is_file()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the pack's process in /proc")
def test_a_killed_pack_leaves_its_jobs_recorded_killed(tmp_path):
    args = ["model=convnet", "seed=0,1", "data.n_pairs=300", "trainer.max_epochs=300", "threads=1"]
    proc = fleet(args, tmp_path / "sweep", wait=False)
    log = tmp_path / "sweep" / "000" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "data: MNIST" in log.read_text()):
        time.sleep(0.5)
    time.sleep(2)  # into training
    (child,) = _children(proc.pid)
    os.kill(child, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    table = rows(tmp_path / "sweep")
    assert [r["status"] for r in table] == ["killed", "killed"]
    assert all("was killed by SIGKILL" in r["error"] for r in table)
    assert "2 of 2 jobs failed" in err
    assert all(r["model"] == "convnet" and r["seed"] in ("0", "1") for r in table)


@pytest.mark.slow
def test_fleet_speed_benchmark_prints_its_table():
    out = python(
        "benchmarks/speed/fleet_speed.py", "--models", "convnet", "--packs", "2", "--epochs", "1", "--repeats", "1"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("| convnet | 2 |"))
    solo, packed, ratio = (cell.strip() for cell in row.strip("|").split("|")[2:])
    assert float(solo) > 0 and float(packed) > 0
    assert ratio.endswith("x") and float(ratio[:-1]) == pytest.approx(float(solo) / float(packed), abs=0.02)
