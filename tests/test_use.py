"""Using a trained model: resume a run exactly, evaluate a checkpoint, predict two images.

The runs are trained in this process (``digitpairs.training.run.train`` on composed configs,
as ``train.py`` runs them, without the 10 s of a subprocess's imports) on the default data
(MNIST 60,000/10,000), ws_aux, 6 epochs, one thread:

- ``full``: 6 epochs in one go;
- ``cut``: the same run, stopped by SIGINT (a user's Ctrl-C) when epoch 5 starts, so
  that its ``last.ckpt`` (saved every epoch here) holds 4 epochs;
- ``resumed``: ``ckpt_path=<cut>/checkpoints/last.ckpt``, to the end.

Each command line (``train.py``, ``evaluate.py``, ``predict.py``) also runs once as a
subprocess.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import IDX_DIR, PROJECT_ROOT, compose_config, load_script
from test_errors import one_error_line

pytestmark = pytest.mark.slow

EXAMPLES = PROJECT_ROOT / "examples"
EVAL_ACC_FLOOR = 0.80  # 6-epoch ws_aux on 1000 fresh MNIST test pairs (seed 7)


def base() -> list[str]:
    return [
        "model=ws_aux",
        "trainer.max_epochs=6",
        "threads=1",
        "checkpoint_every=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=none",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{"full", "cut", "resumed", "extended"}`` -> ``(run folder, metrics or exit code, stderr)``."""
    from digitpairs.training.checkpoints.resume_command import resume_arguments
    from digitpairs.training.run import train

    tmp = tmp_path_factory.mktemp("use")
    out = {}
    out["full"] = (tmp / "full", train(compose_config(base(), tmp / "full")), "")

    handler = signal.getsignal(signal.SIGINT)
    stop = ["+callbacks.stop._target_=interrupt.InterruptAt", "+callbacks.stop.epoch=5"]
    cut_cfg = compose_config(base() + stop, tmp / "cut")
    import contextlib
    import io

    err = io.StringIO()
    # Python's own Ctrl-C handler, as in a user's terminal: pytest-xdist's workers ignore SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            train(cut_cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a Ctrl-C
    out["cut"] = (tmp / "cut", exit_info.value.code, err.getvalue())

    ckpt = tmp / "cut" / "checkpoints" / "last.ckpt"
    args = resume_arguments([f"ckpt_path={ckpt}"])  # the +callbacks.stop of the cut run is never replayed
    out["resumed"] = (tmp / "resumed", train(compose_config(args, tmp / "resumed")), " ".join(args))
    return out


# ---- resume ----------------------------------------------------------------------------
def test_ctrl_c_exits_nonzero_with_the_resume_command(runs):
    run, code, err = runs["cut"]
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    ckpt = run / "checkpoints" / "last.ckpt"
    assert lines[0] == f"interrupted in epoch 5 of 6; {ckpt} holds epoch 4. Resume: python train.py ckpt_path={ckpt}"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 4
    assert not [p for p in ckpt.parent.iterdir() if p.name != "last.ckpt"]  # no temp file left


