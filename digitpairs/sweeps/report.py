"""The study's report for any sweep folder: a table, Welch t-tests and two figures.

    python -m digitpairs.sweeps.report outputs/multirun/<sweep folder>

Writes into the sweep folder (and runs automatically at the end of ``experiment=study``):

- ``report.md``: per model (or configuration), over its runs: mean ± sample std of
  test accuracy, a 95% confidence interval of the mean (Student t), min, median, max,
  mean test errors, the digit accuracy of the aux heads, the mean test accuracy of each
  decision rule of the aux models (comparator / argmax / prob), and the study's figure beside
  ours; below it, Welch t-tests (``scipy.stats.ttest_ind(equal_var=False)``) between
  every two models, and the jobs that failed.
- ``boxplot.png``: test accuracy per model over the runs (the study's Fig. 3).
- ``curves.png``: train loss (the comparison's cross-entropy, without aux terms, so
  that models compare; geometric mean and ±1 std of its log) and test accuracy per
  epoch (mean, ±1 std band clipped to [0, 100] %), one line per model (the study's Fig. 2).
  The per-epoch test accuracy comes from
  ``data.test_curve=true`` and is drawn only; nothing is chosen with it.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import warnings
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from digitpairs.utils.errors import exit_with
from digitpairs.utils.io import atomic_write, write_text

log = logging.getLogger(__name__)

# Test accuracy (%) reported by the study over 15 runs: mean, std.
STUDY = {"convnet": (81.37, 1.37), "ws": (88.68, 1.57), "ws_aux": (97.91, 0.36)}
MODEL_ORDER = ["convnet", "ws", "aux", "ws_aux"]


def _group_label(row: dict[str, Any], configs_per_model: dict[str, set[str]]) -> str:
    """The model's name, plus its overrides when one model ran in several configurations."""
    if len(configs_per_model[row["model"]]) == 1:
        return row["model"]
    extra = " ".join(o for o in row["config"].split() if not o.startswith("model="))
    return f"{row['model']} {extra}".strip()


