"""Config plumbing at the edge: the project root resolver and checks of group choices.

This module imports neither torch nor Lightning, so ``train.py`` can check its command
line in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from digitpairs.utils.errors import ConfigError
from digitpairs.utils.io import LOCK_FILE, PROJECT_ROOT, FolderInUse, FolderLock, storage_reason

CONF_DIR = PROJECT_ROOT / "conf"
# The ranges of keys that every run checks (digitpairs.training.run.check_config) and that a
# checkpoint's or a record's values are checked against.
MAX_SEED = 2**32 - 1  # seed_everything seeds NumPy, whose seeds are 32-bit
MAX_THREADS = 1024
MAX_EPOCHS = 100_000


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


RETRYABLE = ("invalid", "failed")  # a run folder whose record says so takes a new run: nothing finished is lost


def run_status(folder: Path) -> str | None:
    """The ``status`` that ``<folder>/metrics.json`` records: None without the file,
    ``"unreadable"`` when it is not a JSON object with a string status."""
    import json

    try:
        record = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unreadable"
    status = record.get("status") if isinstance(record, dict) else None
    return status if isinstance(status, str) else "unreadable"


def in_use(key: str, folder: Path, holder: str) -> ConfigError:
    """The refusal of a folder whose lock another process holds."""
    return ConfigError(
        key,
        str(folder),
        f"a folder that no other process is writing to; process {holder} holds its lock "
        f"({folder / LOCK_FILE}): wait for it to end, or choose another {key}",
    )


def unwritable(key: str, folder: Path, err: BaseException) -> ConfigError:
    """The refusal of a folder that cannot be created or written (a file on its path, a
    read-only file system, a full disk, no permission), naming the reason."""
    reason = storage_reason(err, folder)
    if reason.endswith(" is a file"):
        return ConfigError(key, str(folder), f"a folder; {reason}")
    return ConfigError(key, str(folder), f"a folder that can be written ({reason})")


def unresolvable(key: str, text: object, err: BaseException) -> ConfigError:
    """The refusal of a folder name whose interpolation cannot be resolved (``${model.name}``,
    a key no config holds), naming the interpolation's own reason."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ConfigError(key, str(text), f"a folder name whose interpolations resolve ({reason})")


def resolved(cfg: DictConfig, key: str, refuse: type[Exception]) -> Any:
    """The value of ``key`` in ``cfg`` (a folder key: ``hydra.run.dir``, ``hydra.sweep.subdir``),
    resolved.

    Raises:
        ConfigError: an interpolation error of type ``refuse`` (:func:`unresolvable`, with
            the key's unresolved text).
        omegaconf.errors.OmegaConfBaseException: any other resolution error, unchanged.
    """
    try:
        return OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except refuse as err:
        parent, name = key.rsplit(".", 1)
        text = OmegaConf.to_container(OmegaConf.select(cfg, parent), resolve=False)[name]
        raise unresolvable(key, text, err) from None


def check_output_dir(key: str, folder: Path, multirun: bool) -> None:
    """Refuse to write a run or a sweep into a folder that another process is writing to,
    that is a file, or that already holds a result. Writes nothing.

    Args:
        key: ``hydra.run.dir`` or ``hydra.sweep.dir``, for the message.
        folder: the folder.
        multirun: a sweep (its folder must hold no job yet) or a single run (its folder
            must hold no finished run: a ``metrics.json`` whose status is ``invalid`` or
            ``failed`` is a run that may be retried in its folder; ``ok``, ``killed``
            (a checkpoint to resume) or an unreadable one is refused).

    Raises:
        ConfigError: naming the key, the folder and what it holds, or the process that
            holds its lock.
    """
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(key, str(folder), f"a folder; {ancestor} is a file")
    holder = FolderLock(folder).holder()
    if holder is not None:
        raise in_use(key, folder, holder)
    if multirun and (jobs := finished_jobs(folder)):
        raise ConfigError(
            key,
            str(folder),
            f"a folder that holds no sweep yet; it holds {len(jobs)} job folder(s) "
            f"(e.g. {jobs[0].name}), which a new sweep would overwrite: choose another {key}",
        )
    status = None if multirun else run_status(folder)
    if status is not None and status not in RETRYABLE:
        what = "a metrics.json that cannot be read" if status == "unreadable" else f"a run with status {status}"
        resume = (
            f" (resume it into a new folder: python train.py ckpt_path={folder / 'checkpoints' / 'last.ckpt'})"
            if status == "killed" and (folder / "checkpoints" / "last.ckpt").is_file()
            else ""
        )
        raise ConfigError(
            key,
            str(folder),
            f"a folder that holds no finished run; it holds {what} (metrics.json), which a new run "
            f"would overwrite: choose another {key}{resume}",
        )


