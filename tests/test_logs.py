"""What a log file gets: `python train.py > out.log 2>&1` (not a terminal) has no
progress-bar refreshes, a few epoch lines instead, and a sweep's jobs leave Lightning's
INFO lines out."""

from __future__ import annotations

import io

import pytest
from conftest import run_train

from digitpairs.training.run import progress_bar_shown

pytestmark = pytest.mark.slow


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    assert progress_bar_shown(True, _Tty()) is True
    assert progress_bar_shown(True, io.StringIO()) is False  # a file or a pipe
    assert progress_bar_shown(False, _Tty()) is False


def test_run_into_a_file_writes_epoch_lines_not_a_progress_bar(tmp_path):
    # the default trainer asks for a progress bar; the output here is a pipe
    result = run_train(["trainer.max_epochs=3", "data.n_pairs=100", "data.eval_batch_size=100", "threads=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "\r" not in text and "it/s" not in text  # no tqdm refreshes
    assert [line.split(" - ", 1)[1].split(":")[0] for line in text.splitlines() if "] - epoch " in line] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]
    assert "GPU available" in text  # a single run keeps Lightning's device line
    assert len(text.encode()) < 5_000, len(text.encode())
