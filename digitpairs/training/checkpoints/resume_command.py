"""``train.py ckpt_path=<ckpt>``: the command line of a resumed run, before Hydra composes it.

Imports neither torch nor Lightning until a ``ckpt_path`` is given, so that ``train.py``
checks its command line quickly.
"""

from __future__ import annotations

from digitpairs.utils.errors import ConfigError

CKPT_KEYS = ("ckpt_path", "+ckpt_path", "++ckpt_path")


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def _config_keys(choices: list[str]) -> dict:
    """The project's composed config (``conf/train.yaml`` with the group ``choices``) as a
    plain dict, interpolations unresolved: the keys a checkpoint may set again."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from digitpairs.utils.config import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=choices)
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=False)


def _check_against_config(overrides: list[str], path: str) -> None:
    """Every plain ``key=value`` of ``overrides`` names a leaf of the project's composed
    config (groups chosen as ``overrides`` choose them). Nothing is instantiated.

    Raises:
        ConfigError: a key that the project's config does not have, or that holds a group.
    """
    from digitpairs.utils.config import config_groups

    groups = config_groups()
    choices = [o for o in overrides if _key(o) in groups]
    config = _config_keys(choices)
    for override in overrides:
        key = _key(override)
        if key in groups:
            continue
        node: object = config
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError or isinstance(node, (dict, list)):
            raise ConfigError(
                "ckpt_path",
                path,
                f"{ckpt_io_expected()} with the project's own keys and plain values; "
                f"it records the override {override!r}: no such key in the project's config",
            )


def ckpt_io_expected() -> str:
    from digitpairs.training.checkpoints.store import EXPECTED

    return EXPECTED


def hydra_quote(value: str) -> str:
    """``value`` as one quoted string of Hydra's override grammar: a path holding ``=``,
    ``,``, quotes or spaces (as Hydra's own ``override_dirname`` folders do) stays one value."""
    import re

    # Hydra reads a backslash as an escape only before a quote or at the end of the string
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    escaped = escaped.replace("${", "\\${")  # OmegaConf would read ${...} as an interpolation
    return "'" + escaped + "'"


def ckpt_path_value(raw: str) -> str:
    """The checkpoint path a ``ckpt_path=`` argument gives: the text itself when it names a
    file, else the text parsed by Hydra's grammar (quoted: ``ckpt_path='a,b/last.ckpt'``)."""
    from pathlib import Path

    if Path(raw).is_file():
        return raw
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(f"ckpt_path={raw}")
    except Exception:  # noqa: BLE001 - not Hydra's grammar: the text as given
        return raw
    if override.is_sweep_override():
        raise ConfigError(
            "ckpt_path",
            raw,
            "one checkpoint file (a sweep of checkpoints is not supported; quote a path that holds a comma)",
        )
    value = override.value()
    return value if isinstance(value, str) else raw


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line of a resumed run: the checkpoint's own overrides, then the user's.

    ``ckpt_path=X`` (also written ``+ckpt_path=X``) makes the run continue the
    checkpoint's run: its recorded overrides (model, seed, epochs, ...) come first, a key
    the user gives replaces the recorded one, and ``data.source`` is pinned to the
    source the checkpoint resolved (so ``auto`` draws the same pairs). Without
    ``ckpt_path`` (or with ``ckpt_path=null``) ``argv`` is returned unchanged.

    A checkpoint is data: only overrides that
    :func:`~digitpairs.training.checkpoints.store.override_problem` accepts, and whose keys the
    project's composed config has, are applied again; anything else refuses the
    checkpoint, before anything it names is imported or called.

    The checkpoint is checked whole before Hydra composes anything: its integrity and
    values (:func:`~digitpairs.training.checkpoints.store.load`), that it can resume a run
    (:func:`~digitpairs.training.checkpoints.resume.check_resumable`: a shipped model cannot), and that
    its weights and optimiser state fit the model its hyperparameters build.

    Raises:
        ConfigError: ``ckpt_path`` is not a checkpoint of this project, is damaged, holds
            a value out of its range, cannot resume a run, is swept, or records an
            override that may not be applied again.
    """
    found = [a for a in argv if "=" in a and a.split("=", 1)[0] in CKPT_KEYS]
    if not found:
        return argv
    raw = found[-1].split("=", 1)[1]
    if raw in ("", "null", "None"):
        return [a for a in argv if a not in found]
    value = ckpt_path_value(raw)
    from digitpairs.training.checkpoints import store as ckpt_io
    from digitpairs.training.checkpoints.resume import check_fits, check_resumable

    ckpt = ckpt_io.load(value, check_class=False)  # its integrity, its values and its recorded overrides
    check_resumable(ckpt, value=value)  # a run's checkpoint (not a shipped model's, not another program's)
    check_fits(ckpt, ckpt_io.build_model(ckpt, value=value), value=value)  # its class, weights and optimiser
    about = ckpt_io.info(ckpt)
    user = [a for a in argv if a not in found]
    user_keys = {_key(a) for a in user if "=" in a}
    fallback = [f"model={about['model']}"] + ([f"seed={about['seed']}"] if about["seed"] is not None else [])
    recorded = about["overrides"] or fallback
    recorded = [a for a in recorded if _key(a) not in ("ckpt_path", "data.source")]
    if about["source"]:
        recorded.append(f"data.source={about['source']}")
    ckpt_io.check_overrides(recorded, value=value)  # the fallbacks too: a model name, a seed, a source
    _check_against_config(recorded, value)
    base = [a for a in recorded if _key(a) not in user_keys]
    return [*base, *user, f"ckpt_path={hydra_quote(value)}"]
