"""Evaluate trained checkpoints on fresh test pairs of any source (``evaluate.py``).

``evaluate(cfg)`` takes ``cfg.ckpt_path``: one checkpoint, a run folder, or a sweep
folder (every ``<job>/checkpoints/last.ckpt`` in it). For each checkpoint it rebuilds
the model, draws ``data.n_pairs`` test pairs from ``data.source`` / ``data.root`` with
``seed`` (``null``: the checkpoint's own seed) exactly as a run draws its test pairs
(docs/design.md §1: the train pairs are drawn first from the same generator, then the test
pairs), normalises them with the mean and std **stored in the checkpoint**, and runs
``trainer.predict`` at the checkpoint's precision. So with the run's own source and seed
it reproduces the run's test accuracy exactly.

It leaves in its run folder ``metrics.json`` (one record per checkpoint) and, for a
sweep folder, ``summary.csv`` (one row per job) and ``report.md`` (per model: mean ± std
of the sweep's own test accuracy and of this evaluation's).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from digitpairs.training.checkpoints import store as ckpt_io
from digitpairs.utils.config import MAX_SEED
from digitpairs.utils.errors import ConfigError, one_line_config_errors, one_line_errors, require_number
from digitpairs.utils.io import project_path, write_json

log = logging.getLogger(__name__)


def find_checkpoints(path: str | Path) -> tuple[list[Path], bool]:
    """The checkpoints that ``ckpt_path`` names, and whether it is a sweep folder.

    A file is one checkpoint; a run folder gives its ``checkpoints/last.ckpt``; a sweep
    folder gives every ``<job>/checkpoints/last.ckpt``, in job order; ``beyond`` or
    ``ws_aux`` (not a path that exists) is a shipped model (:mod:`digitpairs.inference.pretrained`).

    Raises:
        ConfigError: no such file or folder, or a folder without checkpoints.
    """
    from digitpairs.inference.pretrained import NAMES, pretrained_path

    p = Path(path)
    if not p.exists() and str(path) in NAMES:  # a shipped model: beyond or ws_aux
        return [pretrained_path(str(path))], False
    if p.is_file():
        return [p], False
    if p.is_dir():
        if (p / "checkpoints" / "last.ckpt").is_file():
            return [p / "checkpoints" / "last.ckpt"], False
        jobs = sorted(
            p.glob("*/checkpoints/last.ckpt"),
            key=lambda f: (not f.parts[-3].isdigit(), int(f.parts[-3]) if f.parts[-3].isdigit() else 0, f.parts[-3]),
        )
        if jobs:
            return jobs, True
        raise ConfigError(
            "ckpt_path",
            str(path),
            "a checkpoint file, a run folder or a sweep folder holding <job>/checkpoints/last.ckpt; "
            "this folder has none",
        )
    raise ConfigError("ckpt_path", str(path), "an existing checkpoint file, run folder or sweep folder")


def test_pairs(source: str, root: str, n_pairs: int, seed: int, mean: float, std: float):
    """``data.n_pairs`` test pairs drawn as a run with ``seed`` draws them, normalised with
    ``(mean, std)``.

    Returns:
        ``(x float32 (n, 2, 14, 14), target int64 (n,), classes int64 (n, 2), resolved_source)``.

    Raises:
        ConfigError: a bad source or root, or more pairs than the pools hold.
    """
    from digitpairs.data import load_pools, make_pairs

    train_pool, test_pool, resolved = load_pools(source, str(root))
    g = torch.Generator().manual_seed(seed)
    make_pairs(train_pool, n_pairs, g)  # a run draws its training pairs first: the same stream
    x, target, classes = make_pairs(test_pool, n_pairs, g)
    return ((x - mean) / std).contiguous(), target, classes, resolved


def predict(model, x: torch.Tensor, precision: str, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``trainer.predict`` of ``model`` on ``x float32 (n, 2, 14, 14)``, at ``precision``.

    Returns ``(logits float32 (n, 2), digit_logits float32 (n, 2, 10) or None)``.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    out = trainer.predict(model, dataloaders=DataLoader(x, batch_size=batch_size))
    logits = torch.cat([o[0].float() for o in out])
    digits = None if out[0][1] is None else torch.cat([o[1].float() for o in out])
    return logits, digits


def decision_rules(model, logits: torch.Tensor, digit_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Every way the model can answer "first <= second", as ``int64 (n,)`` 0/1 tensors.

    A model with digit heads (``has_aux``): the three rules of :mod:`digitpairs.models.rules`
    (``comparator``, ``argmax``, ``prob``); any other model: ``comparator``, its own
    2-way output.
    """
    from digitpairs.models.rules import RULES, decide

    if not model.has_aux or digit_logits is None:
        return {"comparator": logits.argmax(dim=1)}
    return {rule: decide(rule, logits, digit_logits) for rule in RULES}


