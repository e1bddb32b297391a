"""Resume a run: ``checkpoints/last.ckpt`` every k epochs, the random state, Ctrl-C.

- :class:`LastCheckpoint` (a Lightning callback, always on) writes the run folder's
  ``checkpoints/last.ckpt`` atomically (a temp file, then ``os.replace``) every
  ``checkpoint_every`` epochs. It stores in the checkpoint, under ``"digitpairs"``, what
  Lightning does not: every random state (torch, NumPy, Python and the NumPy generators
  of our ``Dropout`` layers), the run's command-line overrides, ``trainer.max_epochs``,
  the model choice and the precision. On Ctrl-C it prints one line with the epoch
  reached and the exact command that resumes the run.
- :func:`digitpairs.training.checkpoints.resume_command.resume_arguments` turns
  ``python train.py ckpt_path=<ckpt> [keys]`` into the checkpoint's own overrides plus
  the user's keys, so the run continues with its own seed, source and recipe (see
  :mod:`digitpairs.training.checkpoints.store` for the checks).
- :func:`compare_hparams` gives one warning line per key that differs from the checkpoint.

``python train.py ckpt_path=<run>/checkpoints/last.ckpt`` then calls
``trainer.fit(ckpt_path=...)``, which restores the weights, the optimiser, the lr
schedule and the loops; :meth:`LastCheckpoint.on_load_checkpoint` restores the random
state, so the resumed run draws the same batches and dropout masks as an unbroken one.
"""

from __future__ import annotations

import logging
import random
import shlex
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from digitpairs.training.checkpoints import store as ckpt_io
from digitpairs.training.checkpoints.store import KEY
from digitpairs.utils.errors import ConfigError

log = logging.getLogger(__name__)


def _dropout_layers(module: torch.nn.Module) -> dict[str, Any]:
    """Our NumPy-driven ``Dropout`` layers by name (those with a ``.rng`` Generator)."""
    return {name: m for name, m in module.named_modules() if isinstance(getattr(m, "rng", None), np.random.Generator)}


