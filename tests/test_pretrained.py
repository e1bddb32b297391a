"""The shipped models (``pretrained/``): they load as data, score what they recorded, and
``predict.py`` and ``evaluate.py`` use them with no training."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import PROJECT_ROOT, load_script
from test_errors import one_error_line

PRETRAINED = PROJECT_ROOT / "pretrained"
EXAMPLES = PROJECT_ROOT / "examples"


@pytest.mark.parametrize("name, model", [("beyond", "digit_classifier"), ("ws_aux", "ws_aux")])
def test_a_shipped_model_loads_as_data_and_scores_its_recorded_accuracy(name, model, tmp_path):
    from conftest import compose_config

    from digitpairs.inference.evaluate import evaluate
    from digitpairs.training.checkpoints.store import info

    ckpt = PRETRAINED / name / "model.ckpt"
    assert ckpt.stat().st_size <= 1_000_000  # beyond: 2 networks (0.78 MB), without its 3.5 MB second member
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in state and "rng" not in state["digitpairs"]
    about = info(state)
    assert (about["model"], about["seed"], about["source"]) == (model, 0, "idx")
    assert not any(k.startswith("second.") for k in state["state_dict"])
    recorded = json.loads((PRETRAINED / name / "metrics.json").read_text())
    assert recorded["model"] == model and recorded["n_train"] == 1000 and recorded["n_test"] == 1000
    assert about["epochs"] == recorded["epochs"] == {"beyond": 70, "ws_aux": 50}[name]  # the count, not one more
    (r,) = evaluate(compose_config([f"ckpt_path={name}", "threads=1"], tmp_path / "ev", config_name="evaluate"))
    assert r["checkpoint"] == str(ckpt) and r["own_test_acc"] == recorded["test_acc"]
    assert r["errors"] == recorded["test_errors"]  # its own 1000 test pairs, the same errors
    assert r["epochs"] == recorded["epochs"]
    assert r["acc"] >= {"beyond": 0.985, "ws_aux": 0.965}[name]


@pytest.mark.slow
def test_predict_py_with_no_checkpoint_uses_the_best_model():
    result = subprocess.run(
        [sys.executable, "predict.py", str(EXAMPLES / "two.png"), str(EXAMPLES / "seven_black_on_white.png")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"first: 2 \(p=\d\.\d\d\)  second: 7 \(p=\d\.\d\d\)  2 <= 7: yes \(p=\d\.\d{3}\)\n", result.stdout
    )


@pytest.mark.parametrize("model", ["ws_aux", "beyond", str(PRETRAINED / "ws_aux" / "model.ckpt")])
def test_predict_model_chooses_another(model, capsys):
    main = load_script("predict.py", "predict_pretrained").main
    assert (
        main(["--model", model, str(EXAMPLES / "seven_black_on_white.png"), str(EXAMPLES / "two.png"), "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["first"], out["second"], out["le"]) == (7, 2, 0)


def test_an_unknown_model_name_is_one_line(capsys):
    main = load_script("predict.py", "predict_pretrained_bad").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "best", str(EXAMPLES / "two.png"), str(EXAMPLES / "two.png")])
    assert exit_info.value.code == 2
    m = one_error_line(capsys.readouterr().err)
    assert m["key"] == "--model" and m["allowed"].startswith("one of beyond, ws_aux")
