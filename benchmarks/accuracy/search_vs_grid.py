"""The grid search against an Optuna search at the same number of runs and at half of them,
then the point each one chose, tested over 15 seeds as the study tests a model.

    python benchmarks/accuracy/search_vs_grid.py           # all of it for ws_aux, into outputs/search_vs_grid
    python benchmarks/accuracy/search_vs_grid.py --out outputs/search_vs_grid     # again: finished steps are read
    python benchmarks/accuracy/search_vs_grid.py --grid G --search S --no-test    # the table of two given sweeps

The steps, each one ``train.py`` command whose sweep folder lands in ``--out`` (a step
whose folder already holds a ``summary.csv`` is read instead of run):

1. ``grid``: ``train.py -m experiment=grid model=M`` (72 runs: 36 points x 2 seeds);
2. ``search``: ``train.py -m hparams_search=optuna model=M hydra.sweeper.n_trials=N``, with
   N = the grid's runs / its seeds per point (36 trials x 2 seeds = 72 runs), the study in
   ``<out>/search.db``. Optuna at half the runs is the best of its first N/2 trials: the
   sampler drew them before it saw any later trial, as a search of N/2 trials would;
3. ``test-*``: ``train.py -m experiment=study model=M <point> seed=range(0,15)`` for the
   grid's best point, Optuna's best at equal runs and Optuna's best at half (one run when
   both are the same trial): trained on all 1000 pairs, tested on 1000 test pairs.

Every command gets the launcher of ``python -m digitpairs.sweeps.launcher_plan`` (``--launcher``
replaces it) and the extra overrides given after the options (``trainer.max_epochs=1
data.n_pairs=300``: a quick look). The table (Markdown) is printed and written to
``<out>/table.md``: per row the runs, the best mean validation accuracy over the seeds
(the figure both searches rank by), the chosen point, and its test accuracy over the test
seeds (mean ± std, the 95 % Student-t interval, Welch's p against the grid's point), and
the step's wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SEARCHED = ("optim.lr1", "optim.lr2", "loss.alpha", "loss.gamma")


def run_step(name: str, args: list[str], sweep_dir: Path) -> float | None:
    """Run ``python train.py -m *args`` into ``sweep_dir`` unless it holds a ``summary.csv``
    already; return the wall time in seconds (None when read, not run). Exit 1 with its
    last lines when the command fails without a summary."""
    if (sweep_dir / "summary.csv").is_file():
        print(f"{name}: read {sweep_dir}", flush=True)
        return None
    cmd = [sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}"]
    print(f"{name}: {shlex.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if not (sweep_dir / "summary.csv").is_file():
        sys.exit(f"{name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    print(f"{name}: {wall:.0f} s (exit {out.returncode})", flush=True)
    return wall


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def grid_result(sweep_dir: Path) -> dict:
    """The grid's runs, seeds per point, best point (``ranking.csv``'s first row) and its value."""
    rows = summary_rows(sweep_dir)
    with (sweep_dir / "ranking.csv").open() as f:
        best = next(csv.DictReader(f))
    seeds = sorted({int(r["seed"]) for r in rows if r["seed"] != ""})
    return {
        "runs": len(rows),
        "seeds": seeds,
        "value": float(best["mean_val_acc"]),
        "point": best["config"].split(),
    }


def search_results(sweep_dir: Path, trials: int) -> dict[str, dict]:
    """Optuna's best over all ``trials`` and over the first half of them (by trial number),
    from the search's ``search.json``; failed trials count as runs."""
    record = json.loads((sweep_dir / "search.json").read_text())
    mine = sorted(record["trials"], key=lambda t: t["number"])
    seeds = len(record["seeds"])
    out = {}
    for label, n in (("equal", trials), ("half", max(1, trials // 2))):
        done = [t for t in mine[:n] if t["state"] == "COMPLETE"]
        if not done:
            sys.exit(f"search {sweep_dir}: no finished trial among its first {n}")
        best = max(done, key=lambda t: t["value"])
        params = [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best["params"].items())]
        out[label] = {
            "runs": n * seeds,
            "value": best["value"],
            "trial": best["number"],
            "point": [*record["study_overrides"], *params],
        }
    return out


def test_figures(sweep_dir: Path) -> list[float]:
    """Test accuracies (%) of a test sweep's finished runs."""
    return [100 * float(r["test_acc"]) for r in summary_rows(sweep_dir) if r["status"] == "ok" and r["test_acc"]]


def merged(*parts: list[str]) -> list[str]:
    """Overrides in order, a later ``key=`` replacing an earlier one (Hydra refuses a group twice)."""
    out: dict[str, str] = {}
    for part in parts:
        for o in part:
            out.pop(o.split("=", 1)[0].lstrip("+~"), None)
            out[o.split("=", 1)[0].lstrip("+~")] = o
    return list(out.values())


def short(point: list[str]) -> str:
    """The searched keys of a point, 3 significant digits: ``lr1=0.0900 lr2=0.00100 α=0.750 γ=1.00``."""
    names = {"optim.lr1": "lr1", "optim.lr2": "lr2", "loss.alpha": "α", "loss.gamma": "γ"}
    values = dict(p.split("=", 1) for p in point if "=" in p)
    return " ".join(f"{names[k]}={float(values[k]):.3g}" for k in SEARCHED if k in values)


def table(rows: list[dict], test_seeds: int) -> str:
    from digitpairs.sweeps.report import describe, welch

    lines = [
        f"| search | runs | best val accuracy (%) | chosen point | test accuracy, {test_seeds} seeds (%) "
        "| 95 % CI | Welch p vs grid | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    grid_tests = rows[0].get("tests") or []
    for r in rows:
        tests = r.get("tests") or []
        if tests:
            d = describe(tests)
            figure = f"{d['mean']:.2f} ± {d['std']:.2f}" if len(tests) > 1 else f"{d['mean']:.2f}"
            ci = f"[{d['ci_low']:.2f}, {d['ci_high']:.2f}]" if len(tests) > 1 else "-"
            p = welch(tests, grid_tests)[1] if r is not rows[0] and grid_tests else math.nan
            p_text = "-" if math.isnan(p) else f"{p:.2g}"
        else:
            figure, ci, p_text = "not run", "-", "-"
        wall = r["wall"] if isinstance(r["wall"], str) else "read" if r["wall"] is None else f"{r['wall'] / 60:.1f} min"
        lines.append(
            f"| {r['label']} | {r['runs']} | {100 * r['value']:.2f} | {short(r['point'])} | {figure} | {ci} "
            f"| {p_text} | {wall} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ws_aux")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "search_vs_grid")
    parser.add_argument("--grid", type=Path, help="a finished grid sweep folder to read instead of running one")
    parser.add_argument("--search", type=Path, help="a finished search's sweep folder to read instead")
    parser.add_argument(
        "--grid-params", default="", help="replace the grid's lists, e.g. 'optim.lr1=0.03,0.27 seed=0,1' (a quick look)"
    )
    parser.add_argument("--test-seeds", type=int, default=15, help="seeds of each chosen point's test (default 15)")
    parser.add_argument("--no-test", action="store_true", help="only the searches: no 15-seed tests")
    parser.add_argument("--launcher", help="launcher overrides (default: python -m digitpairs.sweeps.launcher_plan's)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every command, e.g. trainer.max_epochs=1")
    args = parser.parse_args()
    from digitpairs.sweeps.launcher_plan import plan

    launcher = shlex.split(args.launcher) if args.launcher is not None else plan().split()
    extra = [*launcher, *args.overrides]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"launcher: {' '.join(launcher) or '(basic)'}; folder {out}", flush=True)

    grid_dir = args.grid or out / "grid"
    grid_wall = run_step(
        "grid", merged(["experiment=grid", f"model={args.model}"], shlex.split(args.grid_params), extra), grid_dir
    )
    grid = grid_result(grid_dir)
    trials = max(1, grid["runs"] // len(grid["seeds"]))
    search_dir = args.search or out / "search"
    search_wall = run_step(
        "search",
        merged(
            [
                "hparams_search=optuna",
                f"model={args.model}",
                f"hydra.sweeper.n_trials={trials}",
                f"hydra.sweeper.seeds=[{','.join(map(str, grid['seeds']))}]",
                f"hydra.sweeper.storage=sqlite:///{out / 'search.db'}",
                "hydra.sweeper.study_name=search_vs_grid",
            ],
            extra,
        ),
        search_dir,
    )
    found = search_results(search_dir, trials)
    rows = [
        {"label": "grid (`experiment=grid`)", **grid, "wall": grid_wall},
        {"label": "Optuna TPE, equal runs", **found["equal"], "wall": search_wall},
        {
            "label": f"Optuna TPE, half the runs (its first {max(1, trials // 2)} trials)",
            **found["half"],
            "wall": "the search above",
        },
    ]
    if not args.no_test:
        tested: dict[str, Path] = {}
        for r, name in zip(rows, ("test-grid", "test-optuna", "test-optuna-half"), strict=True):
            key = " ".join(r["point"])
            if key not in tested:
                test_dir = out / name
                r["test_wall"] = run_step(
                    name,
                    # the model first: a point read from a sweep whose model was the default holds none
                    merged(
                        ["experiment=study", f"model={args.model}"],
                        r["point"],
                        [f"seed=range(0,{args.test_seeds})"],
                        extra,
                    ),
                    test_dir,
                )
                tested[key] = test_dir
            r["tests"] = test_figures(tested[key])
    text = table(rows, args.test_seeds)
    (out / "table.md").write_text(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    main()
