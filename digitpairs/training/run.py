"""One training run: Hydra config -> objects -> fit -> test -> run folder.

``run(cfg)`` is what ``train.py`` calls for every job of a run or a sweep. It leaves in
the run folder (``cfg.paths.output_dir``):

- ``metrics.json``: final train/val/test accuracy, test error count, digit accuracy of
  the aux heads, seed, data source, wall time, per-epoch history, and ``status``;
- ``checkpoints/last.ckpt``: saved every ``checkpoint_every`` epochs and at the end
  (``<Class>.load_from_checkpoint(path)``; resume with ``train.py ckpt_path=<it>``);
- ``tensorboard/``: the TensorBoard events, HPARAMS included.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from digitpairs.models.rules import RULES
from digitpairs.training.history import EVAL_HISTORY, TRAIN_HISTORY
from digitpairs.utils.config import MAX_EPOCHS, MAX_SEED, MAX_THREADS
from digitpairs.utils.errors import (
    ConfigError,
    JobInterrupted,
    RunFailed,
    exit_with,
    from_omegaconf,
    one_line_config_errors,
    require_number,
)
from digitpairs.utils.io import FolderInUse, FolderLock, storage_error, storage_reason, write_json

log = logging.getLogger(__name__)

# Always in the HPARAMS tab, for every model (docs/design.md §6); swept keys are added to these.
HPARAM_KEYS = (
    "model_name",
    "seed",
    "optim.lr1",
    "optim.lr2",
    "optim.weight_decay",
    "optim.switch_fraction",
    "loss.alpha",
    "loss.gamma",
    "data.n_pairs",
    "data.val_fraction",
    "data.batch_size",
    "trainer.max_epochs",
    "trainer.precision",
    "model.literal_softmax",
)


def command_overrides(cfg: DictConfig) -> list[str]:
    """The run's command-line overrides as written (``cfg.overrides``), each one a string;
    an override whose value looks like an interpolation (``optim.lr1=${...}``) is kept as
    text, not resolved."""
    node = cfg.get("overrides")
    return [str(o) for o in OmegaConf.to_container(node, resolve=False)] if node is not None else []


def _causes(err: BaseException):
    """``err``'s chain of causes (``__cause__``, else ``__context__``), ``err`` excluded."""
    seen = err.__cause__ or err.__context__
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def instantiate_checked(node: DictConfig, config_key: str | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets our ``ConfigError`` through unwrapped.

    With ``config_key`` (``"model"``, ``"data"``: where ``node`` sits in the config), a key
    the constructor does not take (``+model.decision=argmax`` with ``model=convnet``) is a
    ``ConfigError`` naming ``model.decision``, not a ``TypeError`` from deep inside Hydra."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause, unknown = err.__cause__, None
        while cause is not None and not isinstance(cause, ConfigError):
            found = (
                re.search(r"unexpected keyword argument '(\w+)'", str(cause)) if isinstance(cause, TypeError) else None
            )
            unknown = unknown or (found and found.group(1))
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        config_error = next((c for c in _causes(err) if isinstance(c, OmegaConfBaseException)), None)
        if config_error is not None:  # an interpolation that does not resolve, a missing value
            raise from_omegaconf(config_error) from None
        if config_key and unknown and unknown in node:
            owner = str(node.get("_target_", "")).rsplit(".", 1)[-1]
            raise ConfigError(
                f"{config_key}.{unknown}", node[unknown], f"it left out: {owner} has no key {unknown}"
            ) from None
        raise


def check_config(cfg: DictConfig) -> None:
    """Checks of keys that no constructor owns for every model, after every value of the
    config resolves (a value left ``???``, a key deleted with ``~`` that another one
    interpolates, an interpolation that fails: one line naming the key).

    Raises:
        ConfigError: the first key that is missing, does not resolve or is out of range.
    """
    from omegaconf import open_dict

    values = cfg.copy()  # every value but the overrides as typed (which may look like interpolations)
    with open_dict(values):
        values.pop("overrides", None)
    with one_line_config_errors():  # the keys that others interpolate first, so that an error names its source
        for key in sorted(values, key=lambda k: k in ("model", "callbacks", "logger")):
            node = values[key]
            if isinstance(node, (DictConfig, ListConfig)):
                OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    require_number("loss.alpha", cfg.loss.alpha, 0)  # convnet and ws ignore alpha; a negative one is still wrong
    if cfg.threads is not None:
        require_number("threads", cfg.threads, 1, integer=True, high=MAX_THREADS, high_strict=False)
    require_number("seed", cfg.seed, 0, integer=True, high=MAX_SEED, high_strict=False)
    for key in ("flush_denormal", "tune_malloc"):
        if not isinstance(cfg.cpu[key], bool):
            raise ConfigError(f"cpu.{key}", cfg.cpu[key], "true or false")
    require_number("trainer.max_epochs", cfg.trainer.max_epochs, 1, integer=True, high=MAX_EPOCHS, high_strict=False)
    require_number("checkpoint_every", cfg.checkpoint_every, 1, integer=True, high=MAX_EPOCHS, high_strict=False)


def progress_bar_shown(requested: bool, stream=None) -> bool:
    """Whether to draw Lightning's progress bar: only when asked for and ``stream``
    (default ``sys.stderr``, where tqdm writes) is a terminal. In a file, every refresh
    would be a line (87.5 KB for a default run)."""
    import sys

    stream = sys.stderr if stream is None else stream
    return bool(requested) and hasattr(stream, "isatty") and stream.isatty()


def hparams(cfg: DictConfig, overrides: list[str], source: str) -> dict[str, Any]:
    """The flat hyperparameters shown in TensorBoard's HPARAMS tab.

    ``HPARAM_KEYS`` plus every key set on the command line or by the sweeper (so every
    swept key appears), plus ``data.source`` as resolved. Values are plain scalars:
    bool, int, float or str (``None`` where a key has no value). A config-group choice
    (``experiment=study``) is its option's name; ``model=...`` is ``model_name``.
    """
    from digitpairs.training.tboard import override_keys
    from digitpairs.utils.config import config_groups

    groups = config_groups()
    choices = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.lstrip("+~") in groups:
            choices[key.lstrip("+~")] = value
    keys = list(HPARAM_KEYS) + [k for k in override_keys(overrides) if k not in HPARAM_KEYS]
    out: dict[str, Any] = {}
    for key in keys:
        if key in choices:
            out[key] = choices[key]
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):  # a group choice that is not an override: see model_name
            continue
        out[key] = value if value is None or isinstance(value, (int, float, str, bool)) else str(value)
    out["data.source"] = source
    return out