def claim_output_dir(key: str, folder: Path, multirun: bool) -> FolderLock:
    """:func:`check_output_dir`, then create ``folder`` and take its lock
    (:class:`~digitpairs.utils.io.FolderLock`) for this process: a second process that
    claims it is refused until this one ends (or releases it).

    Returns:
        the lock, held (reentrant: a process may claim its own folder again).

    Raises:
        ConfigError: see :func:`check_output_dir`; the folder cannot be created or
            written (``expected a folder that can be written (No space left on device: ...)``).
    """
    if not FolderLock(folder).held_here():
        check_output_dir(key, folder, multirun)
    try:
        return FolderLock(folder).acquire()
    except FolderInUse as err:
        raise in_use(key, folder, err.holder) from None
    except OSError as err:
        raise unwritable(key, folder, err) from None


def check_writable_ancestor(key: str, folder: Path) -> None:
    """Refuse a folder whose nearest existing ancestor is a file or cannot be written (a
    read-only file system, a full disk): one file is written there and removed. For a
    folder whose exact name is not known yet (named by the time it starts).

    Raises:
        ConfigError: see :func:`unwritable`.
    """
    import contextlib
    import os

    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(key, str(folder), f"a folder; {ancestor} is a file")
    probe = ancestor / f".write-test.{os.getpid()}"
    try:
        with probe.open("wb") as f:
            f.write(b"0")
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(key, str(folder), f"a folder that can be written ({reason}: {ancestor})") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_output_dirs(argv: list[str]) -> None:
    """:func:`check_output_dir` for a ``hydra.run.dir=`` or ``hydra.sweep.dir=`` given on
    the command line, before Hydra writes anything into it (folders named by the time, the
    default, are always new). Writes nothing.

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


def claim_output_dirs(cfg: DictConfig, multirun: bool) -> FolderLock | None:
    """Before Hydra writes anything: claim (:func:`claim_output_dir`) the run folder
    (``hydra.run.dir``) of ``cfg``, the config that :func:`check_command_line` composed
    (``hydra`` node included), so that Hydra's own files (``.hydra/``, the log) never go
    into another run's folder. A sweep folder is only checked here (:func:`check_output_dir`
    and :func:`check_writable_ancestor`: nothing is created before the launcher accepts its
    settings); the sweeper claims it before it writes anything. So is a folder whose name
    holds interpolations (the time, by default), which cannot be known exactly before
    Hydra names it: its nearest existing ancestor is checked, and the run claims it.

    Returns:
        the lock of a run folder, held until this process ends, or None.

    Raises:
        ConfigError: the folder is in use, a file, unwritable or holds a result, or its
            name interpolates a key that no config holds (``${model.name}``).
    """
    from omegaconf.errors import InterpolationKeyError

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        # a key that no config holds is refused here (Hydra would fail with a traceback)
        raw = resolved(cfg, key, refuse=InterpolationKeyError)
        node = cfg.hydra.sweep if multirun else cfg.hydra.run
        text = str(OmegaConf.to_container(node, resolve=False)["dir"])
        folder = Path(str(raw)).expanduser().resolve() if raw is not None else None
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - resolved by Hydra at run time (${hydra:...}): the run or the sweeper checks it
        return None
    if folder is None:
        return None
    exact = "${" not in text.replace("${project_root:}", "")
    if exact and not multirun:
        return claim_output_dir(key, folder, multirun)
    if exact:
        check_output_dir(key, folder, multirun)
    check_writable_ancestor(key, folder)
    return None


PRINT_ONLY = {"-c", "--cfg", "--info", "-sc", "--shell-completion"}  # Hydra's flags that run nothing


def claim_command_line_dirs(composed: DictConfig | None, argv: list[str]) -> FolderLock | None:
    """:func:`claim_output_dirs` for the command line ``argv`` of an entry point (``train.py``,
    ``evaluate.py``), whose config :func:`check_command_line` composed: nothing for a
    command that only prints (``--cfg``, ``--info``, ...).

    Raises:
        ConfigError: see :func:`claim_output_dirs`.
    """
    if composed is None or PRINT_ONLY & set(argv):
        return None
    return claim_output_dirs(composed, multirun=bool({"-m", "--multirun"} & set(argv)))


def job_folder(hydra_context, config: DictConfig, overrides: list[str], idx: int) -> tuple[Path, dict[str, Any]]:
    """The folder that Hydra gives job ``idx`` of a sweep (``hydra.sweep.dir``/``hydra.sweep.subdir``,
    resolved as the job resolves it), and the job's ``model`` and ``seed``.

    Args:
        hydra_context: the sweep's ``HydraContext`` (its config loader composes the job).
        config: the sweep's config.
        overrides: the job's overrides.
        idx: its number in the sweep (``hydra.job.num``).

    Raises:
        ConfigError: ``hydra.sweep.dir`` or ``hydra.sweep.subdir`` does not resolve for
            this job (an interpolation of a key that no config holds).
    """
    import os

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    from omegaconf.errors import InterpolationResolutionError

    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(cfg)
    try:
        # the job's own config: any interpolation that fails (e.g. ${model.name}) is refused
        base, subdir = (resolved(cfg, f"hydra.sweep.{k}", InterpolationResolutionError) for k in ("dir", "subdir"))
        folder = os.path.join(str(base), str(subdir))
        about = {
            "model": OmegaConf.select(cfg, "hydra.runtime.choices.model", default=None),
            "seed": OmegaConf.select(cfg, "seed", default=None),
        }
        return Path(os.path.abspath(folder)), about
    finally:
        hydra_config.cfg = previous


def numbered_subdir(config: DictConfig, jobs: list[list[str]]) -> bool:
    """Whether every job of a sweep gets a folder of its own by construction: its
    ``hydra.sweep.subdir`` interpolates the job's number (``hydra.job.num``, as the default
    ``${zpad:${hydra.job.num},3}``, or ``hydra.job.id``) and no job overrides a ``hydra.``
    key (which could move it)."""
    try:
        text = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))
    except Exception:  # noqa: BLE001
        return False
    numbered = "${" in text and ("hydra.job.num" in text or "hydra.job.id" in text)
    return numbered and not any(o.lstrip("+~").startswith("hydra.") for job in jobs for o in job)


def check_job_folders(hydra_context, config: DictConfig, jobs: list[list[str]], first_idx: int = 0) -> None:
    """Refuse a sweep in which two jobs would write into one folder (a ``hydra.sweep.subdir``
    that does not vary between them), before any job runs.

    A subdir numbered by the job (:func:`numbered_subdir`) is accepted at once; any other is
    resolved for every job (:func:`job_folder`, about 0.2 s a job).

    Args:
        jobs: every job's overrides, in the sweep's order (job ``first_idx + i``).

    Raises:
        ConfigError: naming ``hydra.sweep.subdir``, its value and the first two jobs that
            share a folder; or a folder name that does not resolve (:func:`job_folder`).
    """
    if not jobs:
        return
    if len(jobs) < 2 or numbered_subdir(config, jobs):
        job_folder(hydra_context, config, jobs[0], first_idx)  # its folder's name resolves
        return
    seen: dict[Path, int] = {}
    for i, overrides in enumerate(jobs):
        idx = first_idx + i
        folder, _ = job_folder(hydra_context, config, overrides, idx)
        if folder in seen:
            text = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
            raise ConfigError(
                "hydra.sweep.subdir",
                str(text),
                f"a value that differs between a sweep's jobs (e.g. ${{hydra.job.num}}); jobs {seen[folder]} "
                f"and {idx} would both write into {folder}, and one would overwrite the other's results",
            )
        seen[folder] = idx


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


def check_command_line(argv: list[str], config_name: str = "train", conf_dir: Path = CONF_DIR) -> DictConfig | None:
    """Check a ``train.py`` or ``evaluate.py`` command line as Hydra will read it, before
    Hydra runs, so that its refusals are one line (Hydra prints several, or a traceback):

    - at most one of Hydra's modes (``--run``, ``--multirun``, ``--cfg``, ``--info``,
      ``--shell-completion``);
    - every override in Hydra's grammar;
    - the config composes with them (a sweep with its first value): no unknown key, no
      ``+`` on a key that exists, no unknown group option.

    Returns:
        the composed config, ``hydra`` node included (a sweep's with its first values),
        or None for ``--help``.

    Raises:
        ConfigError: naming the flag, the override or the key, and Hydra's reason.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a in ("-h", "--help", "-hh", "--hydra-help") for a in argv):
        return None  # Hydra prints its help
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
    return cfg


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
