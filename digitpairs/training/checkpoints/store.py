"""Read a checkpoint of this project: check it, rebuild its model, read its normalisation.

Shared by ``train.py ckpt_path=...`` (resume), ``evaluate.py`` and ``predict.py``. A
checkpoint is what ``trainer.save_checkpoint`` writes in a run (``checkpoints/last.ckpt``):
the model's ``state_dict`` and ``hyper_parameters``, the data module's
``hyper_parameters`` (seed, source, sizes) and state (the training pixels' mean and std),
and, from :class:`digitpairs.training.checkpoints.resume.LastCheckpoint`, a ``"digitpairs"`` entry with the
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

    The file is read once; its bytes pass :func:`check_archive` (a whole zip archive whose
    every member matches its CRC-32: ``torch.load`` checks none) and are then loaded, so
    the bytes checked are the bytes used. The loaded dict then passes :func:`check_values`
    (every value a checkpoint gives that the project uses: finite weights, a closed set
    or a range for the rest) and :func:`check_overrides`.

    Args:
        path: the file.
        key: the argument's name, for the error line.
        check_class: also check that its model class is one of ours (imports Lightning).

    Returns:
        the checkpoint dict, with at least ``state_dict`` and ``hyper_parameters``.

    Raises:
        ConfigError: a missing file, a damaged one, a file torch cannot load, a checkpoint
            that is not this project's (no model state, or no model class we know), or a
            value out of its set or range (a NaN weight, an unknown precision, ...).
    """
    import io

    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, str(path), f"an existing file: {EXPECTED}")
    import torch

    try:
        data = file.read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(key, str(path), f"{EXPECTED}; it cannot be read ({reason})") from None
    check_archive(data, key, str(path))
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(key, str(path), f"{EXPECTED}; torch.load failed ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ConfigError(key, str(path), f"{EXPECTED}; this file holds no Lightning model state")
    try:
        if check_class:
            check_model(ckpt, key, str(path))  # a model that is not ours, or hyperparameters it does not take
        check_values(ckpt, key, str(path))
        check_overrides(info(ckpt, key, str(path))["overrides"], key, str(path))
    except RecursionError:  # a value nested thousands deep: never a traceback
        raise ConfigError(key, str(path), f"{EXPECTED}; it holds values nested too deeply") from None
    return ckpt


def check_archive(data: bytes, key: str = "ckpt_path", value: str = "?") -> None:
    """Refuse checkpoint bytes that are not a whole zip archive as ``torch.save`` writes it:
    every member stored (uncompressed: nothing expands beyond the file) and matching the
    CRC-32 in its header. One flipped bit in a weight fails here; ``torch.load`` alone
    reads it silently.

    Raises:
        ConfigError: not a zip archive (torch's legacy format, another file), a compressed
            member, or a damaged archive (naming the first member that fails its CRC-32).
    """
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            packed = next((m.filename for m in members if m.compress_type != zipfile.ZIP_STORED), None)
            if packed is not None:
                raise ConfigError(key, value, f"{EXPECTED}; its member {packed} is compressed (torch never does)")
            bad = archive.testzip()  # reads every member and compares its CRC-32
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged header or directory is the same user error
        raise ConfigError(
            key, value, f"{EXPECTED}; it is not a whole zip archive as torch.save writes it ({type(err).__name__})"
        ) from None
    if not members:
        raise ConfigError(key, value, f"{EXPECTED}; it is an empty zip archive")
    if bad is not None:
        raise ConfigError(key, value, f"{EXPECTED}; it is damaged: {bad} fails its CRC-32 check")


# trainer.precision values a checkpoint may name: Lightning's own, none that loads a plugin
PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true")
RESOLVED_SOURCES = ("idx", "torchvision")  # data.source as a run resolved it (never auto)


def _non_finite(tensors: Any, prefix: str = "") -> str | None:
    """The name of the first floating (or complex) tensor or float in ``tensors`` (nested
    dicts, lists and tuples) that holds a NaN or an infinity, else None."""
    import math

    import torch

    if isinstance(tensors, torch.Tensor):
        if (tensors.is_floating_point() or tensors.is_complex()) and not bool(torch.isfinite(tensors).all()):
            return prefix or "a tensor"
        return None
    if isinstance(tensors, float):
        return None if math.isfinite(tensors) else prefix or "a number"
    if isinstance(tensors, dict):
        items = tensors.items()
    elif isinstance(tensors, (list, tuple)):
        items = enumerate(tensors)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if found:
            return found
    return None


def check_values(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> None:
    """Check every value of a loaded checkpoint that the project uses, before any use.

    - ``state_dict``: names to tensors, every floating tensor finite (the shapes are
      checked against the model by :func:`build_model`);
    - ``optimizer_states`` and ``lr_schedulers`` (a run's checkpoint): every float finite;
    - the data module's normalisation (:func:`normalisation`), when present;
    - what :func:`info` reads: the seed, the resolved source, the epochs, ``max_epochs``,
      the precision, the model name and the overrides, each in its set or range.

    Raises:
        ConfigError: naming the checkpoint and the first value out of its set or range.
    """
    import torch

    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(key, value, f"{EXPECTED}; its state_dict is not a mapping of names to tensors")
    for part in ("state_dict", "optimizer_states", "lr_schedulers"):
        bad = _non_finite(ckpt.get(part))
        if bad:
            raise ConfigError(key, value, f"{EXPECTED} with finite values; {part} {bad} holds NaN or infinity")
    if ckpt.get(DATA_STATE_KEY) is not None:
        normalisation(ckpt, key, value)
    info(ckpt, key, value)


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
    plain, finite values that the class takes (their ranges: the class's own checks, in
    :func:`build_model`).

    Raises:
        ConfigError: a foreign class, a hyperparameter the class does not take, or one
            that is not a plain value or not finite.
    """
    import math

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
    infinite = sorted(str(k) for k, v in hp.items() if isinstance(v, float) and not math.isfinite(v))
    if infinite:
        raise ConfigError(key, value, f"{EXPECTED}; its hyperparameter {infinite[0]!r} is not finite")
    return cls


def _class_name(ckpt: dict[str, Any]) -> str | None:
    """The model class name a checkpoint records (``LastCheckpoint``), else the one its
    hyperparameters imply (checkpoints saved without it), else None."""
    own = ckpt.get(KEY) if isinstance(ckpt.get(KEY), dict) else {}
    recorded = own.get("class")
    if recorded is not None:
        return str(recorded).rpartition(".")[2]
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt.get("hyper_parameters"), dict) else {}
    if not {"lr1", "lr2"} <= set(hp):
        return None
    return "WSAuxModule" if "alpha" in hp else "WSModule" if "weight_sharing" in hp else "ConvNetModule"


def model_class(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> type:
    """The ``LightningModule`` class of a checkpoint, looked up by name among the project's
    own models (:data:`digitpairs.models.MODEL_CLASSES`). Nothing that a checkpoint names
    is imported.

    Raises:
        ConfigError: a class that is not one of the project's models, or none named.
    """
    from digitpairs.models import MODEL_CLASSES

    name = _class_name(ckpt)
    if name is None:
        raise ConfigError(
            key, value, f"{EXPECTED}; it names no model class and its hyperparameters are not those of one"
        )
    if name not in MODEL_CLASSES:
        recorded = (ckpt.get(KEY) or {}).get("class", name)
        raise ConfigError(
            key, value, f"{EXPECTED}; it holds a model of class {recorded}, not one of {', '.join(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[name]


def model_name(ckpt: dict[str, Any]) -> str:
    """The ``model=`` choice that trained the checkpoint (``convnet``, ``ws``, ...)."""
    own = ckpt.get(KEY) if isinstance(ckpt.get(KEY), dict) else {}
    name = own.get("model_name")
    if name:
        return str(name)
    cls = _class_name(ckpt)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt.get("hyper_parameters"), dict) else {}
    sharing = hp.get("weight_sharing", True)
    names = {"ConvNetModule": "convnet", "WSModule": "ws", "DigitClassifierModule": "digit_classifier"}
    return names.get(cls, "ws_aux" if sharing else "aux")


def build_model(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?"):
    """The checkpoint's model with its weights, in eval mode, on the CPU.

    Raises:
        ConfigError: a model the checkpoint cannot rebuild (see :func:`check_model`), a
            hyperparameter out of its range (the class's own check, named), weights that
            do not fit the model (a missing, extra or misshapen tensor), or a non-finite
            weight.
    """
    cls = check_model(ckpt, key, value)
    try:
        model = cls(**ckpt["hyper_parameters"])
    except ConfigError as err:
        raise ConfigError(
            key, value, f"{EXPECTED}; its hyperparameter {err.key}={err.value!r} is out of range ({err.allowed})"
        ) from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise ConfigError(key, value, f"{EXPECTED}; its weights do not fit its model ({type(err).__name__})") from None
    bad = _non_finite(model.state_dict())
    if bad:
        raise ConfigError(key, value, f"{EXPECTED} with finite values; state_dict {bad} holds NaN or infinity")
    return model.eval()


MAX_PIXEL = 255.0  # pixels are in 0-255 units


def normalisation(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> tuple[float, float]:
    """``(mean, std)`` of the pixels the checkpoint's model was trained on (0-255 units).

    Raises:
        ConfigError: the checkpoint has no data module state (it was not saved by a run),
            or a mean outside [0, 255] or a std outside (0, 255] (NaN included).
    """
    state = ckpt.get(DATA_STATE_KEY)
    state = state if isinstance(state, dict) else {}
    if state.get("mean") is None or state.get("std") is None:
        raise ConfigError(key, value, f"{EXPECTED}; this one lacks the training pixels' mean and std")
    mean, std = state["mean"], state["std"]
    plain = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mean, std))
    if not plain or not (0 <= mean <= MAX_PIXEL and 0 < std <= MAX_PIXEL):  # also refuses NaN
        raise ConfigError(
            key,
            value,
            f"{EXPECTED}; its training pixels' mean {mean!r} and std {std!r} must be numbers in [0, 255] and (0, 255]",
        )
    source = state.get("resolved_source")
    if source is not None and source not in RESOLVED_SOURCES:
        raise ConfigError(
            key, value, f"{EXPECTED}; its resolved data source {source!r} is not one of {', '.join(RESOLVED_SOURCES)}"
        )
    return float(mean), float(std)


def epochs_done(ckpt: dict[str, Any]) -> int | None:
    """Training epochs the checkpoint has finished: its fit loop's processed epochs, else
    the ``epochs`` of the project's record (a shipped model keeps no loops), else None.

    Lightning's own ``epoch`` entry is not a count: a checkpoint saved at an epoch's end
    holds that epoch's index (epochs - 1), one saved after ``fit`` the epochs done, so it
    is never read.
    """
    try:
        return ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    except (KeyError, TypeError):
        own = ckpt.get(KEY) if isinstance(ckpt.get(KEY), dict) else {}
        return own.get("epochs")


def _in_range(name: str, v: Any, low: int, high: int, key: str, value: str) -> None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high):
        raise ConfigError(key, value, f"{EXPECTED}; its {name} {v!r} is not an integer in [{low}, {high}]")


def info(ckpt: dict[str, Any], key: str = "ckpt_path", value: str = "?") -> dict[str, Any]:
    """What a checkpoint says about its run, each value checked: ``model`` (one of the
    ``model`` options), ``seed`` (an integer in [0, 2**32 - 1] or None), ``source`` (idx,
    torchvision or None), ``epochs`` (an integer in [0, 100000] or None), ``max_epochs``
    (in [1, 100000] or None), ``precision`` (one of ``PRECISIONS``) and ``overrides`` (a
    list; each checked by :func:`check_overrides`).

    Raises:
        ConfigError: a value out of its set or range.
    """
    from digitpairs.utils.config import MAX_EPOCHS, MAX_SEED, group_options

    parts = {name: ckpt.get(name) for name in (KEY, "datamodule_hyper_parameters", DATA_STATE_KEY)}
    for name, part in parts.items():
        parts[name] = {} if part is None else part
        if not isinstance(parts[name], dict):
            raise ConfigError(key, value, f"{EXPECTED}; its {name} entry is not a mapping")
    own, data_hp, data_state = parts.values()
    about = {
        "model": model_name(ckpt),
        "seed": data_hp.get("seed"),
        "source": data_state.get("resolved_source"),
        "epochs": epochs_done(ckpt),
        "max_epochs": own.get("max_epochs"),
        "precision": str(own.get("precision", "32-true")),
        "overrides": own.get("overrides", []),
    }
    models = group_options("model")
    if about["model"] not in models:
        raise ConfigError(
            key, value, f"{EXPECTED}; its model name {about['model']!r} is not one of {', '.join(models)}"
        )
    _in_range("seed", about["seed"], 0, MAX_SEED, key, value)
    _in_range("epoch count", about["epochs"], 0, MAX_EPOCHS, key, value)
    _in_range("max_epochs", about["max_epochs"], 1, MAX_EPOCHS, key, value)
    if about["source"] is not None and about["source"] not in RESOLVED_SOURCES:
        raise ConfigError(
            key, value, f"{EXPECTED}; its data source {about['source']!r} is not one of {', '.join(RESOLVED_SOURCES)}"
        )
    if about["precision"] not in PRECISIONS:
        raise ConfigError(
            key, value, f"{EXPECTED}; its precision {about['precision']!r} is not one of {', '.join(PRECISIONS)}"
        )
    if not isinstance(about["overrides"], list):
        raise ConfigError(key, value, f"{EXPECTED}; its recorded overrides are not a list")
    about["overrides"] = list(about["overrides"])
    return about
