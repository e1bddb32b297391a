"""The ablation: from the study's ws_aux to the best model (``recipe=beyond``), one ingredient per row.

Every row is a 15-seed sweep on the study's protocol (MNIST 60,000/10,000, the default data),
trained on all 1000 training pairs and scored on 1000 fresh test pairs per seed::

    python benchmarks/accuracy/ablation.py --commands        # print the command of every row
    python benchmarks/accuracy/ablation.py --run ROW         # run one row's sweep (ROW: its number)
    python benchmarks/accuracy/ablation.py                   # print the table from the sweep folders

The table gives per row: mean ± sample std of test accuracy over the seeds, the Welch
two-sided p against the row above (``digitpairs.sweeps.report.welch``), the mean digit accuracy
of the digit heads, and the mean wall time per run (``wall_time_s`` of ``metrics.json``:
one run, one torch thread, two runs in parallel; it depends on the machine's load).

A row whose ``rule`` is set reads that decision rule's accuracy (``test_acc_<rule>``) from
another row's sweep: the decision rule does not change training, so ``model.decision=prob``
on the same command trains the same models (same seeds) and scores them with that rule.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from digitpairs.sweeps.report import welch  # noqa: E402
from digitpairs.sweeps.summary import collect  # noqa: E402

LAUNCH = "hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1"
WS_AUX = "experiment=study model=ws_aux model.decision=prob"  # ws_aux rows after row 2 decide by the probability rule
AUG = "data.augment=affine"
ONECYCLE = "optim=sgd_onecycle trainer.max_epochs=70"
DIGITS = f"experiment=study model=digit_classifier {AUG} {ONECYCLE}"
BEYOND = "experiment=beyond"  # one sweep gives rows 1 (recipe=study: ws_aux) and 10 (recipe=beyond)
# (label, model read, folder under outputs/ablation, overrides, rule read instead of test_acc, folder read)
ROWS = [
    ("ws_aux (the study's recipe)", "ws_aux", "beyond", BEYOND, None, None),
    ("+ probability rule instead of the comparator", "ws_aux", "beyond", BEYOND, "prob", None),
    ("+ affine augmentation per digit", "ws_aux", "3-affine", f"{WS_AUX} {AUG}", None, None),
    ("+ re-pairing every epoch", "ws_aux", "4-repair", f"{WS_AUX} {AUG} data.repair=true", None, None),
    (
        "+ SGD Nesterov one-cycle, 70 epochs",
        "ws_aux",
        "5-onecycle",
        f"{WS_AUX} {AUG} data.repair=true {ONECYCLE}",
        None,
        None,
    ),
    (
        "+ digit losses only (digit_classifier, Table 1 trunk)",
        "digit_classifier",
        "6-digits",
        f"{DIGITS} model.trunk=table1",
        None,
        None,
    ),
    ("+ compact trunk", "digit_classifier", "7-compact", f"{DIGITS} model.trunk=compact", None, None),
    (
        "+ test-time augmentation, 16 views",
        "digit_classifier",
        "8-tta",
        f"{DIGITS} model.trunk=compact model.tta=16",
        None,
        None,
    ),
    (
        "+ ensemble of 2 (recipe=beyond model.second=none)",
        "digit_classifier",
        "9-ensemble",
        f"{BEYOND} recipe=beyond model.second=none",
        None,
        None,
    ),
    ("+ second member, scattering PCA, w = 0.4: recipe=beyond", "digit_classifier", "beyond", BEYOND, None, None),
    (
        "a scattering SVM as the second member instead, w = 0.2 (recipe=beyond_svm)",
        "digit_classifier",
        "11-svm",
        f"{BEYOND} recipe=beyond_svm",
        None,
        None,
    ),
]


def command(row: int) -> str:
    """The one command that reproduces row ``row`` (1-based)."""
    _, _, folder, extra, _, source = ROWS[row - 1]
    folder = source or folder
    return f"python train.py -m {extra} {LAUNCH} hydra.sweep.dir=outputs/ablation/{folder}"


def table(out: Path) -> str:
    """The markdown table of every row whose sweep folder exists under ``out``."""
    lines = [
        "| # | model | test acc % (mean ± std) | runs | Welch p vs row above | digit acc % | wall time per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    previous = None
    for i, (label, model, folder, _, rule, source) in enumerate(ROWS, 1):
        sweep = out / (source or folder)
        rows = [r for r in collect(sweep) if r["status"] == "ok" and r["model"] == model] if sweep.is_dir() else []
        if not rows:
            lines.append(f"| {i} | {label} | not run | 0 | | | |")
            previous = None
            continue
        key = f"test_acc_{rule}" if rule else "test_acc"
        acc = [100 * r[key] for r in rows]
        p = welch(acc, previous)[1] if previous else math.nan
        digits = [100 * r["digit_acc"] for r in rows if not math.isnan(r["digit_acc"])]
        std = statistics.stdev(acc) if len(acc) > 1 else math.nan
        lines.append(
            f"| {i} | {label} | {statistics.fmean(acc):.2f} ± {std:.2f} | {len(acc)} "
            f"| {'-' if math.isnan(p) else f'{p:.2g}'} | {statistics.fmean(digits):.2f} "
            f"| {statistics.fmean(r['wall_time_s'] for r in rows):.0f} |"
        )
        previous = acc
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=int, metavar="ROW", help="run the sweep of this row (1-based)")
    parser.add_argument("--commands", action="store_true", help="print the command of every row")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "ablation", help="folder of the rows' sweeps")
    args = parser.parse_args()
    if args.commands:
        for i in range(1, len(ROWS) + 1):
            print(f"{i}: {command(i)}")
    elif args.run:
        if not 1 <= args.run <= len(ROWS):
            parser.error(f"--run {args.run}: expected a row 1..{len(ROWS)}")
        cmd = command(args.run).replace("python", sys.executable, 1)
        print(cmd, flush=True)
        sys.exit(subprocess.call(shlex.split(cmd), cwd=ROOT))
    else:
        print(table(args.out))


if __name__ == "__main__":
    main()
