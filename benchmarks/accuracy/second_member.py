"""How much the second member (``model.second=scatter_pca`` or ``scatter_svm``) helps, on the validation split.

The sweep that chooses it trains ``recipe=beyond`` (or ``beyond_svm``) with its member on
the 800 fit pairs of each of 15 seeds (the default 20 % validation split)::

    python benchmarks/accuracy/second_member.py --command                    # print the sweep's command
    python benchmarks/accuracy/second_member.py --command --seeds 31-45      # a fresh sample of seeds
    python benchmarks/accuracy/second_member.py SWEEP [SWEEP ...]            # the table, from their checkpoints
    python benchmarks/accuracy/second_member.py SWEEP --refit-pca 100,120/4,6   # an affine space member refitted
    python benchmarks/accuracy/second_member.py SWEEP --baseline BASE          # SWEEP against BASE, paired by seed

For every job the script rebuilds its validation pairs from the job's own config, reads
the CNN members' digit probabilities (with their test-time views) and the second member's, and scores
the mixture ``(1 - w) p_cnn + w p_second`` for each ``w`` of ``--weights`` (0: the recipe
without the member; the member is fitted once, so every ``w`` shares the same networks). It
prints the digit and pair errors summed over the seeds, and per seed the change against
``w = 0`` (mean ± standard error, and its t), paired by seed. No test pair is read, except
with ``--split test``: for a sweep of the exact protocol whose test figure has been read.

With ``--baseline BASE`` (a sweep of the same seeds with other keys, e.g. ``recipe=beyond``
itself) it compares the two sweeps instead, for each member and ``w``: the errors of
each, summed over the seeds that both hold, and the change per seed (SWEEP - BASE),
paired by seed. This is how a training key is checked against the recipe.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from digitpairs.models.lightning_modules import mixture  # noqa: E402
from digitpairs.models.rules import decide  # noqa: E402
from digitpairs.training.checkpoints import store as ckpt_io  # noqa: E402

COMMAND = (
    "python train.py -m recipe={recipe} 'seed=range({first},{stop})' hydra/launcher=joblib "
    "hydra.launcher.n_jobs=2 threads=1 trainer.enable_progress_bar=false "
    "hydra.sweep.dir=outputs/multirun/second-member-{recipe}-{first}-{last}"
)


def job_errors(
    job: Path, ckpt: dict, weights: list[float], split: str = "val", refit: dict | None = None
) -> dict[str, dict[float, tuple[int, int, int]]]:
    """``{member: {w: (digit errors, pair errors, pairs)}}`` on one job's ``split`` pairs
    (``val`` or ``test``); ``ckpt`` is the job's loaded checkpoint.

    Without ``refit`` the member is the checkpoint's own (``member`` is its kind). With
    ``refit={"dims": [...], "temperatures": [...], "copies": n}`` an affine space member is
    fitted afresh on the job's fit digits and ``n - 1`` copies of each, as ``on_fit_end``
    does, once with the largest ``dim`` (a smaller one keeps the first directions), and each
    ``(dim, T)`` is a ``member`` of its own: any sweep of ``recipe=beyond``, with or without a
    member, can score any."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from digitpairs.models.scatter import ScatterPCA

    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    dm = instantiate(cfg.data)
    dm.setup()
    if split not in dm.sets:
        raise SystemExit(f"{job}: no {split} split (data.val_fraction=0?)")
    x, target, classes = dm.sets[split].tensors
    model = ckpt_io.build_model(ckpt)
    torch.set_num_threads(1)
    members = {}
    with torch.no_grad():
        model.hparams.second_weight = 0.0
        _, cnn = model(x)  # the members' mean log-probabilities over the pair and its views
        p_cnn = cnn.softmax(dim=-1)
        flat = x.reshape(-1, 1, *x.shape[2:])
        if refit is None:
            members[ckpt["hyper_parameters"]["second"]] = model.second(flat).view(p_cnn.shape)
        else:
            model.second = ScatterPCA(J=2, dim=max(refit["dims"]))
            model.hparams.second_copies = refit["copies"]
            model.fit_second(*dm.fit_digits())
            z = (model.second.features(flat) - model.second.mean) / model.second.std
            full = model.second.pca.basis
            for d in refit["dims"]:
                model.second.pca.basis = full[:, :d]
                dist = model.second.pca.distances(z)
                for t in refit["temperatures"]:
                    members[f"scatter_pca dim={d} T={t:g}"] = torch.softmax(-dist / t, -1).view(p_cnn.shape)
    out = {}
    for name, p_second in members.items():
        out[name] = {}
        for w in weights:
            digits = mixture(p_cnn, p_second, w)
            pred = decide("prob", None, digits)
            out[name][w] = (int((digits.argmax(-1) != classes).sum()), int((pred != target).sum()), len(target))
    return out