def rng_state(module: torch.nn.Module, global_states: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every random state a run draws from: torch (CPU and CUDA), NumPy's and Python's
    global generators, and each ``Dropout`` layer's NumPy generator. Plain values and
    tensors only, so the checkpoint loads with ``weights_only=True``.

    ``global_states`` gives the global generators' states instead of reading them (a run of
    a fleet's pack keeps its own: :class:`digitpairs.training.pack.RunRandomState`), as
    ``{"torch": ByteTensor, "numpy": np.random.get_state(), "python": random.getstate()}``."""
    if global_states is None:
        global_states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    else:
        cuda = []
    np_state = global_states["numpy"]
    return {
        "torch": global_states["torch"],
        "cuda": cuda,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": global_states["python"],
        "dropout": {name: m.rng.bit_generator.state for name, m in _dropout_layers(module).items()},
    }


def set_rng_state(module: torch.nn.Module, state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (into ``module``'s ``Dropout`` layers too)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    layers = _dropout_layers(module)
    for name, saved in state["dropout"].items():
        if name in layers:
            layers[name].rng.bit_generator.state = saved


class LastCheckpoint(Checkpoint):
    """Save ``<dirpath>/last.ckpt`` atomically every ``every_n_epochs`` epochs; report Ctrl-C.

    Args:
    A ``Checkpoint`` for Lightning, so that it runs after the LightningModule's
    ``on_train_epoch_end`` (the epoch's training metrics are logged by then) and the
    Trainer adds no ``ModelCheckpoint`` of its own.

        dirpath: the folder of ``last.ckpt`` (the run folder's ``checkpoints/``).
        every_n_epochs: save after epochs k, 2k, ... (>= 1). The task saves the final
            model into the same file when training ends.
        run_info: plain values stored in every checkpoint under ``"digitpairs"``
            (``overrides``, ``max_epochs``, ``model_name``, ``precision``, ...).
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1, run_info: dict[str, Any] | None = None) -> None:
        self.dirpath, self.every_n_epochs = Path(dirpath), every_n_epochs
        self.run_info = dict(run_info or {})
        self.saved_epochs = 0  # epochs completed in the newest last.ckpt (0: none yet)
        self._loaded: str | None = None  # the checkpoint this run resumed from, until it saves its own

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: L.Trainer) -> None:
        """``trainer.save_checkpoint`` into a temp file, then renamed over ``last.ckpt``:
        a run killed while saving keeps the previous checkpoint whole."""
        ckpt_io.save(trainer, self.path)
        self.saved_epochs, self._loaded = trainer.fit_loop.epoch_progress.current.processed, None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not trainer.sanity_checking:
            self.save(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = {
            **self.run_info,
            "class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "rng": rng_state(pl_module),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        info = checkpoint.get(KEY) or {}
        if "rng" in info:
            set_rng_state(pl_module, info["rng"])
        self.saved_epochs, self._loaded = ckpt_io.epochs_done(checkpoint), trainer.ckpt_path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        if self.saved_epochs:
            path = self._loaded or self.path
            print(
                f"interrupted in epoch {trainer.current_epoch + 1} of {trainer.max_epochs}; "
                f"{path} holds epoch {self.saved_epochs}. Resume: {resume_command(path)}",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(
                f"interrupted in epoch {trainer.current_epoch + 1} of {trainer.max_epochs}, before any "
                "checkpoint was saved: nothing to resume",
                file=sys.stderr,
                flush=True,
            )


def resume_command(ckpt: Path) -> str:
    """``python train.py ckpt_path=<ckpt>``, quoted for a POSIX shell (the checkpoint
    carries the run's own overrides, see :func:`resume_arguments`)."""
    return f"python train.py {shlex.quote(f'ckpt_path={ckpt}')}"


# hyperparameter name -> the config key a user types
_MODEL_KEYS = {
    "lr1": "optim.lr1",
    "lr2": "optim.lr2",
    "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum",
    "switch_fraction": "optim.switch_fraction",
    "gamma": "loss.gamma",
    "alpha": "loss.alpha",
}
_RESTORED = {"optim.lr1", "optim.lr2", "optim.weight_decay", "optim.momentum", "optim.switch_fraction"}


def compare_hparams(model: L.LightningModule, datamodule: L.LightningDataModule, ckpt: dict) -> list[str]:
    """One line per hyperparameter of ``model`` and ``datamodule`` that differs from the
    checkpoint's: ``optim.lr2: 0.001 -> 0.01`` (config key, checkpoint value, new value).

    The optimiser keys (``optim.*``) are noted as kept: ``fit(ckpt_path=...)`` restores
    the optimiser and its lr schedule as they were saved.
    """
    lines = []
    old_data = dict(ckpt.get("datamodule_hyper_parameters") or {})
    resolved = (ckpt.get(ckpt_io.DATA_STATE_KEY) or {}).get("resolved_source")
    if resolved and datamodule.hparams.get("source") == resolved:
        old_data["source"] = resolved  # data.source=auto, pinned to what auto found: no change
    pairs = [
        (model.hparams, ckpt.get("hyper_parameters") or {}, lambda k: _MODEL_KEYS.get(k, f"model.{k}")),
        (datamodule.hparams, old_data, lambda k: "seed" if k == "seed" else f"data.{k}"),
    ]
    for new, old, key_of in pairs:
        for name in sorted(set(new) | set(old)):
            if name in old and name in new and old[name] != new[name]:
                key = key_of(name)
                note = (
                    " (the optimiser and lr schedule are restored as saved: this value is not used)"
                    if key in _RESTORED
                    else ""
                )
                lines.append(f"{key}: {old[name]!r} -> {new[name]!r}{note}")
    return lines


# what a run's checkpoint holds beyond the model: Lightning resumes from these
RUN_STATE = ("optimizer_states", "lr_schedulers", "loops")


def _rng_problem(state: Any) -> str | None:
    """Why ``state`` (the ``rng`` of a checkpoint's record) cannot be restored by
    :func:`set_rng_state`, or None: each part is applied to a fresh generator of its own
    kind (never one that the checkpoint names)."""
    if not isinstance(state, dict) or set(state) != {"torch", "cuda", "numpy", "python", "dropout"}:
        return "not the five random states of a run"
    try:
        torch.Generator().set_state(state["torch"])
        if not isinstance(state["cuda"], list) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in state["cuda"]
        ):
            return "the CUDA states are not byte tensors"
        kind, keys, *rest = state["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy().astype(np.uint32), *rest))
        random.Random().setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
        if not isinstance(state["dropout"], dict):
            return "the dropout states are not a mapping"
        for saved in state["dropout"].values():
            np.random.PCG64().state = saved  # our Dropout layers draw from PCG64 (np.random.default_rng)
    except Exception as err:  # noqa: BLE001 - any malformed state is the same user error
        return f"a state that does not restore ({type(err).__name__})"
    return None


def _history_problem(callbacks: Any, epochs: int) -> str | None:
    """Why the callbacks' state of a checkpoint cannot continue its run's history, or None:
    ``EpochHistory`` holds known keys, each a list of at most ``epochs`` numbers, and an
    epoch count in [0, epochs]."""
    from digitpairs.training.history import EVAL_HISTORY, TRAIN_HISTORY

    if not isinstance(callbacks, dict):
        return "its callbacks' state is not a mapping"
    state = callbacks.get("EpochHistory")
    if state is None:
        return None
    history, done = (state.get("history"), state.get("train_epochs")) if isinstance(state, dict) else (None, None)
    if not isinstance(history, dict) or not isinstance(done, int) or isinstance(done, bool) or not 0 <= done <= epochs:
        return "its history is not a mapping with an epoch count"
    for name, series in history.items():
        if name not in TRAIN_HISTORY + EVAL_HISTORY:
            return f"its history has an unknown key {name!r}"
        ok = isinstance(series, list) and len(series) <= epochs
        if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in series):
            return f"its history {name!r} is not a list of at most {epochs} numbers"
    return None


def check_resumable(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> None:
    """Refuse a checkpoint that cannot resume a run, before anything is built.

    A run's ``checkpoints/last.ckpt`` holds the project's record (class, overrides, random
    state), the optimiser, the lr schedule and the loops. A shipped model (``pretrained/``)
    holds the weights only: it is refused, with where it can be used. A checkpoint of
    another program has no record of ours. The random state and the callbacks' state
    must restore as saved (:func:`_rng_problem`, :func:`_history_problem`), the loops
    must count the epochs done, the data module's state must name its source and hold a
    mean and std in range, and Lightning's version must parse (Lightning migrates
    checkpoints by it).

    Raises:
        ConfigError: naming ``key``, ``value`` and the reason.
    """
    from packaging.version import InvalidVersion, Version

    own = ckpt.get(KEY)
    if not isinstance(own, dict) or "class" not in own:
        raise ConfigError(
            key,
            value,
            f"{ckpt_io.EXPECTED}; this one has no digitpairs record (its model class, overrides and random "
            "state): another program wrote it",
        )
    missing = [part for part in RUN_STATE if part not in ckpt]
    if missing or "rng" not in own:
        raise ConfigError(
            key,
            value,
            f"{ckpt_io.EXPECTED} to resume; this one holds a model's weights only (a shipped model: no "
            f"{', '.join(missing or ['random state'])}): use it with evaluate.py or predict.py, or train a new run",
        )
    try:
        done = ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    except (KeyError, TypeError):
        done = None
    data_state = ckpt.get(ckpt_io.DATA_STATE_KEY)
    problem = _rng_problem(own["rng"])
    if problem is not None:
        problem = f"its random state cannot be restored: {problem}"
    elif not isinstance(done, int):
        problem = "its loops record no count of the epochs done"
    elif data_state is not None and not (isinstance(data_state, dict) and data_state.get("resolved_source")):
        problem = "its data module state names no data source"
    else:
        if data_state is not None:
            ckpt_io.normalisation(ckpt, key, value)  # a mean and std in range (raises)
        problem = _history_problem(ckpt.get("callbacks", {}), done)
    if problem is None:
        version = ckpt.get("pytorch-lightning_version")
        try:
            Version(str(version))
        except InvalidVersion:
            problem = f"its Lightning version {version!r} is not a version"
    if problem is not None:
        raise ConfigError(key, value, f"{ckpt_io.EXPECTED}; {problem}")


def check_fits(ckpt: dict[str, Any], model: L.LightningModule, key: str = "ckpt_path", value: str = "?") -> None:
    """Refuse a checkpoint whose weights or optimiser state do not fit ``model`` (the same
    names and shapes; one optimiser state per parameter, each tensor of a parameter's
    shape), so that Lightning never meets them half-way through restoring.

    Raises:
        ConfigError: naming the first tensor that does not fit.
    """
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if own != saved:
        name = sorted(set(own) ^ set(saved)) or [k for k in own if own[k] != saved[k]]
        raise ConfigError(key, value, f"{ckpt_io.EXPECTED}; its weights do not fit the model ({name[0]})")
    shapes = [tuple(p.shape) for p in model.parameters()]
    for opt in ckpt.get("optimizer_states") or []:
        try:
            ids = [i for group in opt["param_groups"] for i in group["params"]]
            state = opt["state"]
            fits = sorted(ids) == list(range(len(shapes))) and all(
                i in range(len(shapes))
                and all(
                    not isinstance(t, torch.Tensor) or t.ndim == 0 or tuple(t.shape) == shapes[i]
                    for t in per_param.values()
                )
                for i, per_param in state.items()
            )
        except (KeyError, TypeError, AttributeError):
            fits = False
        if not fits:
            raise ConfigError(key, value, f"{ckpt_io.EXPECTED}; its optimiser state does not fit the model")


def check_resume(cfg, model: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
    """Check ``cfg.ckpt_path`` against the run about to start; log what differs.

    Returns the loaded checkpoint. Logs one warning line per differing hyperparameter
    and, for a larger ``trainer.max_epochs``, one line saying the lr schedule stays.

    Raises:
        ConfigError: not a checkpoint of this project, one that cannot resume
            (:func:`check_resumable`), a checkpoint of another model or one that does not
            fit it (:func:`check_fits`), or ``trainer.max_epochs`` not above the epochs
            the checkpoint has done.
    """
    path = str(cfg.ckpt_path)
    ckpt = ckpt_io.load(path, check_class=False)
    check_resumable(ckpt, value=path)
    ckpt_io.check_model(ckpt, value=path)
    about = ckpt_io.info(ckpt)
    if about["model"] != cfg.model_name or ckpt_io.model_class(ckpt, value=path) is not type(model):
        raise ConfigError(
            "ckpt_path",
            path,
            f"a checkpoint of model={cfg.model_name} ({type(model).__name__}); it holds model={about['model']} "
            f"(resume it with model={about['model']}, or leave model= out)",
        )
    check_fits(ckpt, model, value=path)
    done, max_epochs = about["epochs"], cfg.trainer.max_epochs
    if max_epochs <= done:
        raise ConfigError(
            "trainer.max_epochs", max_epochs, f"an integer > {done}, the epochs this checkpoint has trained"
        )
    for line in compare_hparams(model, datamodule, ckpt):
        log.warning("resume: %s differs from the checkpoint: %s", line.split(":", 1)[0], line.split(": ", 1)[1])
    old_max = about["max_epochs"]
    if old_max is not None and max_epochs != old_max:
        log.warning(
            "resume: trainer.max_epochs %s -> %s: the run trains to epoch %s; the lr schedule stays as the "
            "checkpoint had it (planned for %s epochs; after them the lr stays at its last value)",
            old_max,
            max_epochs,
            max_epochs,
            old_max,
        )
    log.info("resume: %s, %d of %d epochs done", path, done, max_epochs)
    return ckpt