def own_metrics(ckpt_file: Path) -> tuple[dict[str, Any], str | None]:
    """The ``metrics.json`` of the run that wrote the checkpoint (``<run>/metrics.json`` for
    ``<run>/checkpoints/last.ckpt``, or the one beside a shipped ``model.ckpt``), read
    defensively (:func:`digitpairs.sweeps.records.read_metrics`), and why its test accuracy
    is unknown: ``({}, None)`` without a record, ``({}, reason)`` for a record that cannot
    be used (not JSON, a value out of its range) or holds no result (not ``ok``)."""
    from digitpairs.sweeps.records import BadRecord, read_metrics

    for f in (ckpt_file.parent.parent / "metrics.json", ckpt_file.parent / "metrics.json"):
        if not f.is_file():
            continue
        try:
            record = read_metrics(f)
        except BadRecord as err:
            return {}, str(err)
        if record["status"] != "ok":
            return {}, f"{f.name}: status {record['status']!r}, no test accuracy"
        return record, None
    return {}, None


def evaluate_one(ckpt_file: Path, data: DictConfig, root: str, seed: int | None) -> dict[str, Any]:
    """Evaluate one checkpoint; return its record for ``metrics.json``."""
    ckpt = ckpt_io.load(ckpt_file)
    about = ckpt_io.info(ckpt)
    mean, std = ckpt_io.normalisation(ckpt, value=str(ckpt_file))
    model = ckpt_io.build_model(ckpt, value=str(ckpt_file))
    use_seed = about["seed"] if seed is None else seed
    x, target, classes, resolved = test_pairs(data.source, root, data.n_pairs, use_seed, mean, std)
    logits, digit_logits = predict(model, x, about["precision"], data.eval_batch_size)
    rules = {
        name: (p == target).float().mean().item() for name, p in decision_rules(model, logits, digit_logits).items()
    }
    pred = model.predict_target(logits, digit_logits)  # the model's own decision rule (model.decision)
    own, own_problem = own_metrics(ckpt_file)
    return {
        "checkpoint": str(ckpt_file),
        "model": about["model"],
        "trained_seed": about["seed"],
        "trained_source": about["source"],
        "epochs": about["epochs"],
        "own_test_acc": own.get("test_acc"),
        "own_record": own_problem,  # why the run's own test accuracy is unknown (None: known, or no record)
        "source": resolved,
        "seed": use_seed,
        "n_pairs": len(target),
        "decision": getattr(model.hparams, "decision", "comparator"),
        "acc": (pred == target).float().mean().item(),
        "errors": int((pred != target).sum()),
        "digit_acc": (digit_logits.argmax(dim=2) == classes).float().mean().item() if model.has_aux else None,
        "rules": rules,
        "normalisation": {"mean": mean, "std": std},
    }


def line(r: dict[str, Any]) -> str:
    """The one printed line of a record."""
    own = "" if r["own_test_acc"] is None else f"; its own test {100 * r['own_test_acc']:.2f} %"
    if r["own_test_acc"] is None and r.get("own_record"):
        own = f"; its own test unknown ({r['own_record']})"
    digit = "" if r["digit_acc"] is None else f", digit accuracy {100 * r['digit_acc']:.2f} %"
    rules = "".join(f", rule {k} {100 * v:.2f} %" for k, v in r["rules"].items() if len(r["rules"]) > 1)
    return (
        f"{r['checkpoint']}: {r['model']} seed {r['trained_seed']} ({r['trained_source']}) "
        f"on {r['n_pairs']} {r['source']} "
        f"test pairs (seed {r['seed']}): accuracy {100 * r['acc']:.2f} % ({r['errors']} errors){digit}{rules}{own}"
    )