def group_runs(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Successful runs grouped by model (or model + configuration), in a stable order."""
    ok = [r for r in rows if r["status"] == "ok"]
    configs: dict[str, set[str]] = defaultdict(set)
    for r in ok:
        configs[r["model"]].add(r["config"])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        groups[_group_label(r, configs)].append(r)
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[1][0]["model"], 99), kv[0])))


def describe(values: list[float], bounds: tuple[float, float] = (0.0, 100.0)) -> dict[str, float]:
    """Summary statistics of accuracies in %: n, mean, sample std, 95% CI of the mean
    (Student t with n-1 degrees of freedom), min, median, max. ``nan`` where undefined.

    The CI is cut to ``bounds``, the values' possible range (0-100 %): with few runs the
    t interval is wide, and an accuracy above 100 % is no possible mean."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else math.nan
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "ci_low": max(bounds[0], mean - half) if n > 1 else math.nan,
        "ci_high": min(bounds[1], mean + half) if n > 1 else math.nan,
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's two-sided t-test of two samples: ``(t, p)``; ``nan`` where it is undefined
    (see :func:`welch_undefined`)."""
    from scipy import stats

    if welch_undefined(a, b):
        return math.nan, math.nan
    res = stats.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def welch_undefined(a: list[float], b: list[float]) -> str | None:
    """Why Welch's t-test of ``a`` and ``b`` has no answer, or None when it has one:
    ``"one run"`` (a group with fewer than 2 runs: no variance estimate) or ``"no variance"``
    (both groups constant: t is infinite or 0/0, and p meaningless)."""
    if len(a) < 2 or len(b) < 2:
        return "one run"
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return "no variance"
    return None


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _breakdown(failed: list[dict[str, Any]]) -> str:
    """``, 2 invalid, 1 killed``: how many jobs of each status other than ``ok``, if any."""
    counts: dict[str, int] = defaultdict(int)
    for r in failed:
        counts[r["status"]] += 1
    return "".join(f", {n} {status}" for status, n in sorted(counts.items()))


def _cell(text: Any) -> str:
    """``text`` as one Markdown table cell: one line, its pipes and backticks escaped."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def _markdown(sweep_dir: Path, rows: list[dict[str, Any]], groups: dict[str, list[dict[str, Any]]]) -> str:
    def values(column: str) -> list[str]:
        return sorted({str(r.get(column) or "?") for r in rows if r["status"] == "ok"})

    sources, epochs, precision = values("source"), values("epochs"), values("precision")
    failed = [r for r in rows if r["status"] != "ok"]
    lines = [
        f"# Report: {sweep_dir.name}",
        "",
        f"{len(rows)} jobs: {len(rows) - len(failed)} ok{_breakdown(failed)}. "
        f"Data source: {', '.join(sources) or 'n/a'}. Epochs: {', '.join(epochs) or 'n/a'}. "
        f"Precision: {', '.join(precision) or 'n/a'}. "
        "Test accuracy in %, over runs with fresh pairs and "
        "weights per seed; std is the sample std; CI is the 95% Student-t interval of the mean.",
        "",
    ]
    if epochs != ["50"]:
        lines += ["**The study's figures are for 50 epochs; these runs trained for fewer or more.**", ""]
    lines += [
        "| model | runs | test acc mean ± std | 95% CI | min | median | max | test errors (mean) "
        "| digit acc, aux heads | comparator / argmax / prob rule | study (15 runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in groups.items():
        d = describe([100 * r["test_acc"] for r in runs])
        counted = [float(r["test_errors"]) for r in runs if r.get("test_errors") not in (None, "")]
        errors = statistics.fmean(counted) if counted else math.nan
        digits = [100 * r["digit_acc"] for r in runs if not math.isnan(r["digit_acc"])]
        ref = STUDY.get(label)
        rules = [[100 * r.get(f"test_acc_{rule}", math.nan) for r in runs] for rule in ("comparator", "argmax", "prob")]
        rules_cell = " / ".join(_fmt(statistics.fmean(v)) for v in rules) if not math.isnan(rules[0][0]) else "-"
        lines.append(
            f"| {label} | {d['n']} | {_fmt(d['mean'])} ± {_fmt(d['std'])} "
            f"| [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}] "
            f"| {_fmt(d['min'])} | {_fmt(d['median'])} | {_fmt(d['max'])} | {_fmt(errors, 1)} "
            f"| {_fmt(statistics.fmean(digits)) if digits else '-'} | {rules_cell} "
            f"| {f'{ref[0]:.2f} ± {ref[1]:.2f}' if ref else '-'} |"
        )
    lines += ["", "## Welch t-tests of test accuracy", ""]
    pairs = list(combinations(groups, 2))
    if pairs:
        lines += ["| A | B | mean A - mean B (pp) | t | p |", "|---|---|---|---|---|"]
        for a, b in pairs:
            va, vb = [100 * r["test_acc"] for r in groups[a]], [100 * r["test_acc"] for r in groups[b]]
            t, p = welch(va, vb)
            why = welch_undefined(va, vb)
            t_cell, p_cell = (f"n/a ({why})", f"n/a ({why})") if why else (_fmt(t), f"{p:.2g}")
            lines.append(f"| {a} | {b} | {statistics.fmean(va) - statistics.fmean(vb):+.2f} | {t_cell} | {p_cell} |")
    else:
        lines.append("Only one group: nothing to compare.")
    if failed:
        lines += ["", "## Failed jobs", "", "| job | status | overrides | error |", "|---|---|---|---|"]
        lines += [f"| {r['job']} | {r['status']} | `{_cell(r['overrides'])}` | {_cell(r['error'])} |" for r in failed]
    lines += ["", "![test accuracy per model](boxplot.png)", "", "![training curves](curves.png)", ""]
    return "\n".join(lines)


def _histories(runs: list[dict[str, Any]], key: str) -> list[list[float]]:
    """The ``key`` series of each run that has one (its row's checked ``history``)."""
    out = []
    for r in runs:
        series = (r.get("history") or {}).get(key)
        if series:
            out.append([math.nan if v is None else v for v in series])
    return out


def mean_band(arr, log_scale: bool = False, limits: tuple[float, float] | None = None):
    """Per-epoch mean and ±1 std band of runs' curves, as drawn in ``curves.png``.

    Args:
        arr: ``float (runs, epochs)``; ``nan`` where a run has no value (ignored).
        log_scale: mean and std of ``log(arr)``, turned back (a geometric mean and band).
        limits: clip the band to ``(low, high)``, e.g. ``(0, 100)`` for accuracy in %,
            so that mean ± std never draws above 100 %.

    Returns:
        ``(mean, low, high)``, each ``float (epochs,)``.
    """
    import numpy as np

    arr = np.asarray(arr, dtype=float)
    if log_scale:
        arr = np.log(np.clip(arr, 1e-12, None))
    with warnings.catch_warnings():  # epochs that no run evaluated stay nan
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(arr, axis=0), np.nanstd(arr, axis=0)
    low, high = mean - std, mean + std
    if log_scale:
        mean, low, high = np.exp(mean), np.exp(low), np.exp(high)
    if limits is not None:
        low, high = np.clip(low, *limits), np.clip(high, *limits)
    return mean, low, high


def _plot(sweep_dir: Path, groups: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(groups)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * max(len(labels), 1), 4.2))
    data = [[100 * r["test_acc"] for r in groups[k]] for k in labels]
    if labels:
        ax.boxplot(data, tick_labels=labels, showmeans=True)
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.6, color="tab:blue", zorder=3)
            ref = STUDY.get(labels[i - 1])
            if ref:
                ax.errorbar(
                    i + 0.3,
                    ref[0],
                    yerr=ref[1],
                    fmt="D",
                    color="tab:red",
                    ms=5,
                    capsize=3,
                    label="study: mean ± std" if i == 1 or not ax.get_legend_handles_labels()[0] else None,
                )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy per model ({sum(map(len, data))} runs)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(sweep_dir / "boxplot.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, ax, ylabel, scale in (
        ("train/loss_main", axes[0], "train loss", 1),
        ("curve/test_acc", axes[1], "test accuracy (%)", 100),
    ):
        drawn = False
        for label in labels:
            series = _histories(groups[label], key)
            if not series and key == "train/loss_main":  # no comparison loss (digit_classifier): its whole loss
                series = _histories(groups[label], "train/loss")
                label_shown = f"{label}, digit losses"
            else:
                label_shown = label
            if not series:
                continue
            n = min(map(len, series))
            arr = scale * np.array([s[:n] for s in series], dtype=float)
            log_scale = key.startswith("train/loss")  # losses span decades: mean and band in log space
            mean, low, high = mean_band(arr, log_scale=log_scale, limits=None if log_scale else (0.0, 100.0))
            epochs = np.arange(1, n + 1)
            keep = np.isfinite(mean)  # the test curve may be evaluated every k epochs only
            ax.plot(
                epochs[keep],
                mean[keep],
                marker="." if not keep.all() else None,
                label=f"{label_shown} ({len(series)} runs)",
            )
            ax.fill_between(epochs[keep], low[keep], high[keep], alpha=0.2)
            drawn = True
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(
                0.5,
                0.5,
                f"no '{key}' history\n(test curve: data.test_curve=true)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    axes[0].set_yscale("log")
    axes[0].set_title("Training loss: the comparison's CE, else the digit losses (geometric mean ± std)", fontsize=9)
    axes[1].set_title("Test accuracy per epoch (for the figure only)")
    fig.tight_layout()
    atomic_write(sweep_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def build_report(sweep_dir: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write ``report.md``, ``boxplot.png`` and ``curves.png`` into ``sweep_dir``.

    Nothing is written before every job has been read: the rows (with their checked
    per-epoch ``history``) first, then the report's text, then the files, each written whole.
    Only ``ok`` rows, whose every value passed :mod:`~digitpairs.sweeps.records`, are averaged;
    the others are listed with their reasons.

    Args:
        sweep_dir: a multirun folder (job sub-folders with ``metrics.json``).
        rows: the summary rows (:func:`digitpairs.sweeps.summary.collect`); read afresh if None,
            and ``summary.csv`` is (re)written then.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: if ``sweep_dir`` holds no job folders.
        OSError: the folder cannot be written (:func:`~digitpairs.sweeps.summary.unwritable`
            words it).
    """
    from digitpairs.sweeps.summary import check_writable, write_summary

    sweep_dir = Path(sweep_dir)
    if rows is None:
        if not sweep_dir.is_dir():
            raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
        check_writable(sweep_dir)
        rows = write_summary(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"no job folders (*/.hydra/overrides.yaml) in {sweep_dir}")
    groups = group_runs(rows)
    text = _markdown(sweep_dir, rows, groups)
    path = sweep_dir / "report.md"
    write_text(path, text)
    _plot(sweep_dir, groups)
    log.info("report: %s (+ boxplot.png, curves.png)", path)
    width = max(map(len, groups), default=0)
    for label, runs in groups.items():
        d = describe([100 * r["test_acc"] for r in runs])
        spread = f" ± {d['std']:.2f}" if d["n"] > 1 else ""  # one run has no std
        run_s = "run" if d["n"] == 1 else "runs"
        log.info("  %-*s %2d %s: test accuracy %.2f%s %%", width, label, d["n"], run_s, d["mean"], spread)
    return path


if __name__ == "__main__":
    from digitpairs.sweeps.summary import unwritable

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(
            "usage: python -m digitpairs.sweeps.report <sweep folder>\n" + __doc__.split("\n\n", 2)[2].split("\n\n")[0]
        )
    try:
        build_report(Path(sys.argv[1]))
    except FileNotFoundError as err:
        exit_with(str(err), code=1)
    except OSError as err:
        exit_with(unwritable(Path(sys.argv[1]), err), code=2)
