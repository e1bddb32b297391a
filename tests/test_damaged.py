"""Damaged and foreign checkpoints, and files that only look like images.

A checkpoint is checked whole before it is used, by every entry point (``train.py
ckpt_path=``, ``evaluate.py``, ``predict.py``; the demo loads through ``predict``'s
loader): the zip's CRC-32 of every member, finite weights and optimiser state, and every
value the program then uses in its closed set or range. A shipped model and another
program's checkpoint are refused by ``train.py`` at once, with the real reason. An image
file is decoded only as PNG or JPEG, whatever its name.

The checkpoints here come from one short real run (ws_aux, 1 epoch, 100 pairs), then
damaged as a disk, a copy or an attacker would.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, compose_config, load_script, read_metrics, run_train
from test_errors import one_error_line

EXAMPLES = PROJECT_ROOT / "examples"
TWO, SEVEN = str(EXAMPLES / "two.png"), str(EXAMPLES / "seven_black_on_white.png")
QUICK = [
    "trainer.max_epochs=1",
    "data.n_pairs=100",
    "threads=1",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
EXPECTED = "a checkpoint (.ckpt) written by a digitpairs run (checkpoints/last.ckpt of a run folder)"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run folder of a real 1-epoch ws_aux run (its ``checkpoints/last.ckpt``)."""
    from digitpairs.training.run import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config(["model=ws_aux", *QUICK], run))
    return run


