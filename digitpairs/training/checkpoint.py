"""Read a checkpoint of this project: check it, rebuild its model, read its normalisation.

Shared by ``train.py ckpt_path=...`` (resume), ``evaluate.py`` and ``predict.py``. A
checkpoint is what ``trainer.save_checkpoint`` writes in a run (``checkpoints/last.ckpt``):
the model's ``state_dict`` and ``hyper_parameters``, the data module's
``hyper_parameters`` (seed, source, sizes) and state (the training pixels' mean and std),
and, from :class:`digitpairs.training.resume.LastCheckpoint`, a ``"digitpairs"`` entry with the
model class, the run's overrides, ``max_epochs``, precision and random state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digitpairs.utils.errors import ConfigError
from digitpairs.utils.io import atomic_write

KEY = "digitpairs"  # our own entry in a checkpoint dict
DATA_STATE_KEY = "PairDataModule"  # where Lightning stores PairDataModule.state_dict()
EXPECTED = "a checkpoint (.ckpt) written by a digitpairs run (checkpoints/last.ckpt of a run folder)"


def save(trainer, path: str | Path) -> Path:
    """Write ``trainer``'s full checkpoint (weights, optimiser, loops, callbacks' state) to
    ``path`` atomically (:func:`~digitpairs.utils.io.atomic_write`): a run killed while
    saving keeps the previous file whole. Returns ``path``."""
    return atomic_write(path, lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))


def load(path: str | Path, key: str = "ckpt_path", check_class: bool = True) -> dict[str, Any]:
    """Load and check a checkpoint file on the CPU (``weights_only=True``).

    Args:
        path: the file.
        key: the argument's name, for the error line.
        check_class: also check that its model class is one of ours (imports Lightning).

    Returns:
        the checkpoint dict, with at least ``state_dict`` and ``hyper_parameters``.

    Raises:
        ConfigError: a missing file, a file torch cannot load, or a checkpoint that is
            not this project's (no model state, or no model class we know).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, str(path), f"an existing file: {EXPECTED}")
    import torch

    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(key, str(path), f"{EXPECTED}; torch.load failed ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ConfigError(key, str(path), f"{EXPECTED}; this file holds no Lightning model state")
    if check_class:
        model_class(ckpt, key, str(path))  # raises for a model that is not ours
    return ckpt


def _class_name(ckpt: dict[str, Any]) -> str | None:
    """The model class name a checkpoint records (``LastCheckpoint``), else the one its
    hyperparameters imply (checkpoints saved without it), else None."""
    recorded = (ckpt.get(KEY) or {}).get("class")
    if recorded is not None:
        return str(recorded).rpartition(".")[2]
    hp = ckpt.get("hyper_parameters") or {}
    if not {"lr1", "lr2"} <= set(hp):
        return None
    return "WSAuxModule" if "alpha" in hp else "WSModule" if "weight_sharing" in hp else "ConvNetModule"


def model_class(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> type:
    """The ``LightningModule`` class of a checkpoint, looked up by name among the project's
    own models (:data:`digitpairs.models.MODEL_CLASSES`). Nothing that a checkpoint names
    is imported.

    Raises:
        ConfigError: a class that is not one of the project's models.
    """
    from digitpairs.models import MODEL_CLASSES

    name = _class_name(ckpt)
    if name not in MODEL_CLASSES:
        recorded = (ckpt.get(KEY) or {}).get("class", name)
        raise ConfigError(
            key, value, f"{EXPECTED}; it holds a model of class {recorded}, not one of {', '.join(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[name]


def model_name(ckpt: dict[str, Any]) -> str:
    """The ``model=`` choice that trained the checkpoint (``convnet``, ``ws``, ...)."""
    name = (ckpt.get(KEY) or {}).get("model_name")
    if name:
        return str(name)
    cls = _class_name(ckpt)
    sharing = (ckpt.get("hyper_parameters") or {}).get("weight_sharing", True)
    names = {"ConvNetModule": "convnet", "WSModule": "ws", "DigitClassifierModule": "digit_classifier"}
    return names.get(cls, "ws_aux" if sharing else "aux")


def build_model(ckpt: dict[str, Any]):
    """The checkpoint's model with its weights, in eval mode, on the CPU."""
    model = model_class(ckpt)(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def normalisation(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> tuple[float, float]:
    """``(mean, std)`` of the pixels the checkpoint's model was trained on (0-255 units).

    Raises:
        ConfigError: the checkpoint has no data module state (it was not saved by a run).
    """
    state = ckpt.get(DATA_STATE_KEY) or {}
    if state.get("mean") is None or state.get("std") is None:
        raise ConfigError(key, value, f"{EXPECTED}; this one lacks the training pixels' mean and std")
    return float(state["mean"]), float(state["std"])


def epochs_done(ckpt: dict[str, Any]) -> int:
    """Training epochs the checkpoint has finished (its fit loop's processed epochs)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", -1)) + 1


def info(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about its run: seed, trained source, epochs, precision, overrides."""
    own = ckpt.get(KEY) or {}
    data_hp = ckpt.get("datamodule_hyper_parameters") or {}
    return {
        "model": model_name(ckpt),
        "seed": data_hp.get("seed"),
        "source": (ckpt.get(DATA_STATE_KEY) or {}).get("resolved_source"),
        "epochs": epochs_done(ckpt),
        "max_epochs": own.get("max_epochs"),
        "precision": own.get("precision", "32-true"),
        "overrides": list(own.get("overrides", [])),
    }
