"""The report where statistics have no answer: one run per group, constant groups, and
accuracy bands that would pass 100 %."""

from __future__ import annotations

import json
import math
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


def test_the_report_s_lines_give_no_std_for_one_run(tmp_path, caplog):
    sweep = fake_sweep(tmp_path, {"convnet": [0.4367], "ws": [0.55, 0.57]})
    with caplog.at_level("INFO", logger="digitpairs.sweeps.report"):
        build_report(sweep)
    lines = [r.getMessage().split() for r in caplog.records if "test accuracy" in r.getMessage()]
    assert lines == [
        ["convnet", "1", "run:", "test", "accuracy", "43.67", "%"],
        ["ws", "2", "runs:", "test", "accuracy", "56.00", "±", "1.41", "%"],
    ]


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


# ---- hand-edited records ----------------------------------------------------------------
def good_record(acc: float, seed: int) -> dict:
    return {
        "status": "ok",
        "model": "ws_aux",
        "seed": seed,
        "source": "idx",
        "val_acc": 0.95,
        "test_acc": acc,
        "train_acc": 1.0,
        "test_errors": round((1 - acc) * 1000),
        "n_test": 1000,
        "digit_acc": {"train": 1.0, "val": 0.97, "test": 0.98},
        "rule_acc": {rule: {"train": 1.0, "val": 0.95, "test": acc} for rule in ("comparator", "argmax", "prob")},
        "epochs": 2,
        "precision": "32-true",
        "wall_time_s": 1.5,
        "history": {"train/loss_main": [0.7, 0.5], "curve/test_acc": [acc - 0.1, acc], "lr": [0.09, 0.001]},
        "hparams": {"model_name": "ws_aux", "seed": seed, "optim.lr1": 0.09},
    }


GOOD = json.dumps(good_record(0.95, 3), indent=2)


