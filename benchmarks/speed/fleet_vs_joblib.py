"""A whole sweep two ways on one machine, one after the other: the fleet launcher against
one job per process (joblib), with their wall times and test figures side by side.

    python benchmarks/speed/fleet_vs_joblib.py                          # make study, both ways
    python benchmarks/speed/fleet_vs_joblib.py --experiments study grid beyond
    python benchmarks/speed/fleet_vs_joblib.py --accelerator gpu        # on a GPU: solo runs vs the fleet
    python benchmarks/speed/fleet_vs_joblib.py --epochs 5 --seeds 4     # a quick look
    python benchmarks/speed/fleet_vs_joblib.py --fleet-args trainer.precision=bf16-mixed hydra.launcher.strategy=grouped

Each way is ``train.py -m experiment=<name>`` with the overrides a user would give:

  joblib  ``hydra/launcher=joblib hydra.launcher.n_jobs=<cores> threads=1`` (on a GPU:
          ``n_jobs=2``, the solo runs on the device);
  fleet   ``hydra/launcher=fleet`` with what ``python -m digitpairs.sweeps.launcher_plan`` picks
          in 32-bit floats, plus ``--fleet-args`` (e.g. bf16 mixed precision).

The two ways run in turn (fleet first for the first experiment, then alternating, so that a
slow spell of the machine does not land on one way only). For each it prints the wall time
of the whole command (process start to summary), and per model the mean ± std of test
accuracy over its runs (validation accuracy for ``grid``, whose runs hold out 20 %), the
Welch t-test between the two ways (scipy), and the ratio of the wall times.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def launchers(accelerator: str, cores: int) -> dict[str, list[str]]:
    from digitpairs.sweeps.launcher_plan import plan

    gpu = accelerator == "gpu"
    fleet = plan(cores=cores, cuda=gpu, amx_bf16=False, avx512_bf16=False).split()
    joblib = [
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={2 if gpu else cores}",
        f"threads={1 if not gpu else max(1, cores // 2)}",
    ]
    return {"fleet": fleet, "joblib": joblib}


def run_sweep(experiment: str, launcher: list[str], extra: list[str], sweep_dir: Path) -> tuple[float, int]:
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        f"experiment={experiment}",
        *launcher,
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.returncode


def figures(sweep_dir: Path, metric: str) -> dict[str, list[float]]:
    """Per model (and recipe), the jobs' ``metric`` in %, status ok only."""
    groups: dict[str, list[float]] = {}
    with (sweep_dir / "summary.csv").open() as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok" or not row[metric]:
                continue
            recipe = next((o for o in row["overrides"].split() if o.startswith("recipe=")), "")
            groups.setdefault(f"{row['model']} {recipe}".strip(), []).append(100 * float(row[metric]))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", default=["study"], choices=["study", "grid", "beyond"])
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs (default: the experiment's)")
    parser.add_argument("--seeds", type=int, help="seeds per configuration (study and beyond; default 15)")
    parser.add_argument("--keep", type=Path, help="keep the sweep folders here")
    parser.add_argument("--fleet-args", nargs="+", default=[], help="overrides for the fleet's way only")
    args = parser.parse_args()
    from scipy import stats

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ways = launchers(args.accelerator, cores)
    ways["fleet"] += args.fleet_args
    extra = [f"trainer.accelerator={args.accelerator}"]
    if args.epochs:
        extra.append(f"trainer.max_epochs={args.epochs}")
    if args.seeds:
        extra.append(f"seed=range(0,{args.seeds})")
    device = "CPU"
    if args.accelerator == "gpu":
        import torch

        device = torch.cuda.get_device_name()
    print(f"device: {device}, {cores} cores; fleet: {' '.join(ways['fleet'])}; joblib: {' '.join(ways['joblib'])}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="fleet-vs-joblib-"))
    order = ["fleet", "joblib"]
    for experiment in args.experiments:
        metric = "val_acc" if experiment == "grid" else "test_acc"
        walls, results = {}, {}
        for way in order:
            sweep_dir = root / f"{experiment}-{way}"
            walls[way], code = run_sweep(experiment, ways[way], extra, sweep_dir)
            results[way] = figures(sweep_dir, metric)
            print(f"{experiment} {way}: {walls[way]:.1f} s (exit {code}), folder {sweep_dir}", flush=True)
        order.reverse()
        print(
            f"\n{experiment}: fleet {walls['fleet']:.1f} s, joblib {walls['joblib']:.1f} s: "
            f"the fleet is {walls['joblib'] / walls['fleet']:.2f}x faster"
        )
        print(f"| model | runs | fleet {metric} (%) | joblib {metric} (%) | Welch p |")
        print("|---|---|---|---|---|")
        for model in sorted(set(results["fleet"]) | set(results["joblib"])):
            a, b = results["fleet"].get(model, []), results["joblib"].get(model, [])
            if len(a) < 2 or len(b) < 2:
                print(f"| {model} | {len(a)}/{len(b)} | - | - | - |")
                continue
            p = stats.ttest_ind(a, b, equal_var=False).pvalue
            print(
                f"| {model} | {len(a)}/{len(b)} | {statistics.fmean(a):.2f} ± {statistics.stdev(a):.2f} "
                f"| {statistics.fmean(b):.2f} ± {statistics.stdev(b):.2f} | {p:.3f} |"
            )
        print(flush=True)


if __name__ == "__main__":
    main()