def summarise(records: list[dict[str, Any]], out_dir: Path, sweep: Path) -> str:
    """Write ``summary.csv`` (one row per checkpoint) and ``report.md`` (per model: mean ±
    sample std of the sweep's own test accuracy, of these test pairs' and of the
    difference) for a sweep folder; return the report text."""
    import csv
    import math
    import statistics
    from collections import defaultdict

    rows = []
    for r in records:
        row = {"job": Path(r["checkpoint"]).parts[-3]}
        row.update(
            {
                k: r[k]
                for k in (
                    "model",
                    "trained_seed",
                    "trained_source",
                    "own_test_acc",
                    "own_record",
                    "source",
                    "seed",
                    "n_pairs",
                    "acc",
                    "errors",
                    "digit_acc",
                )
            }
        )
        row.update({f"rule_{k}": v for k, v in r["rules"].items()})
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)

    def ms(values: list[Any]) -> str:
        v = [100 * float(x) for x in values if x is not None and not math.isnan(float(x))]
        if not v:
            return "-"
        return f"{statistics.fmean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    sources = ", ".join(sorted({str(row["trained_source"]) for row in rows if row["trained_source"] is not None}))
    lines = [
        f"# Evaluation of {sweep}",
        "",
        f"Test pairs: {rows[0]['n_pairs']} per checkpoint from `{rows[0]['source']}`, each checkpoint's own "
        f"normalisation; trained on `{sources}`. Accuracy in %, mean ± sample std over the jobs.",
        "",
        "| model | jobs | own test pairs (sweep) | these test pairs | difference | digit accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for model, g in by_model.items():
        own, acc = [row["own_test_acc"] for row in g], [row["acc"] for row in g]
        diff = [a - o for a, o in zip(acc, own, strict=False) if o is not None]
        lines.append(
            f"| `{model}` | {len(g)} | {ms(own)} | {ms(acc)} | {ms(diff)} pp | {ms([row['digit_acc'] for row in g])} |"
        )
    text = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(text)
    return text


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Evaluate ``cfg.ckpt_path`` (see the module doc); write the outputs; return the records.

    Raises:
        ConfigError: bad input (a missing or foreign checkpoint, an empty folder, a bad
            source, seed or pair count), before any evaluation.
    """
    from digitpairs.training.process_settings import configure_cpu, quiet_lightning_console

    if cfg.get("ckpt_path") in (None, ""):
        raise ConfigError("ckpt_path", None, "a checkpoint file, a run folder or a sweep folder (ckpt_path=<path>)")
    if cfg.seed is not None:
        require_number("seed", cfg.seed, 0, integer=True, high=MAX_SEED, high_strict=False)
    require_number("data.n_pairs", cfg.data.n_pairs, 1, integer=True)
    require_number("data.eval_batch_size", cfg.data.eval_batch_size, 1, integer=True)
    files, is_sweep = find_checkpoints(cfg.ckpt_path)
    for f in files:  # every checkpoint checked whole (integrity, values, weights) before any work
        ckpt = ckpt_io.load(f)
        ckpt_io.normalisation(ckpt, value=str(f))
        ckpt_io.build_model(ckpt, value=str(f))
        if cfg.seed is None and ckpt_io.info(ckpt)["seed"] is None:
            raise ConfigError("seed", None, f"a seed: the checkpoint {f} records none of its own")
    quiet_lightning_console()
    configure_cpu(cfg.threads, cfg.cpu.flush_denormal, cfg.cpu.tune_malloc)
    root = project_path(cfg.data.root)
    records = []
    for f in files:
        record = evaluate_one(f, cfg.data, str(root), cfg.seed)
        print(line(record), flush=True)
        records.append(record)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", {"ckpt_path": str(cfg.ckpt_path), "status": "ok", "results": records})
    if is_sweep:
        print(summarise(records, out_dir, Path(cfg.ckpt_path)), end="")
    log.info("evaluation written to %s", out_dir)
    return records


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """:func:`evaluate` with bad input reported as one line on stderr, exit 2."""
    with one_line_errors(), one_line_config_errors():
        return evaluate(cfg)
