"""A search's own record in its sweep folder, beside the summary every sweep has:

- ``search.json``: the storage URL, the study name, the space, the sampler, and this
  sweep's trials (number, state, value, params, job folders, error) and the study's best;
- ``optimization_history.png``: the study's trials by number, value and best so far;
- ``param_importances.png``: each searched key's share of the value's variance (fANOVA).

Both pictures are Optuna's own (``optuna.visualization.matplotlib``) over the whole study,
earlier searches included. The search writes them at its end; rebuild them with

    python -m digitpairs.sweeps.search_report <sweep folder>

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from digitpairs.utils.errors import exit_with
from digitpairs.utils.io import write_json

log = logging.getLogger(__name__)

PICTURES = ("optimization_history.png", "param_importances.png")


def trial_record(trial) -> dict[str, Any]:
    """One trial as plain data: ``number, state, value, params, jobs, sweep_dir, val_acc, error``."""
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": dict(trial.params),
        "jobs": trial.user_attrs.get("jobs", []),
        "sweep_dir": trial.user_attrs.get("sweep_dir"),
        "val_acc": trial.user_attrs.get("val_acc", []),
        "error": trial.user_attrs.get("error", ""),
    }


def best_trial(study):
    """The study's best finished trial, or None when none finished."""
    return max(
        (t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None and not math.isnan(t.value)),
        key=lambda t: t.value,
        default=None,
    )


def write_pictures(study, sweep_dir: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances as PNGs in ``sweep_dir``.

    A picture that cannot be drawn yet (no finished trial; importances need two finished
    trials) is skipped with a log line. Returns the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    target = "mean validation accuracy"
    written = []
    plots = (
        (PICTURES[0], "Optimisation history", ovm.plot_optimization_history, 1),
        (PICTURES[1], "Parameter importances", ovm.plot_param_importances, 2),
    )
    for name, title, plot, needed in plots:
        (sweep_dir / name).unlink(missing_ok=True)
        if len(finished) < needed:
            log.info("search: no %s: %d finished trial(s), it needs %d", name, len(finished), needed)
            continue
        with matplotlib.rc_context(), warnings.catch_warnings(record=True) as caught:  # Optuna sets its own style
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", ExperimentalWarning)
            try:
                ax = plot(study, target_name=target)
            except (ValueError, RuntimeError) as err:  # e.g. importances of a key that never varied
                log.info("search: no %s: %s", name, str(err).splitlines()[0] if str(err) else type(err).__name__)
                continue
            fig = ax.figure
            fig.set_size_inches(8, 4.5)
            for loc in ("left", "center", "right"):
                ax.set_title("", loc=loc)
            ax.set_title(f"{title}, study {study.study_name} ({len(finished)} finished trials)", loc="left")
            fig.tight_layout()
            fig.savefig(sweep_dir / name, dpi=120)
            plt.close(fig)
        for w in caught:
            log.info("search: %s: %s", name, str(w.message).splitlines()[0])
        written.append(sweep_dir / name)
    return written


def write_search_record(
    study, sweep_dir: Path, settings: dict[str, Any], space: dict[str, Any], numbers: list[int]
) -> dict[str, Any]:
    """Write ``search.json`` and the pictures into ``sweep_dir``, log the best trial, and
    return the record. ``numbers``: the trials this sweep ran."""
    from digitpairs.sweeps.search_space import describe

    sweep_dir = Path(sweep_dir)
    by_number = {t.number: t for t in study.trials}
    best = best_trial(study)
    states = [t.state.name for t in study.trials]
    record = {
        "storage": settings["storage"],
        "study_name": study.study_name,
        "objective": "mean validation pair accuracy over the seeds (ranking.csv's mean_val_acc); maximised",
        "sampler": type(study.sampler).__name__,
        "seeds": settings["seeds"],
        "space": {k: describe(d) for k, d in space.items()},
        "study_overrides": study.user_attrs.get("overrides", []),
        "study_trials": {"total": len(states), "finished": states.count("COMPLETE"), "failed": states.count("FAIL")},
        "trials": [trial_record(by_number[n]) for n in numbers if n in by_number],
        "best": trial_record(best) if best is not None else None,
    }
    write_json(sweep_dir / "search.json", record)
    write_pictures(study, sweep_dir)
    mine = record["trials"]
    failed = sum(t["state"] == "FAIL" for t in mine)
    log.info(
        "search: %d trials here (%d failed); study %r in %s now holds %d (%d finished, %d failed)",
        len(mine),
        failed,
        study.study_name,
        settings["storage"],
        len(states),
        states.count("COMPLETE"),
        states.count("FAIL"),
    )
    if best is not None:
        params = " ".join(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.params.items()))
        log.info("search: best trial %d: val %.2f%%: %s", best.number, 100 * best.value, params)
    return record


def rebuild(sweep_dir: Path) -> list[Path]:
    """Reload the study named in ``sweep_dir/search.json`` and redraw its pictures.

    Raises:
        FileNotFoundError: no ``search.json`` (not a search's sweep folder).
    """
    import optuna

    record = json.loads((Path(sweep_dir) / "search.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=record["study_name"], storage=record["storage"])
    return write_pictures(study, Path(sweep_dir))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit("usage: python -m digitpairs.sweeps.search_report <sweep folder of a search>\nredraws its pictures")
    folder = Path(sys.argv[1])
    if not (folder / "search.json").is_file():
        exit_with(f"sweep folder={str(folder)!r} is not allowed: expected a search's folder (with a search.json)")
    for path in rebuild(folder):
        print(path)
