"""Sweeps end to end: summary.csv, ranking by validation accuracy, the report and its
figures, failed jobs, and the joblib and submitit launchers (real digits, 1 epoch)."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from digitpairs.sweeps.report import describe, welch
from digitpairs.sweeps.summary import best_overrides, rank

ROOT = Path(__file__).resolve().parents[1]
FAST = ["trainer.max_epochs=4", "data.n_pairs=300", "data.eval_batch_size=300"]
PNG = b"\x89PNG\r\n\x1a\n"


def sweep(args: list[str], sweep_dir: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``train.py -m`` with the sweep folder in ``sweep_dir``."""
    cmd = [sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def report_rows(report: str) -> dict[str, list[str]]:
    """The per-model table of report.md: {model: cells}."""
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[1].isdigit():
            rows[cells[0]] = cells
    return rows


def hparams_of(job_dir: Path) -> tuple[set[str], set[str], float]:
    """(hparam keys, declared metric tags, logged final/test_acc) from a job's TensorBoard
    events (in ``<job>/<model>/seed=NN``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (run,) = job_dir.glob("*/seed=*")
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    keys, metrics = set(), set()
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            keys |= set(data.session_start_info.hparams)
        if data.HasField("experiment"):
            metrics |= {m.name.tag for m in data.experiment.metric_infos}
    return keys, metrics, acc.Scalars("final/test_acc")[-1].value


def check_study_outputs(sweep_dir: Path, models: list[str], seeds: int) -> list[dict[str, str]]:
    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == len(models) * seeds
    for column in ("job", "status", "model", "seed", "overrides", "val_acc", "test_acc", "digit_acc", "wall_time_s"):
        assert column in rows[0]
    assert all(r["status"] == "ok" for r in rows), rows
    assert sorted({r["model"] for r in rows}) == sorted(models)
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        assert sorted(int(r["seed"]) for r in mine) == list(range(seeds))
        assert all(0.0 < float(r["test_acc"]) <= 1.0 for r in mine)  # ws barely learns in 4 short epochs
        assert all(r["val_acc"] == "" for r in mine)  # experiment=study trains without a validation split
    report = (sweep_dir / "report.md").read_text()
    table = report_rows(report)
    assert sorted(table) == sorted(models)
    for model in models:
        accs = [100 * float(r["test_acc"]) for r in rows if r["model"] == model]
        assert int(table[model][1]) == seeds
        mean, std = table[model][2].split(" ± ")
        assert float(mean) == pytest.approx(statistics.fmean(accs), abs=0.006)
        assert float(std) == pytest.approx(statistics.stdev(accs), abs=0.006)
    assert "Welch" in report
    for png in ("boxplot.png", "curves.png"):
        data = (sweep_dir / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    return rows


@pytest.mark.slow
def test_study_multirun_leaves_summary_report_and_figures(tmp_path):
    out = sweep(
        ["experiment=study", "model=convnet,ws_aux", "seed=0,1", "trainer.check_val_every_n_epoch=2", *FAST],
        tmp_path / "sweep",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = check_study_outputs(tmp_path / "sweep", ["convnet", "ws_aux"], 2)
    aux = [r for r in rows if r["model"] == "ws_aux"]
    # the aux heads learn digits (chance 0.1; 0.70-0.82 measured). The pair accuracy of
    # 4 short epochs varies too much to test here: tests/test_train.py checks learning.
    assert all(0.4 < float(r["digit_acc"]) <= 1 for r in aux)
    assert all(r["digit_acc"] == "" for r in rows if r["model"] == "convnet")
    # TensorBoard's HPARAMS tab: the same flat keys for every model, swept keys included
    by_model = {r["model"]: r for r in rows}
    conv_keys, conv_metrics, conv_test = hparams_of(tmp_path / "sweep" / by_model["convnet"]["job"])
    aux_keys, aux_metrics, aux_test = hparams_of(tmp_path / "sweep" / by_model["ws_aux"]["job"])
    assert conv_keys == aux_keys and {"model_name", "seed", "optim.lr1", "loss.alpha", "data.source"} <= conv_keys
    assert (
        conv_metrics == aux_metrics == set()
    )  # a job declares no experiment: the sweep root does (test_tensorboard.py)
    assert conv_test == pytest.approx(float(by_model["convnet"]["test_acc"]))
    # the test curve is recorded for the figure every 2nd epoch, the training loss every epoch
    job = json.loads((tmp_path / "sweep" / rows[0]["job"] / "metrics.json").read_text())
    assert [v is not None for v in job["history"]["curve/test_acc"]] == [False, True, False, True]
    assert len(job["history"]["train/loss_main"]) == 4


@pytest.mark.slow
def test_study_multirun_with_joblib_launcher(tmp_path):
    args = [
        "experiment=study",
        "model=convnet,ws",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "threads=1",
        *FAST,
    ]
    out = sweep(args, tmp_path / "sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    check_study_outputs(tmp_path / "sweep", ["convnet", "ws"], 2)
    assert "Joblib.Parallel(n_jobs=2" in out.stdout + out.stderr


@pytest.mark.slow
def test_sweep_with_a_failed_job_still_writes_summary_and_report(tmp_path):
    # lr1=1e9 makes the loss non-finite in the first epoch: that job fails, the other runs
    args = ["experiment=study", "model=convnet", "seed=0", "optim.lr1=0.05,1e9", "optim.switch_fraction=1.0", *FAST]
    out = sweep(args, tmp_path / "sweep")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "1 of 2 jobs failed" in out.stderr
    rows = read_csv(tmp_path / "sweep" / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "diverged" in rows[1]["error"]
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "## Failed jobs" in report and "optim.lr1=1000000000.0" in report  # Hydra writes 1e9 so
    table = report_rows(report)
    assert list(table) == ["convnet optim.lr1=0.05"] or list(table) == ["convnet"]
    assert int(next(iter(table.values()))[1]) == 1


def test_report_by_hand_on_a_sweep_folder(tmp_path):
    """A constructed sweep: 3 + 3 runs of two models, one job that never wrote metrics."""
    accs = {"convnet": [0.80, 0.82, 0.81], "ws_aux": [0.97, 0.98, 0.975]}
    job = 0
    for model, values in accs.items():
        for seed, acc in enumerate(values):
            d = tmp_path / str(job)
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- seed={seed}\n")
            (d / "metrics.json").write_text(
                json.dumps(
                    {
                        "status": "ok",
                        "model": model,
                        "seed": seed,
                        "source": "idx",
                        "val_acc": None,
                        "test_acc": acc,
                        "train_acc": 1.0,
                        "test_errors": round((1 - acc) * 1000),
                        "n_test": 1000,
                        "digit_acc": {"test": 0.95} if model == "ws_aux" else None,
                        "wall_time_s": 1.0,
                        "rule_acc": {"comparator": {"test": acc}, "argmax": {"test": 0.96}, "prob": {"test": 0.97}}
                        if model == "ws_aux"
                        else None,
                        "history": {"train/loss_main": [0.7, 0.5], "curve/test_acc": [acc - 0.1, acc]},
                    }
                )
            )
            job += 1
    (tmp_path / str(job) / ".hydra").mkdir(parents=True)
    (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text("- model=ws\n- seed=0\n")
    out = subprocess.run(
        [sys.executable, "-m", "digitpairs.sweeps.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["status"] for r in rows] == ["ok"] * 6 + ["missing"]
    table = report_rows((tmp_path / "report.md").read_text())
    assert table["convnet"][2] == "81.00 ± 1.00"
    assert table["ws_aux"][2] == "97.50 ± 0.50"
    assert table["ws_aux"][8] == "95.00"  # digit accuracy of the aux heads
    assert table["ws_aux"][9] == "97.50 / 96.00 / 97.00"  # comparator / argmax / prob rule
    assert table["convnet"][9] == "-"  # no digit heads
    assert table["convnet"][10] == "81.37 ± 1.37"  # the study's figure beside ours
    t, p = welch([80, 82, 81], [97, 98, 97.5])
    assert p < 1e-3 and f"{p:.2g}" in (tmp_path / "report.md").read_text()


def test_describe_statistics():
    d = describe([80.0, 82.0, 81.0])
    assert d["mean"] == pytest.approx(81.0) and d["std"] == pytest.approx(1.0)
    assert d["ci_high"] - d["mean"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2)
    assert (d["min"], d["median"], d["max"]) == (80.0, 81.0, 82.0)
    wide = describe([60.0, 99.0])  # two runs: t(0.975, 1) = 12.7, a half-width of 247 pp
    assert (wide["ci_low"], wide["ci_high"]) == (0.0, 100.0)


def test_ranking_uses_validation_not_test():
    """Config A wins on validation, config B on test: A must rank first."""
    rows = []
    for seed in (0, 1):
        rows.append(
            {
                "status": "ok",
                "model": "ws_aux",
                "config": "model=ws_aux optim.lr1=0.09",
                "val_acc": 0.97 + 0.01 * seed,
                "test_acc": 0.90,
            }
        )
        rows.append(
            {
                "status": "ok",
                "model": "ws_aux",
                "config": "model=ws_aux optim.lr1=0.27",
                "val_acc": 0.95,
                "test_acc": 0.99,
            }
        )
    rows.append(
        {"status": "failed", "model": "ws_aux", "config": "model=ws_aux optim.lr1=9", "val_acc": 0.99, "test_acc": 0.99}
    )
    ranking = rank(rows)
    assert [r["config"] for r in ranking] == ["model=ws_aux optim.lr1=0.09", "model=ws_aux optim.lr1=0.27"]
    assert ranking[0]["mean_val_acc"] == pytest.approx(0.975) and ranking[0]["n_seeds"] == 2
    assert best_overrides(ranking) == {"ws_aux": "model=ws_aux optim.lr1=0.09"}


@pytest.mark.slow
def test_grid_ranks_on_validation_and_writes_best_line(tmp_path):
    args = [
        "model=convnet",
        "optim.lr1=0.01,0.09",
        "seed=0,1",
        "data.val_fraction=0.2",
        "trainer.enable_progress_bar=false",
        *FAST,
    ]
    out = sweep(args, tmp_path / "sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    ranking = read_csv(tmp_path / "sweep" / "ranking.csv")
    assert len(ranking) == 2 and all(r["n_seeds"] == "2" for r in ranking)
    summary = read_csv(tmp_path / "sweep" / "summary.csv")
    for r in ranking:
        vals = [float(s["val_acc"]) for s in summary if s["config"] == r["config"]]
        assert float(r["mean_val_acc"]) == pytest.approx(statistics.fmean(vals))
    assert float(ranking[0]["mean_val_acc"]) >= float(ranking[1]["mean_val_acc"])
    best = (tmp_path / "sweep" / "best_overrides.txt").read_text()
    assert f"convnet: {ranking[0]['config']}" in best


@pytest.mark.slow
def test_two_sweeps_started_together_get_two_folders(tmp_path):
    args = [
        sys.executable,
        "train.py",
        "-m",
        "model=convnet",
        "trainer.max_epochs=1",
        "data.n_pairs=50",
        "data.val_fraction=0",
        "trainer.enable_progress_bar=false",
        "threads=1",
        f"hydra.sweep.dir={tmp_path}/" + "${now:%Y-%m-%d_%H-%M-%S-%f}",
    ]
    procs = [
        subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stderr.read()[-2000:]
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(folders) == 2
    assert all((f / "summary.csv").is_file() for f in folders)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DIGITPAIRS_SKIP_SUBMITIT") == "1", reason="asked to skip")
def test_submitit_local_launcher(tmp_path):
    args = [
        "model=convnet",
        "seed=0,1",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "threads=1",
        "data.val_fraction=0",
        "trainer.enable_progress_bar=false",
        *FAST,
    ]
    out = sweep(args, tmp_path / "sweep", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_csv(tmp_path / "sweep" / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert sorted(r["seed"] for r in rows) == ["0", "1"]


def test_launch_plan():
    from digitpairs.sweeps.launcher_plan import plan

    assert (
        plan(cores=2, cuda=False, amx_bf16=False, avx512_bf16=False)
        == "hydra/launcher=fleet hydra.launcher.n_jobs=2 threads=1"
    )
    study = ["experiment=study"]
    assert plan(cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=study) == (
        "hydra/launcher=fleet hydra.launcher.n_jobs=2 threads=1 trainer.precision=bf16-mixed"
        " hydra.launcher.strategy=grouped"
    )
    assert plan(
        cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=[*study, "hydra.launcher.strategy=loop"]
    ).endswith(" trainer.precision=bf16-mixed")  # a strategy in the arguments is not repeated
    for measured in (["experiment=grid"], ["experiment=beyond"]):
        assert plan(cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=measured).endswith(
            " trainer.precision=bf16-mixed hydra.launcher.strategy=grouped"
        )
    for unmeasured in ([], ["hparams_search=optuna"], ["model=ws", "seed=0,1"]):
        # bf16 only for the sweeps whose accuracy was measured in it
        assert plan(cores=2, cuda=False, amx_bf16=True, avx512_bf16=False, args=unmeasured) == (
            "hydra/launcher=fleet hydra.launcher.n_jobs=2 threads=1"
        )
    # AVX512-BF16 without AMX: bf16, each run's convolutions one after another (the fleet's auto)
    assert plan(cores=2, cuda=False, amx_bf16=False, avx512_bf16=True, args=study) == (
        "hydra/launcher=fleet hydra.launcher.n_jobs=2 threads=1 trainer.precision=bf16-mixed"
    )
    assert plan(cores=2, cuda=False, amx_bf16=False, avx512_bf16=True, args=["hparams_search=optuna"]) == (
        "hydra/launcher=fleet hydra.launcher.n_jobs=2 threads=1"
    )
    assert (
        plan(cores=16, cuda=True, amx_bf16=True, avx512_bf16=False)
        == "hydra/launcher=fleet hydra.launcher.n_jobs=2 hydra.launcher.pack=64 threads=8"
    )