def test_resume_is_exact(runs):
    full_dir, full, _ = runs["full"]
    res_dir, resumed, args = runs["resumed"]
    assert "seed=0" not in args and "model=ws_aux" in args and "data.source=idx" in args
    a = torch.load(full_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(res_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert resumed["test_acc"] == full["test_acc"] and resumed["test_errors"] == full["test_errors"]
    assert resumed["epochs"] == full["epochs"] == 6
    assert resumed["history"] == full["history"]  # the per-epoch record continues too
    assert resumed["resumed_from"].endswith("last.ckpt")


def test_resume_longer_keeps_the_lr_schedule_and_warns_about_changed_keys(runs, tmp_path, caplog):
    from digitpairs.training.checkpoints.resume_command import resume_arguments
    from digitpairs.training.run import train

    ckpt = runs["full"][0] / "checkpoints" / "last.ckpt"
    args = resume_arguments([f"ckpt_path={ckpt}", "trainer.max_epochs=7", "optim.lr2=0.01"])
    with caplog.at_level(logging.INFO):
        m = train(compose_config(args, tmp_path / "run"))
    assert m["epochs"] == 7
    assert m["history"]["lr"] == pytest.approx([0.09] * 3 + [0.001] * 4, rel=1e-6)  # as saved, not lr2=0.01
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "digitpairs.training.checkpoints.resume"
    ]
    assert any(w.startswith("resume: optim.lr2 differs from the checkpoint: 0.001 -> 0.01") for w in warnings), warnings
    assert any("trainer.max_epochs 6 -> 7" in w and "lr schedule stays" in w for w in warnings), warnings
    assert len(warnings) == 2, warnings


def test_resume_longer_one_cycle_holds_its_last_lr(tmp_path):
    """A one-cycle checkpoint (optim=sgd_onecycle, as recipe=beyond) resumed with more epochs
    trains on at the schedule's last lr; OneCycleLR alone raises past its planned steps."""
    from digitpairs.training.checkpoints.resume_command import resume_arguments
    from digitpairs.training.run import train

    first = base()[1:] + ["model=digit_classifier", "optim=sgd_onecycle", "trainer.max_epochs=2"]
    done = train(compose_config(first, tmp_path / "two"))
    args = resume_arguments([f"ckpt_path={tmp_path / 'two' / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=4"])
    m = train(compose_config(args, tmp_path / "four"))
    assert m["epochs"] == 4 and m["history"]["lr"][:2] == pytest.approx(done["history"]["lr"])
    lr = m["history"]["lr"]  # at each epoch's start
    assert lr[2] == lr[3] < lr[1] / 10  # held at the lr after the last planned step
    assert m["test_acc"] > 0.5


def test_plus_ckpt_path_is_not_ignored():
    from digitpairs.training.checkpoints.resume_command import resume_arguments

    assert resume_arguments(["seed=1"]) == ["seed=1"]
    with pytest.raises(Exception) as info:
        resume_arguments(["+ckpt_path=/no/such/file.ckpt"])
    assert str(info.value).startswith("ckpt_path='/no/such/file.ckpt' is not allowed")


def test_resume_from_another_model_is_one_line(runs, tmp_path, capsys):
    from digitpairs.training.checkpoints.resume_command import resume_arguments
    from digitpairs.training.run import run

    ckpt = runs["full"][0] / "checkpoints" / "last.ckpt"
    cfg = compose_config(resume_arguments([f"ckpt_path={ckpt}", "model=convnet"]), tmp_path / "run")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    m = one_error_line(capsys.readouterr().err)
    assert m["key"] == "ckpt_path" and m["allowed"].startswith(
        "a checkpoint of model=convnet (ConvNetModule); it holds model=ws_aux"
    )


def test_train_py_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    result = subprocess.run(
        [sys.executable, "train.py", f"+ckpt_path={bad}"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    m = one_error_line(result.stderr)
    assert (m["key"], m["value"]) == ("ckpt_path", repr(str(bad)))


# ---- evaluate --------------------------------------------------------------------------
def evaluate_cfg(overrides: list[str], output_dir: Path):
    """``conf/evaluate.yaml`` composed and resolved, as ``evaluate.py`` runs it."""
    return compose_config(overrides, output_dir, config_name="evaluate")


def test_evaluate_reproduces_the_runs_own_test_accuracy(runs, tmp_path, capsys):
    from digitpairs.inference.evaluate import evaluate

    run, m, _ = runs["full"]
    (r,) = evaluate(evaluate_cfg([f"ckpt_path={run}"], tmp_path / "ev"))
    assert r["source"] == "idx" and r["seed"] == 0
    assert r["acc"] == m["test_acc"] and r["errors"] == m["test_errors"]
    assert r["digit_acc"] == pytest.approx(m["digit_acc"]["test"], abs=1e-7)
    assert set(r["rules"]) == {"comparator", "argmax", "prob"} and r["rules"]["comparator"] == r["acc"]
    for rule in ("argmax", "prob"):  # every decision rule as the run itself measured it
        assert r["rules"][rule] == pytest.approx(m["rule_acc"][rule]["test"], abs=1e-7)
    assert r["own_test_acc"] == m["test_acc"]
    assert r["normalisation"] == m["normalisation"]  # the checkpoint's, never the new digits'
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"][0]["errors"] == m["test_errors"]
    assert capsys.readouterr().out.count(": ws_aux seed 0 (idx) on 1000 idx test pairs (seed 0): accuracy") == 1


def test_evaluate_a_sweep_folder_on_fresh_test_pairs(runs, tmp_path, capsys):
    from digitpairs.inference.evaluate import evaluate

    sweep = tmp_path / "sweep"
    for job, name in enumerate(("full", "resumed")):
        shutil.copytree(runs[name][0], sweep / str(job))
    records = evaluate(
        evaluate_cfg([f"ckpt_path={sweep}", "data.source=idx", f"data.root={IDX_DIR}", "seed=7"], tmp_path / "ev")
    )
    assert [(r["source"], r["seed"]) for r in records] == [("idx", 7), ("idx", 7)]
    assert all(r["n_pairs"] == 1000 and r["acc"] >= EVAL_ACC_FLOOR for r in records), [r["acc"] for r in records]
    assert records[0]["acc"] == records[1]["acc"]  # the same weights
    lines = (tmp_path / "ev" / "summary.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("job,model,")
    report = (tmp_path / "ev" / "report.md").read_text()
    assert re.search(r"\| `ws_aux` \| 2 \| \d+\.\d\d ± 0\.00 \| \d+\.\d\d ± 0\.00 \|", report), report
    assert capsys.readouterr().out.count("idx test pairs") == 2


def test_evaluate_py_bad_input_is_one_line(tmp_path):
    empty = tmp_path / "sweep"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "evaluate.py", f"ckpt_path={empty}", f"hydra.run.dir={tmp_path / 'ev'}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    m = one_error_line(result.stderr)
    assert m["key"] == "ckpt_path" and "this folder has none" in m["allowed"]


@pytest.mark.parametrize("case", ["none", "missing", "text", "foreign"])
def test_evaluate_bad_checkpoints(case, tmp_path, capsys):
    from digitpairs.inference.evaluate import run

    path = {
        "none": None,
        "missing": tmp_path / "nope.ckpt",
        "text": tmp_path / "a.ckpt",
        "foreign": tmp_path / "b.ckpt",
    }[case]
    (tmp_path / "a.ckpt").write_text("hello")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, tmp_path / "b.ckpt")
    cfg = evaluate_cfg([] if path is None else [f"ckpt_path={path}"], tmp_path / "ev")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    assert one_error_line(capsys.readouterr().err)["key"] == "ckpt_path"


# ---- predict ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predict_main():
    return load_script("predict.py", "predict_cli").main


def test_predict_example_pngs(runs, predict_main, capsys, tmp_path):
    from PIL import Image, ImageOps

    ckpt = str(runs["full"][0] / "checkpoints" / "last.ckpt")
    two, seven = str(EXAMPLES / "two.png"), str(EXAMPLES / "seven_black_on_white.png")
    assert predict_main([ckpt, two, seven]) == 0
    captured = capsys.readouterr()
    assert re.fullmatch(
        r"first: 2 \(p=0\.\d\d\)  second: 7 \(p=0\.\d\d\)  2 <= 7: yes \(p=0\.\d{3}\)\n", captured.out
    ), captured.out
    assert captured.err == "note: the second image has a light background: inverted to a white digit on black\n"
    # reversed, and the white-on-black 2 as black-on-white: the same digits, the other answer
    inverted = tmp_path / "two_inverted.png"
    ImageOps.invert(Image.open(two).convert("L")).save(inverted)
    assert predict_main([ckpt, seven, str(inverted), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["first", "second", "first_probs", "second_probs", "le", "p_le"]
    assert (out["first"], out["second"], out["le"]) == (7, 2, 0)
    assert len(out["first_probs"]) == 10 and abs(sum(out["second_probs"]) - 1) < 1e-4 and out["p_le"] < 0.5


def test_predict_py_json(runs):
    ckpt = runs["full"][0] / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [
            sys.executable,
            "predict.py",
            str(ckpt),
            str(EXAMPLES / "two.png"),
            str(EXAMPLES / "seven_black_on_white.png"),
            "--json",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["first"], out["second"], out["le"]) == (2, 7, 1) and out["p_le"] > 0.5


def test_predict_mnist_test_digits(runs, predict_main, capsys):
    # digits 0 and 1 of the MNIST test set are a 7 and a 2 (conftest.T10K_FIRST_LABELS)
    ckpt = str(runs["full"][0] / "checkpoints" / "last.ckpt")
    assert predict_main([ckpt, "--mnist-test", "1", "0", "--source", "idx", "--root", str(IDX_DIR), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["first"], out["second"], out["le"]) == (2, 7, 1) and out["p_le"] > 0.5


@pytest.mark.parametrize("case", ["missing", "not_image", "one_colour", "not_checkpoint", "one_image"])
def test_predict_bad_input_is_one_line(case, runs, predict_main, capsys, tmp_path):
    from PIL import Image

    ckpt = str(runs["full"][0] / "checkpoints" / "last.ckpt")
    two = str(EXAMPLES / "two.png")
    (tmp_path / "x.png").write_text("not an image")
    Image.new("RGB", (40, 30), (255, 255, 255)).save(tmp_path / "white.png")
    args, key = {
        "missing": ([ckpt, two, str(tmp_path / "nope.png")], "second_image"),
        "not_image": ([ckpt, str(tmp_path / "x.png"), two], "first_image"),
        "one_colour": ([ckpt, two, str(tmp_path / "white.png")], "second_image"),
        "not_checkpoint": ([two, two, two], "checkpoint"),
        "one_image": ([ckpt, two], "image"),
    }[case]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict_main(args)
    assert exit_info.value.code == 2
    assert one_error_line(capsys.readouterr().err)["key"] == key


# ---- the auto source -------------------------------------------------------------------
def write_idx(path: Path, array, gz: bool) -> None:
    """Write ``uint8`` images ``(N, 28, 28)`` or labels ``(N,)`` as an IDX file (the MNIST format)."""
    import gzip

    import numpy as np

    a = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    (gzip.open if gz else open)(path, "wb").write(header + a.tobytes())


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_auto_source_takes_idx_files_dropped_into_root(gz, tmp_path):
    from digitpairs.data import load_pools

    ext = ".gz" if gz else ""
    for prefix, n in (("train", 30), ("t10k", 20)):
        images = torch.arange(n * 28 * 28).reshape(n, 28, 28) % 256
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", torch.arange(n) % 10, gz)
    train, test, source = load_pools("auto", str(tmp_path))
    assert source == "idx" and (len(train), len(test)) == (30, 20)
    assert test.labels.tolist() == [i % 10 for i in range(20)]
