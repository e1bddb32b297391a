"""``hparams_search=optuna``: the search space, the study in SQLite and its continuation,
failed and killed trials, the launchers, the records of the sweep, and the comparison
benchmark (benchmarks/accuracy/search_vs_grid.py) on a tiny setting."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

TINY = ["model=ws_aux", "trainer.max_epochs=1", "data.n_pairs=300", "threads=1"]


def search(args: list[str], sweep_dir: Path, storage: Path, wait: bool = True):
    """``python train.py -m hparams_search=optuna *args`` into ``sweep_dir``, the study in ``storage``."""
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=optuna",
        *args,
        f"hydra.sweeper.storage=sqlite:///{storage}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    if not wait:
        return subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)


def trials(storage: Path, name: str = "ws_aux") -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{storage}").trials


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def job_folders(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


# ---- the space, the settings, the refusals (no training) ---------------------------------------
def test_the_space_is_read_in_hydras_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from digitpairs.sweeps.search_space import parse_space

    space, fixed = parse_space(
        {
            "optim.lr1": "tag(log, interval(0.01, 0.81))",
            "loss.alpha": "interval(0.25, 1.25)",
            "loss.gamma": "interval(0.1, 1.5)",
            "data.batch_size": "range(50, 201, 50)",
            "optim.lr2": "0.001",
        },
        ["loss.gamma=0.5", "model.decision=comparator,prob", "model=ws_aux"],
    )
    assert space == {
        "optim.lr1": FloatDistribution(0.01, 0.81, log=True),
        "loss.alpha": FloatDistribution(0.25, 1.25),
        "data.batch_size": IntDistribution(50, 200, step=50),
        "model.decision": CategoricalDistribution(("comparator", "prob")),
    }
    assert fixed == ["optim.lr2=0.001", "loss.gamma=0.5", "model=ws_aux"]  # a plain value fixes a key


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tag(log, interval(0, 1))", "a log-scale interval above 0"),
        ("interval(1.0, 0.5)", "an interval whose low end is below its high end"),
        ("tag(sqrt, interval(0.1, 1))", "the tag log only"),
    ],
)
def test_a_bad_space_is_refused_in_one_line(value, message):
    from digitpairs.sweeps.search_space import parse_space
    from digitpairs.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as err:
        parse_space({"optim.lr1": value}, [])
    assert str(err.value).startswith(f"optim.lr1={value!r} is not allowed: expected ")


def test_the_loss_weights_a_model_does_not_use_are_not_searched():
    from digitpairs.sweeps.search import unused_weights

    space = {"optim.lr1": 1, "loss.alpha": 1, "loss.gamma": 1}
    assert unused_weights(space, [], "digitpairs.models.lightning_modules.WSAuxModule") == []
    assert unused_weights(space, [], "digitpairs.models.lightning_modules.ConvNetModule") == ["loss.alpha"]
    assert unused_weights(space, [], "digitpairs.models.lightning_modules.WSModule") == ["loss.alpha"]
    assert unused_weights(space, [], "digitpairs.models.lightning_modules.DigitClassifierModule") == ["loss.gamma"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["hydra.sweeper.n_trials=0"],
            "error: hydra.sweeper.n_trials=0 is not allowed: expected an integer >= 1",
        ),
        (
            ["seed=3"],
            "error: seed='3' is not allowed: expected no seed on a search's command line: every trial trains "
            "with each of hydra.sweeper.seeds (e.g. 'hydra.sweeper.seeds=[0,1,2]')",
        ),
        (
            ["hydra.sweeper.seeds=[0,0]"],
            "error: hydra.sweeper.seeds=[0, 0] is not allowed: expected a non-empty list of distinct integers >= 0, "
            "e.g. [0,1]",
        ),
        (
            ["data.val_fraction=0.0"],
            "error: data.val_fraction=0.0 is not allowed: expected a number > 0: a search is scored on the "
            "validation pairs",
        ),
        (
            ["optim.lr1=tag(log, interval(-1.0, 1.0))"],
            "error: optim.lr1='tag(log, interval(-1.0, 1.0))' is not allowed: expected a log-scale interval above 0",
        ),
    ],
)
def test_bad_settings_stop_with_one_line_before_any_run(tmp_path, args, line):
    out = search([*TINY, *args], tmp_path / "sweep", tmp_path / "s.db")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "sweep").exists() or job_folders(tmp_path / "sweep") == []


def test_an_interval_outside_a_search_is_refused_in_one_line(tmp_path):
    cmd = [sys.executable, "train.py", "-m", "optim.lr1=interval(0.1,0.2)", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    out = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: optim.lr1='interval(0.1,0.2)' is not allowed: expected a list (a,b,c) or range(start,stop,step): "
        "interval(...) is a search's space (hparams_search=optuna)"
    ]


# ---- searches that train (1 epoch, 300 pairs) ----------------------------------------------------
@pytest.mark.slow
def test_a_search_then_its_continuation_on_the_fleet(tmp_path):
    """4 trials x 2 seeds, then 2 more trials into a new sweep folder with the same storage,
    that batch training as one pack of the fleet launcher."""
    db, first, second = tmp_path / "studies.db", tmp_path / "first", tmp_path / "second"
    out = search([*TINY, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"], first, db)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (
        f"search: study 'ws_aux' in sqlite:///{db}: 0 trials so far (0 finished, 0 failed); this search adds 4, "
        f"2 at a time, 2 seed(s) each (0,1); sampler TPESampler; sweep folder {first}"
    ) in out.stdout
    assert [t.state.name for t in trials(db)] == ["COMPLETE"] * 4
    assert job_folders(first) == [f"{i:03d}" for i in range(8)]  # one folder per job: 4 trials x 2 seeds

    out = search(
        [
            *TINY,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "hydra/launcher=fleet",
            "hydra.launcher.n_jobs=1",
        ],
        second,
        db,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 trials so far (4 finished, 0 failed); this search adds 2" in out.stdout
    assert "fleet: 4 jobs: 1 pack (4 runs) and 0 solo runs" in out.stdout  # the batch: one pack
    study = trials(db)
    assert [t.state.name for t in study] == ["COMPLETE"] * 6  # earlier trials count
    assert job_folders(second) == ["000", "001", "002", "003"]  # each sweep folder holds its own jobs
    assert job_folders(first) == [f"{i:03d}" for i in range(8)]
    points = [tuple(sorted(t.params.items())) for t in study]
    assert len(set(points)) == 6  # none drawn again
    assert set(study[0].params) == {"optim.lr1", "optim.lr2", "loss.alpha", "loss.gamma"}

    for sweep_dir, numbers in ((first, [0, 1, 2, 3]), (second, [4, 5])):
        record = json.loads((sweep_dir / "search.json").read_text())
        assert [t["number"] for t in record["trials"]] == numbers
        assert record["storage"] == f"sqlite:///{db}" and record["study_name"] == "ws_aux"
        ranking = {r["config"]: float(r["mean_val_acc"]) for r in csv_rows(sweep_dir / "ranking.csv")}
        summary = csv_rows(sweep_dir / "summary.csv")
        assert len(summary) == 2 * len(numbers) and {r["status"] for r in summary} == {"ok"}
        assert len(ranking) == len(numbers)
        for t in record["trials"]:  # the objective is ranking.csv's mean validation accuracy
            jobs = [r for r in summary if r["job"] in t["jobs"]]
            assert [int(r["seed"]) for r in jobs] == [0, 1]
            assert ranking[jobs[0]["config"]] == pytest.approx(t["value"], abs=1e-12)
            assert t["value"] == pytest.approx(sum(float(r["val_acc"]) for r in jobs) / 2, abs=1e-12)
        best = (sweep_dir / "best_overrides.txt").read_text().splitlines()[1]
        assert best.startswith("ws_aux: data.n_pairs=300 loss.alpha=") and "hparams_search" not in best
        assert (sweep_dir / "optimization_history.png").stat().st_size > 10_000
        assert (sweep_dir / "param_importances.png").stat().st_size > 10_000
        assert list(sweep_dir.glob("events.out.tfevents.*"))  # TensorBoard's HPARAMS


@pytest.mark.slow
def test_a_failed_trial_is_recorded_failed_and_the_search_goes_on(tmp_path):
    db, sweep_dir = tmp_path / "studies.db", tmp_path / "sweep"
    out = search(
        [
            *TINY,
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.seeds=[0]",
            "hydra/sweeper/sampler=random",
            "hydra.sweeper.sampler.seed=18",  # its first gamma is below 0, the next two above
            "loss.gamma=interval(-1.0, 1.0)",  # forced out of range: gamma >= 0
        ],
        sweep_dir,
        db,
    )
    study = trials(db)
    assert [t.state.name for t in study] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert [t.params["loss.gamma"] < 0 for t in study] == [True, False, False]
    gamma = study[0].params["loss.gamma"]
    assert study[0].user_attrs["error"] == (
        f"job 000 invalid: loss.gamma={gamma!r} is not allowed: expected a number >= 0"
    )
    assert [r["status"] for r in csv_rows(sweep_dir / "summary.csv")] == ["invalid", "ok", "ok"]
    assert out.returncode == 1  # as any sweep with a failed job, once everything is written
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: 1 of 3 jobs failed (job 000: loss.gamma={gamma!r} is not allowed: expected a number >= 0); "
        f"see {sweep_dir / 'summary.csv'}"
    )
    assert [t["state"] for t in json.loads((sweep_dir / "search.json").read_text())["trials"]] == [
        "FAIL",
        "COMPLETE",
        "COMPLETE",
    ]


@pytest.mark.slow
def test_a_killed_search_leaves_failed_trials_and_keeps_finished_jobs(tmp_path):
    """SIGKILL mid-batch: the next search records the trials left running as failed (no
    heartbeat for 3 intervals), adds back a trial whose jobs had all finished, and goes on."""
    db, first, second = tmp_path / "studies.db", tmp_path / "first", tmp_path / "second"
    settings = ["hydra.sweeper.n_jobs=2", "hydra.sweeper.seeds=[0]", "hydra.sweeper.heartbeat_interval=1"]
    args = ["model=ws_aux", "trainer.max_epochs=3", "data.n_pairs=300", "threads=1", *settings]
    proc = search([*args, "hydra.sweeper.n_trials=4"], first, db, wait=False)
    deadline = time.monotonic() + 120
    while not (first / "000" / "metrics.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert (first / "000" / "metrics.json").is_file()
    assert [t.state.name for t in trials(db)] == ["RUNNING", "RUNNING"]
    time.sleep(3.5)  # 3 heartbeat intervals

    out = search([*args, "hydra.sweeper.n_trials=1"], second, db)
    assert out.returncode == 0, out.stderr[-3000:]
    study = trials(db)
    assert [t.state.name for t in study[:2]] == ["FAIL", "FAIL"]
    finished = [(first / f"{k:03d}" / "metrics.json").is_file() for k in (0, 1)]
    assert finished[0]
    recovered = [t for t in study if "recovered_from" in t.user_attrs]
    assert [t.user_attrs["recovered_from"] for t in recovered] == [k for k in (0, 1) if finished[k]]
    for t in recovered:
        source = study[t.user_attrs["recovered_from"]]
        assert t.state.name == "COMPLETE" and t.params == source.params
        metrics = json.loads((first / t.user_attrs["jobs"][0] / "metrics.json").read_text())
        assert t.value == pytest.approx(metrics["val_acc"], abs=1e-12)
    assert (
        "search: trial 0 was left running by a stopped search, but its jobs had finished: "
        f"recorded again as trial {recovered[0].number}"
    ) in out.stdout
    assert study[-1].state.name == "COMPLETE" and study[-1].user_attrs["sweep_dir"] == str(second)


@pytest.mark.slow
def test_a_continuation_with_other_overrides_is_refused(tmp_path):
    import optuna

    db = tmp_path / "studies.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="ws_aux", storage=f"sqlite:///{db}", direction="maximize")
    study.set_user_attr("overrides", ["data.n_pairs=300", "model=ws_aux", "trainer.max_epochs=1"])
    out = search(
        ["model=ws_aux", "trainer.max_epochs=2", "data.n_pairs=300", "threads=1", "hydra.sweeper.n_trials=1"],
        tmp_path / "b",
        db,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: hydra.sweeper.study_name='ws_aux' is not allowed: expected a new study name, or the overrides "
        "study 'ws_aux' was started with: it has 'data.n_pairs=300 model=ws_aux trainer.max_epochs=1', this "
        "search 'data.n_pairs=300 model=ws_aux trainer.max_epochs=2'; its values would not compare"
    ]
    assert trials(db) == [] and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_the_comparison_benchmark_on_a_tiny_setting(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/accuracy/search_vs_grid.py",
            "--out",
            str(tmp_path),
            "--launcher",
            "",
            "--grid-params",
            "optim.lr1=0.03,0.27 optim.lr2=0.001 loss.alpha=0.75 loss.gamma=1.0 seed=0",
            "--test-seeds",
            "2",
            "trainer.max_epochs=1",
            "data.n_pairs=300",
            "threads=1",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "table.md").read_text().splitlines()
    assert out.stdout.rstrip().endswith("\n".join(table))
    assert table[0].startswith("| search | runs | best val accuracy (%) | chosen point | test accuracy, 2 seeds (%)")
    rows = [line.split(" | ") for line in table[2:]]
    assert [r[0] for r in rows] == [
        "| grid (`experiment=grid`)",
        "| Optuna TPE, equal runs",
        "| Optuna TPE, half the runs (its first 1 trials)",
    ]
    assert [r[1] for r in rows] == ["2", "2", "1"]  # 2 grid points x 1 seed; 2 trials; the first one
    grid_best = max(csv_rows(tmp_path / "grid" / "summary.csv"), key=lambda r: float(r["val_acc"]))
    assert rows[0][2] == f"{100 * float(grid_best['val_acc']):.2f}"
    record = json.loads((tmp_path / "search" / "search.json").read_text())
    assert rows[1][2] == f"{100 * max(t['value'] for t in record['trials']):.2f}"
    assert rows[2][2] == f"{100 * record['trials'][0]['value']:.2f}"
    tests = [100 * float(r["test_acc"]) for r in csv_rows(tmp_path / "test-grid" / "summary.csv")]
    assert len(tests) == 2 and rows[0][4] == f"{sum(tests) / 2:.2f} ± {abs(tests[0] - tests[1]) / 2**0.5:.2f}"


@pytest.mark.slurm
def test_a_search_through_slurm(tmp_path):
    """Each batch of trials is one SLURM array job (``make test-slurm`` starts a cluster)."""
    import shutil

    try:
        answers = shutil.which("sinfo") is not None and (
            subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        answers = False
    if not answers:
        if os.environ.get("DIGITPAIRS_REQUIRE_SLURM") == "1":
            raise RuntimeError("no SLURM cluster answers sinfo")
        pytest.skip("no SLURM cluster answers sinfo: `make test-slurm` starts one and runs this test")
    partition = os.environ.get("DIGITPAIRS_SLURM_PARTITION", "debug")
    db, sweep_dir = tmp_path / "studies.db", tmp_path / "sweep"
    slurm = ["hydra/launcher=digitpairs_slurm", f"hydra.launcher.partition={partition}"]
    slurm += ["hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=5"]
    out = search(
        [*TINY, *slurm, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.seeds=[0]"], sweep_dir, db
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [t.state.name for t in trials(db)] == ["COMPLETE", "COMPLETE"]
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").glob("*_*") if p.is_dir())
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1  # one array job of 2 tasks
    record = json.loads((sweep_dir / "search.json").read_text())
    assert [t["jobs"] for t in record["trials"]] == [["000"], ["001"]]
