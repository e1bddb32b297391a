"""Sweep summary: one table per multirun, written by a Hydra callback at its end.

Files written into the sweep folder:

- ``summary.csv``: one row per job (``status`` ok / failed / invalid / killed / missing), with its
  overrides, model, seed, val/test/train accuracy, test errors, digit accuracy (test and
  val), the test accuracy of each decision rule of the aux models, and wall time. A job
  whose records cannot be used (a ``metrics.json`` or ``.hydra/overrides.yaml`` edited by
  hand, cut short, or with a value out of its range: :mod:`digitpairs.sweeps.records`) is
  a row ``invalid`` whose ``error`` says why; none of its values is used.
- ``ranking.csv``: the swept configurations (the overrides without ``seed``) ranked by
  **validation** accuracy, averaged over seeds. The test set never takes part.
- ``best_overrides.txt``: per model, the best configuration as a ready override line.

The Hydra callback :class:`~digitpairs.sweeps.sweep_end.SweepSummary` writes them at the
end of every multirun; ``python -m digitpairs.sweeps.summary <sweep folder>`` (re)writes
them by hand; every file is written whole or not at all, once every job has been read.
This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from digitpairs.sweeps.records import RULES, BadRecord, read_metrics, read_overrides
from digitpairs.utils.errors import exit_with
from digitpairs.utils.io import write_text

log = logging.getLogger(__name__)

COLUMNS = [
    "job",
    "status",
    "model",
    "seed",
    "source",
    "epochs",
    "precision",
    "config",
    "val_acc",
    "test_acc",
    "train_acc",
    "test_errors",
    "n_test",
    "digit_acc",
    "val_digit_acc",
    "test_acc_comparator",
    "test_acc_argmax",
    "test_acc_prob",
    "wall_time_s",
    "overrides",
    "error",
]


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep: sub-folders holding Hydra's ``.hydra/overrides.yaml``."""
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


NOT_CONFIG = (
    "seed=",
    "experiment=",
    "hparams_search=",
    "hydra",
    "threads=",
    "cpu.",
    "trainer.enable_progress_bar=",
)  # not hyperparameters: seeds and run settings


def config_key(overrides: list[str]) -> str:
    """The configuration of a job: its overrides without seeds and run settings
    (``NOT_CONFIG``), sorted and space-joined, e.g. ``loss.alpha=0.5 model=ws_aux optim.lr1=0.09``."""
    return " ".join(sorted(o for o in overrides if not o.lstrip("+~").startswith(NOT_CONFIG)))


def _row(job_dir: Path, overrides: list[str], m: dict[str, Any]) -> dict[str, Any]:
    """The summary row of a job whose records passed :mod:`~digitpairs.sweeps.records`."""
    digit = m.get("digit_acc") or {}
    rule_acc = m.get("rule_acc") or {}
    return {
        "job": job_dir.name,
        "status": m["status"],
        "model": m.get("model") or next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), ""),
        "seed": "" if m.get("seed") is None else m["seed"],
        "source": m.get("source") or "",
        "epochs": "" if m.get("epochs") is None else m["epochs"],
        "precision": m.get("precision") or "",
        "config": config_key(overrides),
        "val_acc": _float(m.get("val_acc")),
        "test_acc": _float(m.get("test_acc")),
        "train_acc": _float(m.get("train_acc")),
        "test_errors": "" if m.get("test_errors") is None else m["test_errors"],
        "n_test": "" if m.get("n_test") is None else m["n_test"],
        "digit_acc": _float(digit.get("test")),
        "val_digit_acc": _float(digit.get("val")),
        **{f"test_acc_{rule}": _float((rule_acc.get(rule) or {}).get("test")) for rule in RULES},
        "wall_time_s": _float(m.get("wall_time_s")),
        "overrides": " ".join(overrides),
        "error": " ".join(str(m.get("error") or "").split()),  # one line in the table
        "history": m.get("history") or {},  # per-epoch series for the report's curves (not a column)
    }