def build(cfg: DictConfig, loggers: bool = True, quiet: bool = False):
    """Check ``cfg`` and build ``(datamodule, model, trainer, history)`` as a run uses them.

    The pools are loaded and the pairs drawn here (``datamodule.setup()``), so that bad
    input fails before any training. ``loggers=False`` leaves the loggers out (the speed
    benchmark times ``trainer.fit`` without disk I/O). ``quiet`` drops Lightning's INFO
    lines (a sweep's jobs). When the progress bar is asked for but the output is not a
    terminal, a log line every tenth of the epochs replaces it (:class:`EpochLog`).

    Raises:
        ConfigError: bad input.
    """
    import lightning as L

    from digitpairs.models.lightning_modules import check_training_data
    from digitpairs.training.checkpoints.resume import LastCheckpoint
    from digitpairs.training.history import EpochHistory, EpochLog
    from digitpairs.training.process_settings import configure_cpu, quiet_lightning_console

    check_config(cfg)
    quiet_lightning_console(quiet)
    configure_cpu(cfg.threads, cfg.cpu.flush_denormal, cfg.cpu.tune_malloc)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_checked(cfg.data, "data")  # a relative data.root is relative to the project
    model = instantiate_checked(cfg.model, "model")
    datamodule.setup()
    check_training_data(model, datamodule)  # the classes a model needs, before any training
    history = EpochHistory(TRAIN_HISTORY, EVAL_HISTORY)
    from digitpairs.training.checkpoints.store import override_problem

    own = [o for o in command_overrides(cfg) if not o.lstrip("+~").startswith("ckpt_path=")]
    run_info = {  # stored in every checkpoint, for resuming (digitpairs.training.checkpoints.resume_command)
        "overrides": [o for o in own if override_problem(o) is None],  # what a resume may apply again
        "not_replayed": [o for o in own if override_problem(o) is not None],  # shown on resume, never applied
        "max_epochs": cfg.trainer.max_epochs,
        "model_name": cfg.get("model_name"),
        "precision": str(cfg.trainer.get("precision", "32-true")),
    }
    last = LastCheckpoint(Path(cfg.paths.output_dir) / "checkpoints", cfg.checkpoint_every, run_info)
    callbacks = [history, last] + [instantiate_checked(c) for c in (cfg.get("callbacks") or {}).values()]
    requested = cfg.trainer.get("enable_progress_bar", True)
    bar = progress_bar_shown(requested)
    if requested and not bar:
        callbacks.append(EpochLog(history, every=math.ceil(cfg.trainer.max_epochs / 10)))
    logger_list = [instantiate_checked(c) for c in (cfg.get("logger") or {}).values()] if loggers else []
    # LastCheckpoint is a Lightning Checkpoint (it runs after the module's epoch-end hook),
    # which Lightning accepts only with checkpointing enabled; it then adds no ModelCheckpoint.
    trainer = instantiate_checked(
        cfg.trainer,
        callbacks=callbacks,
        logger=logger_list or False,
        enable_checkpointing=True,
        enable_progress_bar=bar,
    )
    return datamodule, model, trainer, history