def edited(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


# job: (metrics.json text, overrides.yaml text or None, the row's error)
BAD_RECORDS = {
    "stray_comma": (
        edited('"seed": 3,', '"seed": 3,,'),
        None,
        "metrics.json is not valid JSON: Expecting property name enclosed in double quotes (line 4, column 13)",
    ),
    "half_a_file": (GOOD[: len(GOOD) // 2], None, "metrics.json is not valid JSON: "),
    "empty_file": ("", None, "metrics.json is not valid JSON: Expecting value (line 1, column 1)"),
    "not_utf8": (b"\xff\xfe{".decode("latin-1"), None, "metrics.json "),
    "a_list": (json.dumps([good_record(0.95, 3)]), None, "metrics.json: holds a list, not a JSON object"),
    "string_acc": (
        edited('"test_acc": 0.95', '"test_acc": "0.95"'),
        None,
        'metrics.json: test_acc="0.95" is not a fraction in [0, 1] (a string)',
    ),
    "percentage": (
        edited('"test_acc": 0.95', '"test_acc": 95.0'),
        None,
        "metrics.json: test_acc=95.0 is not a fraction in [0, 1] (a percentage?)",
    ),
    "val_percentage": (
        edited('"val_acc": 0.95', '"val_acc": 95'),
        None,
        "metrics.json: val_acc=95 is not a fraction in [0, 1] (a percentage?)",
    ),
    "nan_acc": (edited('"test_acc": 0.95', '"test_acc": NaN'), None, "metrics.json: test_acc=nan is not a fraction"),
    "missing_key": (
        json.dumps({k: v for k, v in good_record(0.95, 3).items() if k != "test_acc"}),
        None,
        "metrics.json: has no test_acc",
    ),
    "errors_without_n_test": (
        json.dumps({k: v for k, v in good_record(0.95, 3).items() if k != "n_test"}),
        None,
        "metrics.json: has test_errors but no n_test to check them against",
    ),
    "errors_out_of_range": (
        edited('"test_errors": 50', '"test_errors": 5000'),
        None,
        "metrics.json: test_errors=5000 is not an integer in [0, 1000]",
    ),
    "errors_disagree": (
        edited('"test_errors": 50', '"test_errors": 7'),
        None,
        "metrics.json: test_errors=7 disagrees with test_acc=0.95 of n_test=1000 (50 errors)",
    ),
    "digit_acc_percentage": (
        edited('"test": 0.98', '"test": 98.0'),
        None,
        "metrics.json: digit_acc.test=98.0 is not a fraction in [0, 1] (a percentage?)",
    ),
    "history_percentage": (
        edited('"curve/test_acc": [\n      0.85', '"curve/test_acc": [\n      85'),
        None,
        "metrics.json: history.curve/test_acc[0]=85 is not a fraction in [0, 1] (a percentage?)",
    ),
    "unknown_status": (
        edited('"status": "ok"', '"status": "done"'),
        None,
        'metrics.json: status="done" is not one of ok, failed, invalid, killed',
    ),
    "broken_overrides": (
        GOOD,
        "- model=ws_aux\n- seed: [3\n",
        ".hydra/overrides.yaml is not valid YAML: expected ',' or ']', but got '<stream end>' (line 3, column 1)",
    ),
    "overrides_a_mapping": (GOOD, "model: ws_aux\n", ".hydra/overrides.yaml holds an object, not a list of overrides"),
}


def records_sweep(root: Path) -> Path:
    """Jobs 000-002 with sound records (test accuracy 97, 98, 96 %), then one job per
    kind of bad record, each named after its kind."""
    for job, acc in enumerate((0.97, 0.98, 0.96)):
        d = root / f"{job:03d}"
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- model=ws_aux\n- seed={job}\n")
        (d / "metrics.json").write_text(json.dumps(good_record(acc, job), indent=2))
    for name, (text, overrides, _) in BAD_RECORDS.items():
        d = root / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(overrides or "- model=ws_aux\n- seed=3\n")
        (d / "metrics.json").write_bytes(text.encode("latin-1") if name == "not_utf8" else text.encode())
    return root


def test_hand_edited_records_are_invalid_rows_and_never_averaged(tmp_path):
    """`python -m digitpairs.sweeps.report <sweep>` on a sweep holding every kind of bad
    record: exit 0, no traceback; each bad job a row `invalid` with its reason; the report
    averages the three sound jobs only."""
    import csv
    import subprocess
    import sys

    sweep = records_sweep(tmp_path / "sweep")
    out = subprocess.run(
        [sys.executable, "-m", "digitpairs.sweeps.report", str(sweep)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    with (sweep / "summary.csv").open() as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert [rows[f"{j:03d}"]["status"] for j in range(3)] == ["ok"] * 3
    for name, (_, _, reason) in BAD_RECORDS.items():
        assert rows[name]["status"] == "invalid", name
        assert rows[name]["error"].startswith(reason), (name, rows[name]["error"])
        assert rows[name]["test_acc"] == rows[name]["val_acc"] == rows[name]["test_errors"] == "", name
        assert f"job {name} invalid: {rows[name]['error']}" in out.stderr  # one warning line per bad job
    report = (sweep / "report.md").read_text()
    (table,) = [line for line in report.splitlines() if line.startswith("| ws_aux |")]
    cells = [c.strip() for c in table.strip("|").split("|")]
    assert cells[1:3] == ["3", "97.00 ± 1.00"]  # 3 runs: the bad jobs' 95 %, 9500 %, ... left out
    assert cells[7] == "30.0"  # mean test errors of the three
    assert f"{3 + len(BAD_RECORDS)} jobs: 3 ok, {len(BAD_RECORDS)} invalid." in report
    failed = report.split("## Failed jobs")[1]
    assert all(f"| {name} | invalid |" in failed for name in BAD_RECORDS)
    ranking = (sweep / "ranking.csv").read_text().splitlines()
    assert len(ranking) == 2 and ranking[1].startswith("1,ws_aux,model=ws_aux,3,0.94999")  # 3 seeds, val 0.95


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_each_bad_record_in_process(name, tmp_path):
    from digitpairs.sweeps.summary import collect

    text, overrides, reason = BAD_RECORDS[name]
    d = tmp_path / "000"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(overrides or "- model=ws_aux\n- seed=3\n")
    (d / "metrics.json").write_bytes(text.encode("latin-1") if name == "not_utf8" else text.encode())
    (row,) = collect(tmp_path)
    assert row["status"] == "invalid" and row["error"].startswith(reason)
    assert all(math.isnan(row[k]) for k in ("test_acc", "val_acc", "train_acc", "digit_acc", "wall_time_s"))


def test_sound_records_of_every_status_still_read(tmp_path):
    """The records runs and launchers write pass: ok (with nulls where a run has no value),
    failed, invalid, killed (a SLURM record), and a job without metrics.json."""
    from digitpairs.sweeps.summary import collect

    ok = good_record(0.979, 0) | {"val_acc": None, "digit_acc": None, "rule_acc": None, "test_errors": 21}
    records = {
        "000": ok,
        "001": {"status": "failed", "error": "run failed: diverged", "model": "ws", "seed": 1, "overrides": []},
        # a refused run records the value it was refused for, whatever its type
        "002": {"status": "invalid", "error": "seed='abc' is not allowed: expected an integer", "seed": "abc"},
        "003": {"status": "killed", "error": "SLURM job 3_0 TIMEOUT", "model": None, "seed": None, "overrides": []},
        "004": None,
    }
    for job, record in records.items():
        d = tmp_path / job
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text("- model=ws\n")
        if record is not None:
            (d / "metrics.json").write_text(json.dumps(record))
    rows = collect(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "failed", "invalid", "killed", "missing"]
    assert rows[0]["test_acc"] == 0.979 and math.isnan(rows[0]["val_acc"]) and rows[0]["test_errors"] == 21
    assert rows[2]["error"] == records["002"]["error"]


def test_tensorboard_columns_leave_bad_records_out(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from digitpairs.sweeps.hparams_table import write_sweep_experiment

    sweep = records_sweep(tmp_path / "sweep")
    write_sweep_experiment(sweep)
    acc = EventAccumulator(str(sweep))
    acc.Reload()
    (content,) = acc.PluginTagToContent("hparams").values()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    # the three sound jobs and the two whose overrides.yaml alone is broken (their metrics.json is sound)
    assert "5 runs" in experiment.description
    assert [m.name.tag for m in experiment.metric_infos] == ["final/test_acc", "final/val_acc", "final/train_acc"]


# ---- evaluate.py reads the run's own record defensively ---------------------------------------
def test_evaluate_with_a_bad_own_record_still_writes_its_result(tmp_path, capsys):
    """A sweep of two copies of the shipped ws_aux: one with its record, one whose record
    says 97.9 where a fraction belongs. Both are evaluated and written; the bad one's own
    figure is unknown, with the reason, and the report's own column averages the good one only."""
    import shutil

    from conftest import PROJECT_ROOT, compose_config

    from digitpairs.inference.evaluate import evaluate

    shipped = PROJECT_ROOT / "pretrained" / "ws_aux"
    record = json.loads((shipped / "metrics.json").read_text())
    sweep = tmp_path / "sweep"
    for job, text in (("000", json.dumps(record)), ("001", json.dumps(record | {"test_acc": 97.9}))):
        (sweep / job / "checkpoints").mkdir(parents=True)
        shutil.copy(shipped / "model.ckpt", sweep / job / "checkpoints" / "last.ckpt")
        (sweep / job / "metrics.json").write_text(text)
    cfg = compose_config([f"ckpt_path={sweep}", "threads=1"], tmp_path / "ev", config_name="evaluate")
    good, bad = evaluate(cfg)
    assert good["own_test_acc"] == record["test_acc"] and good["own_record"] is None
    assert bad["own_test_acc"] is None
    assert bad["own_record"] == "metrics.json: test_acc=97.9 is not a fraction in [0, 1] (a percentage?)"
    assert bad["acc"] == good["acc"]  # the evaluation itself is whole
    out = capsys.readouterr().out
    assert "its own test unknown (metrics.json: test_acc=97.9 is not a fraction in [0, 1] (a percentage?))" in out
    written = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [r["own_test_acc"] for r in written["results"]] == [record["test_acc"], None]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert f"| `ws_aux` | 2 | {100 * record['test_acc']:.2f} |" in report  # the good job's own figure alone


# ---- a sweep folder that cannot be written ------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs mounted at ``tmp_path/mnt`` (root can write through chmod, not through
    a read-only mount); ``remount(options)`` changes it. Skipped where mounting is not allowed."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True, capture_output=True)

    try:
        yield mnt, remount
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def run_module(module: str, folder: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", module, str(folder)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("module", ["digitpairs.sweeps.report", "digitpairs.sweeps.summary"])
def test_read_only_sweep_folder_is_one_line(module, small_tmpfs):
    mnt, remount = small_tmpfs
    sweep = fake_sweep(mnt / "sweep", {"ws_aux": [0.97, 0.98]})
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    remount("ro")
    out = run_module(module, sweep)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: cannot write into the sweep folder {sweep}: Read-only file system"
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before


def test_sweep_end_on_a_read_only_folder_is_one_line(small_tmpfs, capsys):
    """The callback that ends every multirun, on a folder gone read-only: exit 1, one line."""
    from omegaconf import OmegaConf

    from digitpairs.sweeps.sweep_end import SweepSummary

    mnt, remount = small_tmpfs
    sweep = fake_sweep(mnt / "sweep", {"ws_aux": [0.97, 0.98]})
    remount("ro")
    with pytest.raises(SystemExit) as exit_info:
        SweepSummary(report=True).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write into the sweep folder {sweep}: Read-only file system; the jobs' records are kept"
    )


def test_full_disk_keeps_the_old_summary_whole(small_tmpfs):
    """A sweep folder on a full disk: one line, and the summary.csv written before stays whole."""
    mnt, _ = small_tmpfs
    sweep = fake_sweep(mnt / "sweep", {"ws_aux": [0.97, 0.98]})
    assert run_module("digitpairs.sweeps.summary", sweep).returncode == 0
    old = (sweep / "summary.csv").read_text()
    (sweep / "001" / "metrics.json").write_text(
        (sweep / "001" / "metrics.json").read_text().replace('"test_acc": 0.98', '"test_acc": 0.981')
    )
    with (mnt / "filler").open("wb") as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    out = run_module("digitpairs.sweeps.summary", sweep)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: cannot write into the sweep folder {sweep}: No space left on device"
    )
    assert "Traceback" not in out.stderr
    assert (sweep / "summary.csv").read_text() == old
