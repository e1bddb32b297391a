"""The report where statistics have no answer: one run per group, constant groups, and
accuracy bands that would pass 100 %."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from digitpairs.sweeps.report import build_report, mean_band, welch, welch_undefined


def fake_sweep(root: Path, accs: dict[str, list[float]]) -> Path:
    """Job folders with ``metrics.json`` as a sweep leaves them, one per value."""
    job = 0
    for model, values in accs.items():
        for seed, acc in enumerate(values):
            d = root / f"{job:03d}"
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
                        "digit_acc": None,
                        "wall_time_s": 1.0,
                        "epochs": 1,
                        "history": {"train/loss_main": [0.7], "curve/test_acc": [acc]},
                    }
                )
            )
            job += 1
    return root


def welch_rows(report: str) -> dict[tuple[str, str], list[str]]:
    part = report.split("## Welch t-tests of test accuracy")[1].split("\n\n![")[0].split("## Failed")[0]
    rows = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("A", "---"):
            rows[cells[0], cells[1]] = cells
    return rows


def test_welch_says_why_it_has_no_answer(tmp_path):
    # convnet has one run; ws and ws_aux are constant (as `seed=0` sweeps of 1 epoch can be)
    sweep = fake_sweep(tmp_path, {"convnet": [0.5], "ws": [0.55, 0.55], "ws_aux": [0.6, 0.6], "aux": [0.5, 0.7]})
    rows = welch_rows(build_report(sweep).read_text())
    assert rows["convnet", "ws"][3:] == ["n/a (one run)", "n/a (one run)"]
    assert rows["ws", "ws_aux"][3:] == ["n/a (no variance)", "n/a (no variance)"]
    assert rows["ws", "ws_aux"][2] == "-5.00"  # the difference of means is still given
    t, p = welch([55.0, 55.0], [50.0, 70.0])  # one constant group: defined
    assert rows["ws", "aux"][3:] == [f"{t:.2f}", f"{p:.2g}"]
    assert "nan" not in " ".join(" ".join(r) for r in rows.values())
    assert "inf" not in " ".join(" ".join(r) for r in rows.values())


def test_welch_undefined_cases():
    assert welch_undefined([1.0], [1.0, 2.0]) == "one run"
    assert welch_undefined([1.0, 1.0], [2.0, 2.0]) == "no variance"
    assert welch_undefined([1.0, 1.0], [2.0, 3.0]) is None
    assert np.isnan(welch([1.0, 1.0], [2.0, 2.0])[1])


def test_accuracy_band_is_clipped_to_100():
    runs = np.array([[100.0, 90.0], [100.0, 80.0], [80.0, 85.0]])  # mean ± std of epoch 1 passes 100
    mean, low, high = mean_band(runs, limits=(0.0, 100.0))
    assert mean == pytest.approx([93.333333, 85.0])
    assert high.max() == 100.0 and (low >= 0).all()
    raw_high = runs.mean(axis=0) + runs.std(axis=0)
    assert raw_high[0] > 100  # the case exists
    assert high[1] == pytest.approx(raw_high[1])  # clipping changes nothing below 100
