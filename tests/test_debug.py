"""The debug group (``conf/debug/``): ``python train.py debug=fast | overfit | profile``.

Debug runs go to ``outputs/debug/``, apart from the runs and sweeps that summaries, reports
and ``make report`` read, and write no TensorBoard events. ``fast`` runs one batch of each
loop, ``overfit`` learns 200 pairs by heart, ``profile`` writes Lightning's simple profiler
report into the run folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, compose_config, read_metrics, run_train
from omegaconf import OmegaConf

from digitpairs.utils.config import group_options

OPTIONS = ["default", "fast", "overfit", "profile"]


def test_the_group_holds_the_documented_options():
    assert sorted(group_options("debug")) == sorted(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_debug_folders_lie_apart_from_runs_and_sweeps(option, tmp_path):
    """``outputs/debug/runs/<time>`` and ``outputs/debug/multirun/<time>``, never
    ``outputs/runs`` or ``outputs/multirun`` (``make report`` takes the newest of
    ``outputs/multirun/*``); no logger."""
    cfg = compose_config([f"debug={option}"], tmp_path, hydra_node=True)
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir"))
    sweep_dir = Path(OmegaConf.select(cfg, "hydra.sweep.dir"))
    assert run_dir.parent == PROJECT_ROOT / "outputs" / "debug" / "runs"
    assert sweep_dir.parent == PROJECT_ROOT / "outputs" / "debug" / "multirun"
    assert not cfg.get("logger")  # logger=none: no TensorBoard events
    plain = compose_config([], tmp_path, hydra_node=True)
    assert Path(OmegaConf.select(plain, "hydra.run.dir")).parent == PROJECT_ROOT / "outputs" / "runs"


@pytest.mark.parametrize("option", ["fast", "overfit", "profile"])
@pytest.mark.parametrize("extra", [[], ["recipe=beyond"], ["model=convnet"], ["experiment=study"]])
def test_debug_options_compose_with_models_recipes_and_experiments(option, extra, tmp_path):
    from hydra.utils import instantiate

    from digitpairs.training.run import check_config

    cfg = compose_config([f"debug={option}", *extra], tmp_path)
    check_config(cfg)
    instantiate(cfg.data)
    instantiate(cfg.model)
    expected = {"fast": ("fast_dev_run", True), "overfit": ("max_epochs", 50), "profile": ("max_epochs", 3)}[option]
    assert cfg.trainer[expected[0]] == expected[1]


def events(folder: Path) -> list[Path]:
    return list(folder.rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_fast_runs_one_batch_of_each_loop_and_records_it(tmp_path):
    out = run_train(["debug=fast"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "run"
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["threads"] == 1
    assert len(metrics["history"]["train/loss"]) == 1  # one epoch of one batch
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1  # one optimiser step: fast_dev_run
    assert "Running in `fast_dev_run` mode" in out.stdout + out.stderr
    assert "test accuracy" in (out.stdout + out.stderr).strip().splitlines()[-1]
    assert not events(run_dir)


@pytest.mark.slow
def test_overfit_learns_its_two_batches_by_heart(tmp_path):
    out = run_train(["debug=overfit"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = read_metrics(tmp_path / "run")
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (200, 50, 250)
    assert metrics["epochs"] == 50
    assert metrics["train_acc"] == 1.0  # every training pair, after the last epoch
    assert max(metrics["history"]["train/acc"]) == 1.0
    assert metrics["test_acc"] > 0.8  # real digits: ws_aux learns them from 400 (95.2 % measured)
    assert not events(tmp_path / "run")


@pytest.mark.slow
def test_profile_writes_lightnings_simple_profiler_report(tmp_path):
    out = run_train(["debug=profile", "trainer.max_epochs=1", "threads=1", "model=convnet"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    fit = (tmp_path / "run" / "fit-profile.txt").read_text()
    assert "FIT Profiler Report" in fit and "run_training_batch" in fit and "optimizer_step" in fit
    test = (tmp_path / "run" / "test-profile.txt").read_text()
    assert "test_step" in test
    assert read_metrics(tmp_path / "run")["status"] == "ok"


def test_make_test_fast_leaves_the_slow_tests_out():
    """``make test-fast`` is ``make test`` without the tests marked slow."""
    out = subprocess.run(
        ["make", "-n", "-s", "-o", ".venv/.install-stamp", "test-fast", f"PY={sys.executable}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '-m "not slow and not browser"' in out and "-n 2" in out
