"""Sweep summary: one table per multirun, written by a Hydra callback at its end.

Files written into the sweep folder:

- ``summary.csv``: one row per job (``status`` ok / failed / invalid / killed / missing), with its
  overrides, model, seed, val/test/train accuracy, test errors, digit accuracy (test and
  val), the test accuracy of each decision rule of the aux models, and wall time.
- ``ranking.csv``: the swept configurations (the overrides without ``seed``) ranked by
  **validation** accuracy, averaged over seeds. The test set never takes part.
- ``best_overrides.txt``: per model, the best configuration as a ready override line.

The Hydra callback :class:`~digitpairs.sweeps.callback.SweepSummary` writes them at the
end of every multirun; ``python -m digitpairs.sweeps.summary <sweep folder>`` (re)writes
them by hand. This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

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
RULES = ("comparator", "argmax", "prob")  # decision rules of models with digit heads (digitpairs.models.rules)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep: sub-folders holding Hydra's ``.hydra/overrides.yaml``."""
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _read_overrides(job_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]


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


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row (see ``COLUMNS``) per job folder of ``sweep_dir``.

    A job without ``metrics.json`` (it crashed before writing one) gets status ``missing``.
    """
    rows = []
    for job_dir in _job_dirs(sweep_dir):
        overrides = _read_overrides(job_dir)
        path = job_dir / "metrics.json"
        m = json.loads(path.read_text()) if path.is_file() else {"status": "missing", "error": "no metrics.json"}
        digit = m.get("digit_acc") or {}
        rule_acc = m.get("rule_acc") or {}
        rows.append(
            {
                "job": job_dir.name,
                "status": m.get("status", "missing"),
                "model": m.get("model") or next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), ""),
                "seed": m.get("seed", ""),
                "source": m.get("source", ""),
                "epochs": m.get("epochs", ""),
                "precision": m.get("precision", ""),
                "config": config_key(overrides),
                "val_acc": _float(m.get("val_acc")),
                "test_acc": _float(m.get("test_acc")),
                "train_acc": _float(m.get("train_acc")),
                "test_errors": m.get("test_errors", ""),
                "n_test": m.get("n_test", ""),
                "digit_acc": _float(digit.get("test")),
                "val_digit_acc": _float(digit.get("val")),
                **{f"test_acc_{rule}": _float((rule_acc.get(rule) or {}).get("test")) for rule in RULES},
                "wall_time_s": _float(m.get("wall_time_s")),
                "overrides": " ".join(overrides),
                "error": m.get("error", ""),
            }
        )
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


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv``, ``ranking.csv`` and ``best_overrides.txt``; return the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    _write_csv(sweep_dir / "summary.csv", rows, COLUMNS)
    ranking = rank(rows)
    _write_csv(
        sweep_dir / "ranking.csv", ranking, ["rank", "model", "config", "n_seeds", "mean_val_acc", "std_val_acc"]
    )
    lines = [f"{model}: {line}" for model, line in best_overrides(ranking).items()]
    if not lines:
        lines = ["# no validation accuracy in this sweep (data.val_fraction=0?): nothing is ranked"]
    (sweep_dir / "best_overrides.txt").write_text(
        "# best configuration per model, by mean validation accuracy over seeds (never by test)\n"
        + "\n".join(lines)
        + "\n"
    )
    failed = [r for r in rows if r["status"] != "ok"]
    log.info("sweep summary: %d jobs, %d failed -> %s", len(rows), len(failed), sweep_dir / "summary.csv")
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
    write_summary(Path(sys.argv[1]))