def _log_session(
    trainer, hp: dict[str, Any], overrides: list[str], out_dir: Path, multirun: bool, has_val: bool
) -> None:
    """The run's row of the HPARAMS tab, written before training (a failed run shows too).

    In a multirun the row is named ``<job>/<model>/seed=NN`` and the sweep's experiment
    summary is written at its end (:mod:`digitpairs.sweeps.summary`); a single run also declares its
    own experiment: its overrides first, then the final metrics it will log.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    from digitpairs.training.tboard import FINAL_METRICS, log_session, override_keys

    metrics = [m for m in FINAL_METRICS if has_val or m != "final/val_acc"]
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            name = Path(os.path.relpath(lg.log_dir, out_dir.parent if multirun else out_dir)).as_posix()
            log_session(lg.experiment, hp, name, metrics, override_keys(overrides), experiment=not multirun)
            lg.hparams.update(hp)  # the logger's hparams.yaml (Lightning writes it when the run ends)


def train(cfg: DictConfig, multirun: bool = False) -> dict[str, Any]:
    """Train and test one model as ``cfg`` says; return what goes into ``metrics.json``.

    Order: :func:`build` (checks, data, model, trainer), then fit, test the final
    model, save the checkpoint and ``metrics.json``.

    Raises:
        ConfigError: bad input, before training starts.
        RunFailed: the run diverged (non-finite training loss).
    """
    import lightning  # noqa: F401  - imported before the clock starts: paid once per process

    from digitpairs.training.checkpoints.resume import LastCheckpoint

    start = time.perf_counter()  # the job's wall time, without the once-per-process imports
    datamodule, model, trainer, history = build(cfg, quiet=multirun)
    hp = start_session(cfg, datamodule, trainer, multirun)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        from digitpairs.training.checkpoints.resume import check_resume

        check_resume(cfg, model, datamodule)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    last = next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint))
    last.save(trainer)  # before testing: a trained model is never lost
    return test_and_record(cfg, datamodule, model, trainer, history, hp, start, trainer.current_epoch)


def start_session(cfg: DictConfig, datamodule, trainer, multirun: bool) -> dict[str, Any]:
    """The run's hyperparameters (:func:`hparams`), written into its TensorBoard HPARAMS
    row before training (so a failed run shows too); returns them."""
    overrides = command_overrides(cfg)
    hp = hparams(cfg, overrides, datamodule.resolved_source)
    _log_session(trainer, hp, overrides, Path(cfg.paths.output_dir), multirun, datamodule.n_val > 0)
    return hp


def test_and_record(
    cfg: DictConfig,
    datamodule,
    model,
    trainer,
    history,
    hp: dict[str, Any],
    start: float,
    epochs: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test the trained ``model`` on the training, validation and test pairs with
    ``trainer``, write ``metrics.json`` into the run folder, log the run's one line and
    return the record.

    Args:
        history: the run's :class:`~digitpairs.training.history.EpochHistory`.
        hp: the run's hyperparameters (:func:`start_session`).
        start: ``time.perf_counter()`` when the run started (its wall time is measured from it).
        epochs: the epochs it trained.
        extra: more keys for the record (a fleet's pack, for one).
    """
    import torch

    out_dir = Path(cfg.paths.output_dir)
    final = {
        k: v for per_loader in trainer.test(model, datamodule=datamodule, verbose=False) for k, v in per_loader.items()
    }
    ckpt_path = cfg.get("ckpt_path")
    nan = math.nan
    metrics: dict[str, Any] = {
        "status": "ok",
        "model": cfg.get("model_name"),
        "seed": cfg.seed,
        "source": datamodule.resolved_source,
        "data": datamodule.source_label,  # e.g. "MNIST 60,000/10,000 (idx)": the pools' sizes
        "train_acc": final.get("final/train_acc", nan),
        "val_acc": final.get("final/val_acc", nan),
        "test_acc": final.get("final/test_acc", nan),
        "test_errors": int(final.get("final/test_errors", -1)),
        "n_train": len(datamodule.sets["train"]),
        "n_val": datamodule.n_val,
        "n_test": len(datamodule.sets["test"]),
        "digit_acc": {k: final.get(f"final/{k}_digit_acc", nan) for k in ("train", "val", "test")}
        if model.has_aux
        else None,
        # the accuracy of each decision rule (comparator, argmax, prob); test_acc is the model's own
        "rule_acc": {
            rule: {k: final.get(f"final/{k}_acc_{rule}", nan) for k in ("train", "val", "test")} for rule in RULES
        }
        if model.has_aux
        else None,
        "decision": model.hparams.get("decision", "comparator"),
        "epochs": epochs,
        "precision": str(cfg.trainer.get("precision", "32-true")),
        "threads": torch.get_num_threads(),  # the same seed, threads and machine give the same numbers
        "normalisation": {"mean": datamodule.mean, "std": datamodule.std},
        "overrides": command_overrides(cfg),
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "checkpoint": "checkpoints/last.ckpt",
        "history": history.history,
        "hparams": hp,
        **(extra or {}),
    }
    for lg in trainer.loggers:
        lg.save()
    metrics["wall_time_s"] = round(time.perf_counter() - start, 3)
    write_json(out_dir / "metrics.json", metrics)
    val = "" if math.isnan(metrics["val_acc"]) else f", val {100 * metrics['val_acc']:.2f}%"
    log.info(
        "%s seed=%s on %s: test accuracy %.2f%% (%d errors in %d)%s, train %.2f%%, %.1f s",
        metrics["model"],
        cfg.seed,
        metrics["data"],
        100 * metrics["test_acc"],
        metrics["test_errors"],
        metrics["n_test"],
        val,
        100 * metrics["train_acc"],
        metrics["wall_time_s"],
    )
    return metrics


