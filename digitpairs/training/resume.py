"""Resume a run: ``checkpoints/last.ckpt`` every k epochs, the random state, Ctrl-C.

- :class:`LastCheckpoint` (a Lightning callback, always on) writes the run folder's
  ``checkpoints/last.ckpt`` atomically (a temp file, then ``os.replace``) every
  ``checkpoint_every`` epochs. It stores in the checkpoint, under ``"digitpairs"``, what
  Lightning does not: every random state (torch, NumPy, Python and the NumPy generators
  of our ``Dropout`` layers), the run's command-line overrides, ``trainer.max_epochs``,
  the model choice and the precision. On Ctrl-C it prints one line with the epoch
  reached and the exact command that resumes the run.
- :func:`digitpairs.training.resume_args.resume_arguments` turns ``python train.py ckpt_path=<ckpt> [keys]`` into the
  checkpoint's own overrides plus the user's keys, so the run continues with its own
  seed, source and recipe (see :mod:`digitpairs.training.checkpoint` for the checks).
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

from digitpairs.training import checkpoint as ckpt_io
from digitpairs.training.checkpoint import KEY
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


def check_resume(cfg, model: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
    """Check ``cfg.ckpt_path`` against the run about to start; log what differs.

    Returns the loaded checkpoint. Logs one warning line per differing hyperparameter
    and, for a larger ``trainer.max_epochs``, one line saying the lr schedule stays.

    Raises:
        ConfigError: not a checkpoint of this project, a checkpoint of another model,
            or ``trainer.max_epochs`` not above the epochs the checkpoint has done.
    """
    path = str(cfg.ckpt_path)
    ckpt = ckpt_io.load(path)
    about = ckpt_io.info(ckpt)
    if about["model"] != cfg.model_name or ckpt_io.model_class(ckpt, value=path) is not type(model):
        raise ConfigError(
            "ckpt_path",
            path,
            f"a checkpoint of model={cfg.model_name} ({type(model).__name__}); it holds model={about['model']} "
            f"(resume it with model={about['model']}, or leave model= out)",
        )
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
