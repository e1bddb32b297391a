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
        raise ConfigError(
            key,
            str(folder),
            f"a folder that holds no sweep yet; it holds {len(jobs)} job folder(s) "
            f"(e.g. {jobs[0].name}), which a new sweep would overwrite: choose another {key}",
        )
    if not multirun and (folder / "metrics.json").is_file():
        raise ConfigError(
            key,
            str(folder),
            f"a folder that holds no finished run; it has a metrics.json, which a "
            f"new run would overwrite: choose another {key}",
        )


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


HYDRA_MODES = {
    "-r": "--run",
    "--run": "--run",
    "-m": "--multirun",
    "--multirun": "--multirun",
    "-c": "--cfg",
    "--cfg": "--cfg",
    "--info": "--info",
    "-sc": "--shell-completion",
    "--shell-completion": "--shell-completion",
}


WITH_VALUE = {
    "-c",
    "--cfg",
    "-p",
    "--package",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--experimental-rerun",
    "-sc",
    "--shell-completion",
    "--info",
}


def _quoted_key(message: str, default: str) -> str:
    import re

    found = re.search(r"'([\w.+~/@-]+)'", message)
    return found.group(1).lstrip("+~") if found else default


def _first_value(override) -> str:
    """The first value of a sweep override; an ``interval(low, high)`` (a search's space) gives ``low``."""
    from hydra.core.override_parser.types import IntervalSweep

    value = override.value()
    return str(value.start) if isinstance(value, IntervalSweep) else next(override.sweep_string_iterator())


def check_command_line(argv: list[str], config_name: str = "train", conf_dir: Path = CONF_DIR) -> None:
    """Check a ``train.py`` or ``evaluate.py`` command line as Hydra will read it, before
    Hydra runs, so that its refusals are one line (Hydra prints several, or a traceback):

    - at most one of Hydra's modes (``--run``, ``--multirun``, ``--cfg``, ``--info``,
      ``--shell-completion``);
    - every override in Hydra's grammar;
    - the config composes with them (a sweep with its first value): no unknown key, no
      ``+`` on a key that exists, no unknown group option.

    Raises:
        ConfigError: naming the flag, the override or the key, and Hydra's reason.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a in ("-h", "--help", "-hh", "--hydra-help") for a in argv):
        return  # Hydra prints its help
    modes = sorted({HYDRA_MODES[a] for a in argv if a in HYDRA_MODES})
    if len(modes) > 1:
        raise ConfigError(
            "flags", " ".join(modes), "only one of --run, --multirun, --cfg, --info and --shell-completion"
        )
    args, skip = [], False
    for a in argv:  # the overrides: every argument that is not a flag or a flag's value
        if not skip and not a.startswith("-"):
            args.append(a)
        skip = a in WITH_VALUE and not skip
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        try:
            parsed += parser.parse_overrides([arg])
        except Exception as err:  # noqa: BLE001 - Hydra's OverrideParseException and its kin
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            key = arg.split("=", 1)[0].lstrip("+~") if "=" in arg else arg
            raise ConfigError(
                key, arg.split("=", 1)[1] if "=" in arg else "", f"Hydra's override grammar ({first})"
            ) from None
    single = [o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={_first_value(o)}" for o in parsed]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=single, return_hydra_config=True)
    except Exception as err:  # noqa: BLE001 - Hydra's composition errors: one line, with the key it names
        text = str(err).strip()
        first = " ".join(text.splitlines()[:2]) if text else type(err).__name__
        key = _quoted_key(text, "overrides")
        value = next((o.input_line.split("=", 1)[-1] for o in parsed if o.key_or_group == key), "")
        raise ConfigError(key, value, f"a key and value the config takes ({first})") from None
    finally:
        GlobalHydra.instance().clear()
    _check_intervals(parsed, str(cfg.hydra.sweeper.get("_target_", "")))


def _check_intervals(parsed: list, sweeper: str) -> None:
    """Refuse an ``interval(...)`` sweep for a sweeper that enumerates its values (Hydra's
    basic sweeper and its subclasses): only a search draws values from an interval."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.types import IntervalSweep
    from hydra.utils import get_class

    intervals = [o for o in parsed if o.is_sweep_override() and isinstance(o.value(), IntervalSweep)]
    if not intervals:
        return
    try:
        enumerates = issubclass(get_class(sweeper), BasicSweeper)
    except Exception:  # noqa: BLE001 - a sweeper that does not import: Hydra reports it itself
        return
    if enumerates:
        o = intervals[0]
        raise ConfigError(
            o.get_key_element(),
            o.input_line.split("=", 1)[1],
            "a list (a,b,c) or range(start,stop,step): interval(...) is a search's space (hparams_search=optuna)",
        )