def mean_se(v: list[int]) -> tuple[float, float]:
    """Mean and standard error of per-seed differences."""
    return statistics.mean(v), statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else math.nan


def sweep_errors(
    sweeps: list[Path], weights: list[float], split: str = "val", refit: dict | None = None
) -> dict[int, dict[str, dict[float, tuple[int, int, int]]]]:
    """``{seed: job_errors(...)}`` over the jobs of ``sweeps`` (see :func:`job_errors`).

    Raises:
        SystemExit: no job with a second member (without ``refit``), or a seed twice."""
    from omegaconf import OmegaConf

    found = [p for sweep in sweeps for p in sorted(sweep.glob("*/checkpoints/last.ckpt"))]
    ckpts = {p.parent.parent: ckpt_io.load(p) for p in found}
    where = " ".join(str(s) for s in sweeps)
    own = {job: c for job, c in ckpts.items() if c["hyper_parameters"].get("second", "none") != "none"}
    jobs = own if refit is None else {j: c for j, c in ckpts.items() if "second_weight" in c["hyper_parameters"]}
    if not jobs:
        raise SystemExit(f"{where}: no <job>/checkpoints/last.ckpt of a model with a second member")
    out = {}
    for job, ckpt in jobs.items():
        seed = int(OmegaConf.load(job / ".hydra" / "config.yaml").seed)
        if seed in out:
            raise SystemExit(f"{where}: seed {seed} twice ({job})")
        out[seed] = job_errors(job, ckpt, weights, split, refit)
    return out


