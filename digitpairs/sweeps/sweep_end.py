"""The Hydra callback that ends every multirun: the sweep's summary, report and
TensorBoard columns (``conf/hydra/default.yaml``: ``hydra.callbacks.sweep_summary``).

Imports neither torch nor Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from digitpairs.sweeps.hparams_table import write_sweep_experiment
from digitpairs.sweeps.report import build_report
from digitpairs.sweeps.summary import unwritable, write_summary
from digitpairs.utils.errors import exit_with


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, write the summary (and the report).

    A sweep folder that cannot be written then (read-only, full) ends the sweep with one
    line naming it and the reason, exit 1.

    Args:
        report: also build ``report.md`` and the figures (:mod:`digitpairs.sweeps.report`).
        fail_on_error: exit with status 1 after writing everything if any job failed.
    """

    def __init__(self, report: bool = False, fail_on_error: bool = True) -> None:
        self.report, self.fail_on_error = report, fail_on_error

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            rows = write_summary(sweep_dir)
            if self.report:
                build_report(sweep_dir, rows)
            write_sweep_experiment(sweep_dir)  # TensorBoard's HPARAMS columns: the keys that vary, then the metrics
        except OSError as err:  # a folder gone read-only or full: the jobs' own records stay
            exit_with(f"{unwritable(sweep_dir, err)}; the jobs' records are kept", code=1)
        failed = [r for r in rows if r["status"] != "ok"]
        if failed and self.fail_on_error:
            first = failed[0]
            exit_with(
                f"{len(failed)} of {len(rows)} jobs failed (job {first['job']}: {first['error']}); "
                f"see {sweep_dir / 'summary.csv'}",
                code=1,
            )
