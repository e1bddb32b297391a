"""Bad input gets one clear line and a non-zero exit, before any training.

A subprocess of ``train.py`` costs about 10 s (it imports Lightning), so only three
cases go through one: an unknown model (caught before Hydra, without torch), one bad
number through Hydra, and a diverging run. The other cases call
``digitpairs.training.run.run(cfg)`` on a composed config in this process.
"""

from __future__ import annotations

import re

import pytest
from conftest import read_metrics, run_train

ERROR_LINE = re.compile(r"^error: (?P<key>[\w.-]+)=(?P<value>.+) is not allowed: expected (?P<allowed>.+)$")


def one_error_line(stderr: str) -> re.Match:
    """The single non-empty line of ``stderr``, parsed; fails on anything else."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    match = ERROR_LINE.match(lines[0])
    assert match, lines[0]
    return match


# ---- through train.py ------------------------------------------------------------------
@pytest.mark.parametrize("args", [["model=foo"], ["-m", "model=ws,foo", "seed=0,1"]], ids=["run", "sweep"])
def test_unknown_model_fails_before_hydra(args, tmp_path):
    result = run_train(args, tmp_path, timeout=60)
    assert result.returncode == 2
    m = one_error_line(result.stderr)
    assert (m["key"], m["value"]) == ("model", "'foo'")
    assert m["allowed"].startswith("one of aux, convnet, digit_classifier, ws, ws_aux")
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.slow
def test_bad_number_through_train_py(tmp_path):
    result = run_train(["optim.lr1=0", "trainer.enable_progress_bar=false"], tmp_path, timeout=120)
    assert result.returncode == 2
    m = one_error_line(result.stderr)
    assert (m["key"], m["value"], m["allowed"]) == ("optim.lr1", "0", "a number > 0")
    record = read_metrics(tmp_path / "run")
    assert record["status"] == "invalid" and record["error"] == "optim.lr1=0 is not allowed: expected a number > 0"
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_diverging_run_fails(tmp_path):
    result = run_train(
        [
            "optim.lr1=1e9",
            "trainer.max_epochs=2",
            "data.n_pairs=300",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "logger=none",
        ],
        tmp_path,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run failed"), result.stderr
    assert "diverged" in lines[0]
    record = read_metrics(tmp_path / "run")
    assert record["status"] == "failed" and record["error"].startswith("run failed")
    assert "test_acc" not in record
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- in process: task.run on a composed config -----------------------------------------
def missing_dir(tmp_path):
    return tmp_path / "does_not_exist"


def empty_dir(tmp_path):
    path = tmp_path / "no_idx_files"
    path.mkdir()
    (path / "README.md").write_text("not MNIST")
    return path


CASES = {  # id: (overrides, key, value as printed, what is allowed (start))
    "source": (["data.source=foo"], "data.source", "'foo'", "one of auto, idx, torchvision"),
    "lr1_zero": (["optim.lr1=0"], "optim.lr1", "0", "a number > 0"),
    "lr1_negative": (["optim.lr1=-0.5"], "optim.lr1", "-0.5", "a number > 0"),
    "lr1_text": (["optim.lr1=abc"], "optim.lr1", "'abc'", "a number > 0"),
    "lr2_zero": (["optim.lr2=0.0"], "optim.lr2", "0.0", "a number > 0"),
    "lr2_negative": (["optim.lr2=-1"], "optim.lr2", "-1", "a number > 0"),
    "alpha": (["loss.alpha=-0.1"], "loss.alpha", "-0.1", "a number >= 0"),
    "alpha_convnet": (["model=convnet", "loss.alpha=-1"], "loss.alpha", "-1", "a number >= 0"),
    "gamma": (["loss.gamma=-1"], "loss.gamma", "-1", "a number >= 0"),
    "val_fraction_one": (["data.val_fraction=1.0"], "data.val_fraction", "1.0", "a number in [0, 1)"),
    "val_fraction_negative": (["data.val_fraction=-0.1"], "data.val_fraction", "-0.1", "a number in [0, 1)"),
    "n_pairs_too_many": (["data.n_pairs=5001"], "data.n_pairs", "5001", "1..5000 for pool idx:t10k of 10000 images"),
    "batch_size": (["data.batch_size=0"], "data.batch_size", "0", "an integer in [2, 1000000]"),
    # BatchNorm1d cannot train on one pair: refused before training, not a traceback mid-epoch
    "batch_size_one": (["data.batch_size=1"], "data.batch_size", "1", "an integer in [2, 1000000]"),
    "one_training_pair": (
        ["data.n_pairs=2", "data.val_fraction=0.5"],
        "data.val_fraction",
        "0.5",
        "a share of data.n_pairs=2 leaving >= 1 validation pair and >= 2 training pairs",
    ),
    "one_pair": (["data.n_pairs=1", "data.val_fraction=0"], "data.n_pairs", "1", "an integer >= 2"),
    "max_epochs": (["trainer.max_epochs=0"], "trainer.max_epochs", "0", "an integer in [1, 100000]"),
    "seed": (["seed=-1"], "seed", "-1", "an integer in [0, 4294967295]"),
    "idx_missing": (["data.source=idx", "data.root={missing}"], "data.root", "'{missing}'", "an existing folder"),
    "idx_no_files": (
        ["data.source=idx", "data.root={empty}"],
        "data.root",
        "'{empty}'",
        "a folder holding train-images-idx3-ubyte",
    ),
    # a key of other models forced onto one without it (Hydra suggests the +): not a TypeError
    "key_of_another_model": (
        ["model=convnet", "+model.decision=argmax"],
        "model.decision",
        "'argmax'",
        "it left out: ConvNetModule has no key decision",
    ),
    "key_of_no_data_module": (
        ["+data.no_such_key=2"],  # a name that no data key takes
        "data.no_such_key",
        "2",
        "it left out: PairDataModule has no key no_such_key",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_in_process(case, compose_cfg, tmp_path, capsys):
    from digitpairs.training.run import run

    overrides, key, value, allowed = CASES[case]
    paths = {"missing": missing_dir(tmp_path), "empty": empty_dir(tmp_path)}
    overrides = [o.format(**paths) for o in overrides]
    value = value.format(**paths)
    # One short epoch if a check ever lets the value through: the test then fails quickly.
    quick = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    cfg = compose_cfg(*quick, *overrides)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(cfg, multirun=False)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    m = one_error_line(captured.err)
    assert (m["key"], m["value"]) == (key, value)
    assert m["allowed"].startswith(allowed), m["allowed"]
    record = read_metrics(tmp_path / "run")
    assert record["status"] == "invalid"
    assert "error: " + record["error"] == captured.err.strip()
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training started


def test_failed_job_in_a_sweep_returns_a_record(compose_cfg, tmp_path, capsys):
    """In a multirun a bad job is recorded and returned, so the sweep goes on."""
    from digitpairs.training.run import run

    cfg = compose_cfg("trainer.max_epochs=1", "optim.lr2=-1")
    record = run(cfg, multirun=True)
    assert record["status"] == "invalid" and record["error"].startswith("optim.lr2=-1 is not allowed")
    assert read_metrics(tmp_path / "run")["status"] == "invalid"
    assert "error:" not in capsys.readouterr().err