def paired_table(
    runs: dict[int, dict], base: dict[int, dict], weights: list[float], what: str = "SWEEP", against: str = "BASE"
) -> str:
    """Markdown tables of ``runs`` against ``base`` (both :func:`sweep_errors`), per member
    and ``w``, over the seeds both hold: summed digit and pair errors of each, and the
    change per seed (``runs - base``, mean ± standard error, t).

    Raises:
        SystemExit: no seed in common."""
    seeds = sorted(set(runs) & set(base))
    if not seeds:
        raise SystemExit(f"{what} and {against} share no seed")
    lines = []
    for name in runs[seeds[0]]:
        if name not in base[seeds[0]]:
            continue
        lines += [
            f"{name}: {what} against {against}, {len(seeds)} seeds paired",
            "| w | digit errors | pair errors | digit errors per seed (± se, t) | pair errors per seed (± se, t) |",
            "|---|---|---|---|---|",
        ]
        for w in weights:
            sums, changes = [], []
            for k in (0, 1):  # digit errors, pair errors
                a, b = [base[s][name][w][k] for s in seeds], [runs[s][name][w][k] for s in seeds]
                m, se = mean_se([y - x for x, y in zip(a, b, strict=True)])
                t = m / se if se and not math.isnan(se) else math.nan
                sums.append(f"{sum(b)} against {sum(a)}")
                changes.append(f"{m:+.2f} ± {se:.2f} (t = {t:.1f})")
            lines.append(f"| {w:g} | " + " | ".join(sums + changes) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def table(sweeps: list[Path], weights: list[float], split: str = "val", refit: dict | None = None) -> str:
    """The tables (markdown) of every member over the jobs of ``sweeps`` (their seeds pooled):
    see :func:`job_errors`."""
    sweep = " ".join(str(s) for s in sweeps)
    per_job = list(sweep_errors(sweeps, weights, split, refit).values())
    where = "the validation split only" if split == "val" else "the test pairs"
    lines = []
    for name in per_job[0]:
        rows = [r[name] for r in per_job]
        lines += [
            f"{name}: {len(per_job)} seeds, {where} ({sweep})",
            "| w | digit errors | pair errors | pair accuracy % (mean ± std) | digit errors per seed vs w=0 (± se, t) "
            "| pair errors per seed vs w=0 (± se) |",
            "|---|---|---|---|---|---|",
        ]
        for w in weights:
            d = [r[w][0] - r[0.0][0] for r in rows]
            p = [r[w][1] - r[0.0][1] for r in rows]
            (dm, ds), (pm, ps) = mean_se(d), mean_se(p)
            t = dm / ds if ds and not math.isnan(ds) else math.nan
            acc = [100 * (1 - r[w][1] / r[w][2]) for r in rows]
            spread = statistics.stdev(acc) if len(acc) > 1 else math.nan
            lines.append(
                f"| {w:g} | {sum(r[w][0] for r in rows)} | {sum(r[w][1] for r in rows)} "
                f"| {statistics.mean(acc):.2f} ± {spread:.2f} "
                f"| {dm:+.2f} ± {ds:.2f} (t = {t:.1f}) | {pm:+.2f} ± {ps:.2f} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="*", type=Path, help="sweep folders of the command (--command), seeds pooled")
    parser.add_argument("--weights", default="0,0.1,0.2,0.33,0.4,0.5,1", help="comma-separated w in [0, 1]")
    parser.add_argument("--command", action="store_true", help="print the sweep's command")
    parser.add_argument("--recipe", choices=("beyond", "beyond_svm"), default="beyond", help="for --command")
    parser.add_argument("--seeds", default="1-15", help="for --command: the first and last seed, e.g. 16-30")
    parser.add_argument(
        "--refit-pca",
        metavar="DIMS/TEMPERATURES",
        help="fit an affine space member afresh on each job's fit digits, e.g. 100,120,150/4,6,8 (one table each)",
    )
    parser.add_argument("--copies", type=int, default=5, help="with --refit-pca: training images per digit")
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="test: the ablation row of a finished make beyond"
    )
    parser.add_argument(
        "--baseline", type=Path, metavar="BASE", help="compare the sweeps with this sweep of the same seeds, paired"
    )
    args = parser.parse_args()
    if args.command or not args.sweeps:
        first, _, last = args.seeds.partition("-")
        if not (first.isdigit() and last.isdigit() and int(first) <= int(last)):
            parser.error(f"--seeds: FIRST-LAST with FIRST <= LAST expected, not {args.seeds!r}")
        print(COMMAND.format(recipe=args.recipe, first=int(first), stop=int(last) + 1, last=int(last)))
        return
    weights = sorted({0.0, *(float(w) for w in args.weights.split(","))})
    refit = None
    if args.refit_pca:
        try:
            dims, temps = args.refit_pca.split("/")
            refit = {
                "dims": [int(d) for d in dims.split(",")],
                "temperatures": [float(t) for t in temps.split(",")],
                "copies": args.copies,
            }
        except ValueError:
            parser.error(f"--refit-pca: DIMS/TEMPERATURES expected, e.g. 100,120/4,6, not {args.refit_pca!r}")
        if min(refit["dims"]) < 1 or min(refit["temperatures"]) <= 0 or args.copies < 1:
            parser.error("--refit-pca: dims >= 1, temperatures > 0 and --copies >= 1")
    if args.baseline is not None:
        runs = sweep_errors(args.sweeps, weights, args.split, refit)
        base = sweep_errors([args.baseline], weights, args.split, refit)
        what = " ".join(str(s) for s in args.sweeps)
        print(paired_table(runs, base, weights, what, str(args.baseline)))
        return
    print(table(args.sweeps, weights, args.split, refit))


if __name__ == "__main__":
    main()