def failure_record(cfg: DictConfig, err: BaseException, start: float) -> tuple[dict[str, Any], int]:
    """The ``metrics.json`` record of a run that ended with ``err``, and its exit code.

    A :class:`ConfigError` is ``invalid`` (exit 2), a :class:`RunFailed` ``failed`` (exit 1;
    ``killed`` for a :class:`JobInterrupted`), a storage error (a full disk, a read-only
    file system: :func:`~digitpairs.utils.io.storage_error`) ``failed`` with the folder, the
    reason and the checkpoint it keeps, anything else ``failed`` with its type and message."""
    if isinstance(err, ConfigError):
        status, code, message = "invalid", 2, str(err)
    elif isinstance(err, JobInterrupted):
        status, code, message = "killed", 1, str(err)
    elif isinstance(err, RunFailed):
        status, code, message = "failed", 1, f"run failed: {err}"
    elif storage_error(err):
        status, code, message = "failed", 1, f"run failed: {storage_failure(Path(cfg.paths.output_dir), err)}"
    else:
        status, code, message = "failed", 1, f"{type(err).__name__}: {err}"
    record = {
        "status": status,
        "error": message,
        "model": cfg.get("model_name"),
        "seed": cfg.get("seed"),
        "overrides": command_overrides(cfg),
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    return record, code


def storage_failure(out_dir: Path, err: BaseException) -> str:
    """The line for a run that could not write into its folder ``out_dir``: the folder,
    the reason, and the last whole checkpoint (the atomic save keeps it), e.g. ``cannot
    write in /x/run (No space left on device: /x/run/checkpoints/.last.ckpt.7.tmp); it keeps
    its last whole checkpoint, checkpoints/last.ckpt``."""
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    kept = "it keeps its last whole checkpoint, checkpoints/last.ckpt" if ckpt.is_file() else "no checkpoint was saved"
    return f"cannot write in {out_dir} ({storage_reason(err, out_dir)}); {kept}"


def write_record(out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write a failed run's ``record`` as ``<out_dir>/metrics.json`` where it fits: the
    disk that failed the run may not take its record either, and then the record's
    ``error`` says so (``...; no record could be written (No space left on device: ...)``).
    Returns ``record``."""
    try:
        write_json(out_dir / "metrics.json", record)
    except OSError as err:
        record["error"] += f"; no record could be written ({storage_reason(err, out_dir)})"
    return record


def claim_run_folder(out_dir: Path, multirun: bool) -> FolderLock:
    """The run's folder, locked for this run (:func:`~digitpairs.utils.config.claim_output_dir`).

    A single run's folder is checked as ``train.py`` checks ``hydra.run.dir`` (it may come
    from elsewhere than the command line); a sweep's job folder was checked with its sweep,
    and is only locked.

    Raises:
        ConfigError: the folder is in use by another process, holds a finished run, or
            cannot be written.
    """
    from digitpairs.utils.config import claim_output_dir, in_use, unwritable

    if not multirun:
        return claim_output_dir("hydra.run.dir", out_dir, multirun=False)
    try:
        return FolderLock(out_dir).acquire()
    except FolderInUse as err:
        raise in_use("hydra.sweep.dir", out_dir, err.holder) from None
    except OSError as err:
        raise unwritable("hydra.sweep.dir", out_dir, err) from None


def run(cfg: DictConfig, multirun: bool = False) -> dict[str, Any]:
    """:func:`train` with failures reported the project's way.

    The run folder is locked for the run (:func:`claim_run_folder`): a second process
    that writes into it is refused. A bad config, a failed run, one stopped by SLURM's
    time-limit warning or one whose folder could not be written (a full disk) writes
    ``metrics.json`` with ``status`` ``"invalid"``, ``"failed"`` or ``"killed"`` and the
    one-line ``error`` (if the disk takes it). In a single run it then exits non-zero
    (2 for bad input, 1 for a failed run) with that line on stderr; in a multirun it
    returns, so the sweep goes on and its summary records the job as failed. A folder
    that another process holds, or that cannot be written at all, gets no record.
    """
    out_dir = Path(cfg.paths.output_dir)
    try:
        lock = claim_run_folder(out_dir, multirun)
    except ConfigError as err:
        if not multirun:
            exit_with(str(err), 2)
        log.error("job refused: %s", err)
        return {"status": "invalid", "error": str(err)}
    try:
        return _run_locked(cfg, out_dir, multirun)
    finally:
        lock.release()


def _run_locked(cfg: DictConfig, out_dir: Path, multirun: bool) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        with one_line_config_errors():
            return train(cfg, multirun)
    except (ConfigError, RunFailed) as err:
        record, code = failure_record(cfg, err, start)
    except Exception as err:  # noqa: BLE001 - in a sweep, one broken job must not lose the others
        if not multirun and not storage_error(err):
            raise
        record, code = failure_record(cfg, err, start)
    write_record(out_dir, record)
    if not multirun:
        exit_with(record["error"], code)
    log.error("job failed: %s", record["error"])
    return record
