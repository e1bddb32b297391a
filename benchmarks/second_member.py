"""How much the second member (``model.second=scatter_svm``) helps, on the validation split only.

The sweep that chooses it trains ``recipe=beyond`` with the member on the 800 fit pairs of
each seed (the default 20 % validation split)::

    python benchmarks/second_member.py --command      # print the sweep's command
    python benchmarks/second_member.py SWEEP          # the table, from its checkpoints

For every job the script rebuilds its validation pairs from the job's own config, reads
the CNN members' digit probabilities (with their test-time views) and the SVM's, and scores
the mixture ``(1 - w) p_cnn + w p_svm`` for each ``w`` of ``--weights`` (0: the recipe
without the member; the SVM is trained once, so every ``w`` shares the same networks). It
prints the digit and pair errors summed over the seeds, and per seed the change against
``w = 0`` (mean ± standard error, and its t), paired by seed. No test pair is read.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digitpairs.models.modules import mixture  # noqa: E402
from digitpairs.models.rules import decide  # noqa: E402
from digitpairs.training import checkpoint as ckpt_io  # noqa: E402

COMMAND = (
    "python train.py -m recipe=beyond_svm 'seed=range(1,16)' hydra/launcher=joblib "
    "hydra.launcher.n_jobs=2 threads=1 trainer.enable_progress_bar=false "
    "hydra.sweep.dir=outputs/multirun/second-member-val"
)


def job_errors(job: Path, ckpt: dict, weights: list[float], split: str = "val") -> dict[float, tuple[int, int, int]]:
    """``{w: (digit errors, pair errors, pairs)}`` on one job's ``split`` pairs (``val`` or
    ``test``); ``ckpt`` is the job's loaded checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    dm = instantiate(cfg.data)
    dm.setup()
    if split not in dm.sets:
        raise SystemExit(f"{job}: no {split} split (data.val_fraction=0?)")
    x, target, classes = dm.sets[split].tensors
    model = ckpt_io.build_model(ckpt)
    torch.set_num_threads(1)
    with torch.no_grad():
        model.hparams.second_weight = 0.0
        _, cnn = model(x)  # the members' mean log-probabilities over the pair and its views
        p_cnn = cnn.softmax(dim=-1)
        p_svm = model.second(x.reshape(-1, 1, *x.shape[2:])).view(p_cnn.shape)
    out = {}
    for w in weights:
        digits = mixture(p_cnn, p_svm, w)
        pred = decide("prob", None, digits)
        out[w] = (int((digits.argmax(-1) != classes).sum()), int((pred != target).sum()), len(target))
    return out


def mean_se(v: list[int]) -> tuple[float, float]:
    """Mean and standard error of per-seed differences."""
    return statistics.mean(v), statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else math.nan


def table(sweep: Path, weights: list[float], split: str = "val") -> str:
    ckpts = {p.parent.parent: ckpt_io.load(p) for p in sorted(sweep.glob("*/checkpoints/last.ckpt"))}
    jobs = {job: c for job, c in ckpts.items() if "second" in c["hyper_parameters"]}
    if not jobs:
        raise SystemExit(f"{sweep}: no <job>/checkpoints/last.ckpt")
    per_job = [job_errors(job, ckpt, weights, split) for job, ckpt in jobs.items()]
    lines = [
        f"{len(jobs)} seeds, {'the validation split only' if split == 'val' else 'the test pairs'} ({sweep})",
        "| w | digit errors | pair errors | pair accuracy % (mean ± std) | digit errors per seed vs w=0 (± se, t) "
        "| pair errors per seed vs w=0 (± se) |",
        "|---|---|---|---|---|---|",
    ]
    for w in weights:
        d = [r[w][0] - r[0.0][0] for r in per_job]
        p = [r[w][1] - r[0.0][1] for r in per_job]
        (dm, ds), (pm, ps) = mean_se(d), mean_se(p)
        t = dm / ds if ds and not math.isnan(ds) else math.nan
        acc = [100 * (1 - r[w][1] / r[w][2]) for r in per_job]
        spread = statistics.stdev(acc) if len(acc) > 1 else math.nan
        lines.append(
            f"| {w:g} | {sum(r[w][0] for r in per_job)} | {sum(r[w][1] for r in per_job)} "
            f"| {statistics.mean(acc):.2f} ± {spread:.2f} "
            f"| {dm:+.2f} ± {ds:.2f} (t = {t:.1f}) | {pm:+.2f} ± {ps:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", type=Path, help="the sweep folder of the command (--command)")
    parser.add_argument("--weights", default="0,0.1,0.2,0.33,0.5,1", help="comma-separated w in [0, 1]")
    parser.add_argument("--command", action="store_true", help="print the sweep's command")
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="test: the ablation row of a finished make beyond"
    )
    args = parser.parse_args()
    if args.command or args.sweep is None:
        print(COMMAND)
        return
    weights = sorted({0.0, *(float(w) for w in args.weights.split(","))})
    print(table(args.sweep, weights, args.split))


if __name__ == "__main__":
    main()
