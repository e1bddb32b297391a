"""A sweep's columns in TensorBoard's HPARAMS tab: one experiment summary at the sweep's root,
written when a multirun ends (:class:`digitpairs.sweeps.sweep_end.SweepSummary`); each run
writes its own session row (:mod:`digitpairs.training.tboard`, which says how TensorBoard
reads them).

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from digitpairs.training.tboard import FINAL_METRICS, experiment_summary, write_summaries


def varied_keys(runs: list[dict[str, Any]]) -> list[str]:
    """The keys whose value is not the same in every run (missing counts as a value),
    ``model_name`` first, then ``seed``, then by name."""
    keys = {k for r in runs for k in r}
    varied = [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in runs}) > 1]
    order = {"model_name": 0, "seed": 1}
    return sorted(varied, key=lambda k: (order.get(k, 2), k))


def write_sweep_experiment(sweep_dir: Path) -> Path | None:
    """Write the sweep's experiment summary into ``sweep_dir`` (its root run, ``.``).

    Args:
        sweep_dir: the multirun folder; the ``*/metrics.json`` of its jobs that hold
            ``hparams`` count, read defensively (:func:`digitpairs.sweeps.records.read_metrics`:
            a record that cannot be used is left out, as the summary marks it invalid).

    Columns: the hyperparameters that differ between the jobs (all keys when none
    differ), then the metrics of ``FINAL_METRICS`` that at least one job has (no
    ``final/val_acc`` in a study without a validation split). Returns the folder, or
    None when no job recorded hyperparameters.
    """
    from digitpairs.sweeps.records import BadRecord, read_metrics

    job_metrics = []
    for path in sorted(Path(sweep_dir).glob("*/metrics.json")):
        try:
            job_metrics.append(read_metrics(path))
        except BadRecord:
            continue
    runs = [m["hparams"] for m in job_metrics if isinstance(m.get("hparams"), dict)]
    if not runs:
        return None
    have = {
        f"final/{k}"
        for m in job_metrics
        for k in ("test_acc", "val_acc", "train_acc")
        if isinstance(m.get(k), (int, float)) and not math.isnan(m[k])
    }
    metrics = [t for t in FINAL_METRICS if t in have]
    varied = varied_keys(runs)
    summary = experiment_summary(
        runs,
        metrics,
        varied or sorted({k for r in runs for k in r}),
        only_first=True,
        description=f"sweep {Path(sweep_dir).name}: {len(runs)} runs; columns: the keys that vary",
    )
    for old in Path(sweep_dir).glob("events.out.tfevents.*"):  # a rebuilt summary replaces the old one
        old.unlink()
    return write_summaries(Path(sweep_dir), [summary])