def resaved(trained: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the run's ``last.ckpt`` with ``edit`` applied to its dict, saved by
    ``torch.save`` (so its archive is whole: only its values are wrong)."""
    state = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    edit(state)
    out = folder / "damaged.ckpt"
    torch.save(state, out)
    return out


def flipped(trained: Path, folder: Path) -> Path:
    """A copy of the run's ``last.ckpt`` with one bit flipped in a stored weight: a high
    exponent bit of the first float of ``archive/data/0`` (one of the weights)."""
    src = trained / "checkpoints" / "last.ckpt"
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        offset = archive.getinfo("archive/data/0").header_offset
    name_len, extra_len = struct.unpack("<HH", data[offset + 26 : offset + 30])  # the member's local header
    data[offset + 30 + name_len + extra_len + 3] ^= 0x40  # little-endian float32: byte 3, the exponent's top bits
    out = folder / "flipped.ckpt"
    out.write_bytes(bytes(data))
    before = torch.load(src, weights_only=True)["state_dict"]
    after = torch.load(io.BytesIO(bytes(data)), weights_only=True)["state_dict"]  # torch.load reads it silently
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(torch.isfinite(after[k]).all() for k in changed)  # finite and wrong (shared by branches)
    return out


def _set(path: str, value) -> Callable[[dict], None]:
    """An edit that sets ``state[a][b]...`` (``path`` = ``"a/b/..."``) to ``value``."""

    def edit(state: dict) -> None:
        *parents, last = path.split("/")
        node = state
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value

    return edit


def _nan_biases(state: dict) -> None:
    for name, tensor in state["state_dict"].items():
        if name.endswith("bias"):
            state["state_dict"][name] = torch.full_like(tensor, float("nan"))


# damage -> (edit, the end of the error line); None: the bit flip
DAMAGES = {
    "nan_weights": (_nan_biases, "with finite values; state_dict net.branch1.0.bias holds NaN or infinity"),
    "inf_optimiser": (
        _set("optimizer_states/0/param_groups/0/lr", float("inf")),
        "with finite values; optimizer_states 0.param_groups.0.lr holds NaN or infinity",
    ),
    "flipped_bit": (None, "it is damaged: archive/data/0 fails its CRC-32 check"),
    "precision": (
        _set("digitpairs/precision", "transformer-engine"),
        "its precision 'transformer-engine' is not one of 32-true, 32, 64-true, 64, bf16-mixed, bf16, 16-mixed, "
        "16, bf16-true, 16-true",
    ),
    "epochs": (
        _set("loops/fit_loop/epoch_progress/current/processed", -3),
        "its epoch count -3 is not an integer in [0, 100000]",
    ),
    "max_epochs": (_set("digitpairs/max_epochs", "50"), "its max_epochs '50' is not an integer in [1, 100000]"),
    "model_name": (_set("digitpairs/model_name", "../evil"), "its model name '../evil' is not one of aux, convnet"),
    "seed": (_set("datamodule_hyper_parameters/seed", 2**40), "its seed 1099511627776 is not an integer in [0, "),
    "source": (_set("PairDataModule/resolved_source", "http://evil"), "its resolved data source 'http://evil'"),
    "std": (_set("PairDataModule/std", 0.0), "its training pixels' mean"),
    "hyperparameter": (
        _set("hyper_parameters/members", 10**6),
        "its hyperparameter model.members=1000000 is out of range (an integer in [1, 64])",
    ),
}


def damaged(name: str, trained: Path, folder: Path) -> Path:
    edit = DAMAGES[name][0]
    return flipped(trained, folder) if edit is None else resaved(trained, folder, edit)


def refusal(entry: str, ckpt: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    """``(exit code, stderr)`` of an entry point given ``ckpt``, in this process: ``predict``
    (``predict.py <ckpt> two.png seven.png``), ``evaluate`` (``evaluate.py ckpt_path=<ckpt>``)
    or ``train`` (``train.py ckpt_path=<ckpt>``: its command line, before Hydra)."""
    from digitpairs.utils.errors import one_line_errors

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        if entry == "predict":
            load_script("predict.py", "predict_damaged").main([str(ckpt), TWO, SEVEN])
        elif entry == "evaluate":
            from digitpairs.inference.evaluate import run

            run(compose_config([f"ckpt_path={ckpt}"], tmp_path / "ev", config_name="evaluate"))
        else:
            from digitpairs.training.checkpoints.resume_command import resume_arguments

            with one_line_errors():
                resume_arguments([f"ckpt_path={ckpt}"])
            raise AssertionError("resume_arguments accepted it")
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("entry", ["predict", "evaluate", "train"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_refused_by_every_entry_point(damage, entry, trained, tmp_path, capsys):
    ckpt = damaged(damage, trained, tmp_path)
    code, err = refusal(entry, ckpt, tmp_path, capsys)
    assert code == 2
    m = one_error_line(err)
    assert (m["key"], m["value"]) == ("checkpoint" if entry == "predict" else "ckpt_path", repr(str(ckpt)))
    assert m["allowed"].startswith(EXPECTED) and DAMAGES[damage][1] in m["allowed"], m["allowed"]
    assert not (tmp_path / "ev" / "metrics.json").exists()  # evaluate: refused before any work


def test_predict_py_json_with_nan_weights_is_one_line_not_nan(trained, tmp_path, capsys):
    """``python predict.py <ckpt> two.png seven.png --json``: once ``p_le: NaN``, exit 0."""
    ckpt = damaged("nan_weights", trained, tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        load_script("predict.py", "predict_nan").main([str(ckpt), TWO, SEVEN, "--json"])
    assert exit_info.value.code == 2
    assert capsys.readouterr() == (
        "",
        f"error: checkpoint={str(ckpt)!r} is not allowed: expected {EXPECTED} "
        "with finite values; state_dict net.branch1.0.bias holds NaN or infinity\n",
    )


def test_finite_weights_that_overflow_never_print_nan(trained, tmp_path, capsys):
    """Weights at the edge of float32 pass the checks but overflow: the answer is checked
    too, so ``--json`` never writes NaN (not JSON)."""

    def huge(state: dict) -> None:  # +-3e38, finite in float32: their sums are inf - inf
        for name in ("net.branch1.0.weight", "net.branch2.0.weight"):
            w = state["state_dict"][name]
            state["state_dict"][name] = torch.where(torch.arange(w.numel()).reshape(w.shape) % 2 == 0, 3e38, -3e38)

    ckpt = resaved(trained, tmp_path, huge)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        load_script("predict.py", "predict_overflow").main([str(ckpt), TWO, TWO, "--json"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    m = one_error_line(captured.err)
    assert m["key"] == "checkpoint" and m["allowed"].startswith("a model whose answer is finite; it answers p=nan")


def test_an_undamaged_checkpoint_still_loads_everywhere(trained, tmp_path, capsys):
    from digitpairs.training.checkpoints.resume_command import resume_arguments

    ckpt = trained / "checkpoints" / "last.ckpt"
    assert load_script("predict.py", "predict_whole").main([str(ckpt), TWO, SEVEN, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["p_le"] >= 0
    args = resume_arguments([f"ckpt_path={ckpt}", "trainer.max_epochs=2"])
    assert "model=ws_aux" in args and args[-1] == f"ckpt_path='{ckpt}'"


# ---- what only a resume uses --------------------------------------------------------------
def _misshapen_momentum(state: dict) -> None:
    state["optimizer_states"][0]["state"][0] = {"momentum_buffer": torch.zeros(3)}


RESUME_DAMAGES = {
    "random_state": (_set("digitpairs/rng/torch", torch.zeros(7, dtype=torch.uint8)), "its random state"),
    "history": (_set("callbacks/EpochHistory/history/evil", [1.0]), "its history has an unknown key 'evil'"),
    "optimiser_shape": (_misshapen_momentum, "its optimiser state does not fit the model"),
    "loops": (_set("loops", {}), "its loops record no count of the epochs done"),
    "lightning_version": (_set("pytorch-lightning_version", "not a version"), "its Lightning version"),
}


@pytest.mark.parametrize("damage", list(RESUME_DAMAGES))
def test_what_a_resume_restores_is_checked_before_hydra(damage, trained, tmp_path, capsys):
    edit, fragment = RESUME_DAMAGES[damage]
    ckpt = resaved(trained, tmp_path, edit)
    code, err = refusal("train", ckpt, tmp_path, capsys)
    assert code == 2
    m = one_error_line(err)
    assert m["key"] == "ckpt_path" and fragment in m["allowed"], m["allowed"]


# ---- shipped models and other programs' checkpoints ----------------------------------------
def foreign(folder: Path) -> Path:
    """A Lightning checkpoint of another program: its own model, optimiser and loops."""
    weights = {"layer.weight": torch.zeros(4, 3), "layer.bias": torch.zeros(4)}
    state = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": weights,
        "hyper_parameters": {"lr": 0.1, "hidden": 4},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "loops": {},
    }
    torch.save(state, folder / "other.ckpt")
    return folder / "other.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["shipped", "foreign"])
def test_train_py_refuses_what_cannot_resume_at_once(which, tmp_path):
    ckpt = PROJECT_ROOT / "pretrained" / "ws_aux" / "model.ckpt" if which == "shipped" else foreign(tmp_path)
    result = run_train([f"ckpt_path={ckpt}", "trainer.max_epochs=60"], tmp_path, timeout=120)
    assert result.returncode == 2
    why = {
        "shipped": f"{EXPECTED} to resume; this one holds a model's weights only (a shipped model: no "
        "optimizer_states, lr_schedulers, loops): use it with evaluate.py or predict.py, or train a new run",
        "foreign": f"{EXPECTED}; this one has no digitpairs record (its model class, overrides and random "
        "state): another program wrote it",
    }[which]
    assert result.stderr == f"error: ckpt_path={str(ckpt)!r} is not allowed: expected {why}\n"
    assert not (tmp_path / "run").exists()  # nothing was built or written


def test_a_shipped_checkpoint_counts_the_epochs_its_run_trained(trained, tmp_path):
    """``make pretrained``'s export keeps no loops; the epochs go into the record. Lightning's
    own ``epoch`` entry, saved after ``fit``, is the count itself, not the last index."""
    from digitpairs.inference.pretrained import export
    from digitpairs.training.checkpoints.store import info
    from digitpairs.training.run import train

    runs = tmp_path / "runs"
    shutil.copytree(trained, runs / "ws_aux")
    train(compose_config(["model=digit_classifier", "model.tta=0", *QUICK], runs / "beyond"))
    written = export(runs, tmp_path / "shipped")
    for path in written:
        state = torch.load(path, weights_only=True)
        assert "loops" not in state and state["epoch"] == 1  # Lightning's entry after fit: the count
        assert info(state)["epochs"] == read_metrics(runs / path.parent.name)["epochs"] == 1
    whole = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    del whole["loops"]
    assert info(whole)["epochs"] is None  # no count recorded: unknown, never Lightning's entry + 1


# ---- image files: PNG and JPEG only, whatever the name --------------------------------------
EPS = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 4 4 moveto 24 24 lineto stroke\nshowpage\n"


def test_an_eps_file_named_png_never_starts_ghostscript(tmp_path, monkeypatch, capsys):
    """A ``gs`` on the PATH that leaves a mark when it runs: Pillow would start it for an
    EPS file, whatever its name."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "ghostscript-ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 0\n')
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # look for gs again, on this PATH
    two = tmp_path / "two.png"
    two.write_text(EPS)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        load_script("predict.py", "predict_eps").main(["--model", "ws_aux", TWO, str(two)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: second_image={str(two)!r} is not allowed: expected an image file (PNG or JPEG, any size, grey or "
        "colour) of one digit; this file is not one (UnidentifiedImageError)\n"
    )
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_truncated_png_is_the_not_an_image_line(cut, tmp_path):
    from digitpairs.inference.predict import load_digit
    from digitpairs.utils.errors import ConfigError

    data = (EXAMPLES / "two.png").read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ConfigError) as info:
        load_digit(path, "first_image")
    assert str(info.value) == (
        f"first_image={str(path)!r} is not allowed: expected an image file (PNG or JPEG, any size, grey or "
        "colour) of one digit; this file is not one (OSError)"
    )


def test_any_decoder_failure_is_the_not_an_image_line(tmp_path, monkeypatch):
    """A decoder that fails with something other than ``OSError`` (Pillow's plugins raise
    ``SyntaxError``, ``struct.error``, ...) is the same one line."""
    from PIL import PngImagePlugin

    from digitpairs.inference.predict import load_digit
    from digitpairs.utils.errors import ConfigError

    def broken(self):
        raise SyntaxError("broken PNG file")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with pytest.raises(ConfigError, match=r"this file is not one \(SyntaxError\)$"):
        load_digit(EXAMPLES / "two.png", "first_image")
