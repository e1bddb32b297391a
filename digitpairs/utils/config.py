"""Config plumbing at the edge: the project root resolver and checks of group choices.

This module imports neither torch nor Lightning, so ``train.py`` can check its command
line in well under a second.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from digitpairs.utils.errors import ConfigError
from digitpairs.utils.io import PROJECT_ROOT

CONF_DIR = PROJECT_ROOT / "conf"


def config_groups(conf_dir: Path = CONF_DIR) -> set[str]:
    """The project's config groups: the folders of ``conf/`` (Hydra's own ``hydra`` excluded)."""
    return {p.name for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"} if conf_dir.is_dir() else set()


def zero_pad(value: int | str, width: int | str) -> str:
    """``${zpad:7,3}`` -> ``"007"``: numbers that sort as text (job folders, run names)."""
    return str(value).zfill(int(width))


def register_resolvers() -> None:
    """Register ``${project_root:}``, the folder holding ``train.py`` and ``conf/``, and
    ``${zpad:value,width}`` (:func:`zero_pad`).

    Data and output paths are resolved against the project root, not against the
    working directory (Hydra 1.3 keeps it; see ``docs/design.md``). Safe to call more than once.
    """
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("zpad"):
        OmegaConf.register_new_resolver("zpad", zero_pad)


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The selectable options of a config group: ``conf/<group>/*.yaml`` not starting with ``_``."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml") if not p.stem.startswith("_"))


def check_group_choices(overrides: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Check ``group=option`` command-line overrides (sweeps included) before Hydra runs.

    Args:
        overrides: command-line arguments, e.g. ``["-m", "model=ws,foo", "optim.lr1=0.1"]``.

    Raises:
        ConfigError: naming the group, the unknown option and the allowed options, e.g.
            ``model='foo' is not allowed: expected one of aux, convnet, ws, ws_aux``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in overrides if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # a malformed override: Hydra reports it itself, with its position
        return
    groups = config_groups(conf_dir)
    for override in parsed:
        group = override.key_or_group
        if group not in groups or override.is_delete() or override.package:
            continue
        allowed = group_options(group, conf_dir)
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if value is not None and str(value) not in allowed:
                raise ConfigError(group, str(value), f"one of {', '.join(allowed)} (files in conf/{group}/)")


def finished_jobs(sweep_dir: Path) -> list[Path]:
    """The job folders a sweep folder already holds (those with a ``metrics.json`` or
    Hydra's ``.hydra/``)."""
    if not sweep_dir.is_dir():
        return []
    return sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file() or (p / ".hydra").is_dir())


def check_output_dir(key: str, folder: Path, multirun: bool) -> None:
    """Refuse to write a run or a sweep into a folder that already holds one.

    Args:
        key: ``hydra.run.dir`` or ``hydra.sweep.dir``, for the message.
        folder: the folder.
        multirun: a sweep (its folder must hold no job yet) or a single run (its folder
            must hold no ``metrics.json``).

    Raises:
        ConfigError: naming the key, the folder and what it already holds.
    """
    if multirun and (jobs := finished_jobs(folder)):
        raise ConfigError(key, str(folder), f"a folder that holds no sweep yet; it holds {len(jobs)} job folder(s) "
                          f"(e.g. {jobs[0].name}), which a new sweep would overwrite: choose another {key}")
    if not multirun and (folder / "metrics.json").is_file():
        raise ConfigError(key, str(folder), f"a folder that holds no finished run; it has a metrics.json, which a "
                          f"new run would overwrite: choose another {key}")


def check_output_dirs(argv: list[str]) -> None:
    """:func:`check_output_dir` for a ``hydra.run.dir=`` or ``hydra.sweep.dir=`` given on
    the command line, before Hydra writes anything into it (folders named by the time, the
    default, are always new).

    Raises:
        ConfigError: see :func:`check_output_dir`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = "-m" in argv or "--multirun" in argv
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a malformed override: Hydra reports it itself
        return
    for override in parsed:
        value = override.value() if not override.is_sweep_override() else None
        if override.key_or_group == key and isinstance(value, str) and "${" not in value:
            check_output_dir(key, Path(value).expanduser().resolve(), multirun)