def _invalid_row(job_dir: Path, overrides: list[str], reason: str) -> dict[str, Any]:
    """The row of a job whose records cannot be used: status ``invalid``, no values."""
    row = _row(job_dir, overrides, {"status": "invalid"})
    row["error"] = " ".join(reason.split())
    log.warning("job %s invalid: %s", job_dir.name, row["error"])
    return row


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row (see ``COLUMNS``, plus ``history``, the job's per-epoch series) per job
    folder of ``sweep_dir``, every record read defensively (:mod:`~digitpairs.sweeps.records`).

    A job without ``metrics.json`` (it crashed before writing one) gets status ``missing``;
    a job whose ``metrics.json`` or ``.hydra/overrides.yaml`` cannot be used (not JSON or
    YAML, cut short, a list, a key missing, a value of another type or out of its range)
    gets status ``invalid`` and the reason in ``error``, e.g.
    ``metrics.json: test_acc=97.5 is not a fraction in [0, 1] (a percentage?)``.
    """
    rows = []
    for job_dir in _job_dirs(sweep_dir):
        try:
            overrides = read_overrides(job_dir)
        except BadRecord as err:
            rows.append(_invalid_row(job_dir, [], str(err)))
            continue
        path = job_dir / "metrics.json"
        if not path.is_file():
            rows.append(_row(job_dir, overrides, {"status": "missing", "error": "no metrics.json"}))
            continue
        try:
            rows.append(_row(job_dir, overrides, read_metrics(path)))
        except BadRecord as err:
            rows.append(_invalid_row(job_dir, overrides, str(err)))
    return rows


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank configurations by mean validation accuracy over their seeds (best first).

    Only jobs with status ``ok`` and a validation accuracy count. Test accuracy is not
    read. Each result: ``rank, model, config, n_seeds, mean_val_acc, std_val_acc``.
    """
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and not math.isnan(r["val_acc"]):
            groups[r["model"], r["config"]].append(r["val_acc"])
    ranked = sorted(groups.items(), key=lambda kv: -statistics.fmean(kv[1]))
    return [
        {
            "rank": i + 1,
            "model": model,
            "config": config,
            "n_seeds": len(vals),
            "mean_val_acc": statistics.fmean(vals),
            "std_val_acc": statistics.stdev(vals) if len(vals) > 1 else math.nan,
        }
        for i, ((model, config), vals) in enumerate(ranked)
    ]


def best_overrides(ranking: list[dict[str, Any]]) -> dict[str, str]:
    """Per model, the override line of its best-ranked configuration."""
    best: dict[str, str] = {}
    for r in ranking:
        best.setdefault(
            r["model"], r["config"] if "model=" in r["config"] else f"model={r['model']} {r['config']}".strip()
        )
    return best


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as CSV text with the header ``columns`` (other keys left out; ``nan`` empty)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return out.getvalue()


def unwritable(sweep_dir: Path, err: OSError) -> str:
    """One line for a sweep folder that cannot be written (read-only, full, not a folder)."""
    return f"cannot write into the sweep folder {sweep_dir}: {err.strerror or type(err).__name__}"


def check_writable(sweep_dir: Path) -> None:
    """Raise ``OSError`` (``EROFS``, ``EACCES``) now if ``sweep_dir`` cannot be written,
    before any record is read (a full disk shows only when writing)."""
    import errno
    import os

    if not os.access(sweep_dir, os.W_OK):
        code = errno.EROFS if _read_only(sweep_dir) else errno.EACCES
        raise OSError(code, os.strerror(code), str(sweep_dir))


def _read_only(path: Path) -> bool:
    import os

    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv``, ``ranking.csv`` and ``best_overrides.txt``; return the rows.

    Every job is read first (:func:`collect`); then each file is written whole
    (atomically: a failed write leaves the previous file).

    Raises:
        OSError: the folder cannot be written (:func:`unwritable` words it).
    """
    sweep_dir = Path(sweep_dir)
    check_writable(sweep_dir)
    rows = collect(sweep_dir)
    ranking = rank(rows)
    lines = [f"{model}: {line}" for model, line in best_overrides(ranking).items()]
    if not lines:
        lines = ["# no validation accuracy in this sweep (data.val_fraction=0?): nothing is ranked"]
    write_text(sweep_dir / "summary.csv", csv_text(rows, COLUMNS))
    write_text(
        sweep_dir / "ranking.csv",
        csv_text(ranking, ["rank", "model", "config", "n_seeds", "mean_val_acc", "std_val_acc"]),
    )
    write_text(
        sweep_dir / "best_overrides.txt",
        "# best configuration per model, by mean validation accuracy over seeds (never by test)\n"
        + "\n".join(lines)
        + "\n",
    )
    counts = {status: sum(r["status"] == status for r in rows) for status in dict.fromkeys(r["status"] for r in rows)}
    told = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: kv[0] != "ok"))
    log.info("sweep summary: %d jobs (%s) -> %s", len(rows), told or "none", sweep_dir / "summary.csv")
    for line in lines:
        log.info("best: %s", line)
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(
            "usage: python -m digitpairs.sweeps.summary <sweep folder>\n"
            "(re)writes summary.csv, ranking.csv, best_overrides.txt"
        )
    folder = Path(sys.argv[1])
    if not folder.is_dir():
        exit_with(f"sweep folder {folder} does not exist", code=1)
    try:
        write_summary(folder)
    except OSError as err:
        exit_with(unwritable(folder, err), code=2)
