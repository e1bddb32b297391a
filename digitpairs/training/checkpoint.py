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
        check_model(ckpt, key, str(path))  # raises for a model that is not ours, or hyperparameters it does not take
    check_overrides(info(ckpt)["overrides"], key, str(path))
    return ckpt


# Config groups whose options are the project's own files and may be chosen again on
# resume; the others (callbacks, logger, trainer, hydra/*) would instantiate what a
# checkpoint names, so a checkpoint never chooses them.
REPLAYABLE_GROUPS = ("model", "optim", "loss", "data", "recipe", "experiment")
PLAIN = (bool, int, float, str, type(None))


def override_problem(override: str) -> str | None:
    """Why ``override``, recorded in a checkpoint, may not be applied again on resume, or
    None when it may: only ``key=value`` with a plain value (a number, a string, a boolean
    or null) for a key of the project's own config, or a choice among the project's own
    options of ``REPLAYABLE_GROUPS``. Never ``+``, ``++`` or ``~``, never ``hydra.*``,
    never a ``_target_`` (or any key starting with ``_``), never an interpolation, a list,
    a dict or a sweep. Parses with Hydra's override grammar; imports and calls nothing.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    from digitpairs.utils.config import config_groups, group_options

    try:
        o = OverridesParser.create().parse_override(override)
    except Exception:  # noqa: BLE001 - anything Hydra cannot parse is refused
        return "not a key=value override"
    if o.type != OverrideType.CHANGE:
        return "it adds or deletes a key (+, ++ or ~)"
    if o.package is not None or o.is_sweep_override():
        return "a package or a sweep"
    key, value = o.key_or_group, o.value()
    parts = key.replace("/", ".").split(".")
    if parts[0] == "hydra" or any(part.startswith("_") for part in parts):
        return "Hydra's own keys and _target_ keys are never taken from a checkpoint"
    if not isinstance(value, PLAIN) or (isinstance(value, str) and "${" in value):
        return "not a plain value (a number, a string, a boolean or null)"
    if key in config_groups():
        if key not in REPLAYABLE_GROUPS:
            return f"the {key} group instantiates classes"
        if str(value) not in group_options(key):
            return f"not one of the {key} options"
    elif "/" in key:
        return "not a config group of the project"
    return None


def check_overrides(overrides: list[Any], key: str = "ckpt_path", value: str = "?") -> None:
    """Refuse a checkpoint whose recorded overrides include one that :func:`override_problem`
    refuses.

    Raises:
        ConfigError: naming the checkpoint, the override and why it is refused.
    """
    if not isinstance(overrides, list):
        raise ConfigError(key, value, f"{EXPECTED}; its recorded overrides are not a list")
    for override in overrides:
        problem = override_problem(override) if isinstance(override, str) else "not a string"
        if problem:
            raise ConfigError(
                key,
                value,
                f"{EXPECTED} with the project's own keys and plain values; it records "
                f"the override {str(override)!r}: {problem}",
            )


def accepted_hyperparameters(cls: type) -> set[str]:
    """The constructor arguments of a model class and of the classes it passes ``**kwargs`` to."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def check_model(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> type:
    """The checkpoint's model class (:func:`model_class`), once its hyperparameters are
    plain values that the class takes.

    Raises:
        ConfigError: a foreign class, a hyperparameter the class does not take, or one
            that is not a plain value.
    """
    cls = model_class(ckpt, key, value)
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict):
        raise ConfigError(key, value, f"{EXPECTED}; its hyperparameters are not a mapping")
    unknown = sorted(set(map(str, hp)) - accepted_hyperparameters(cls))
    if unknown:
        raise ConfigError(key, value, f"{EXPECTED}; {cls.__name__} takes no hyperparameter {unknown[0]!r}")
    odd = sorted(str(k) for k, v in hp.items() if not isinstance(v, PLAIN))
    if odd:
        raise ConfigError(key, value, f"{EXPECTED}; its hyperparameter {odd[0]!r} is not a plain value")
    return cls


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


def build_model(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?"):
    """The checkpoint's model with its weights, in eval mode, on the CPU.

    Raises:
        ConfigError: a model the checkpoint cannot rebuild (see :func:`check_model`), a bad
            hyperparameter value, or weights that do not fit the model.
    """
    model = check_model(ckpt, key, value)(**ckpt["hyper_parameters"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise ConfigError(key, value, f"{EXPECTED}; its weights do not fit its model ({type(err).__name__})") from None
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
