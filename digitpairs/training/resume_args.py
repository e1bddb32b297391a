"""``train.py ckpt_path=<ckpt>``: the command line of a resumed run, before Hydra composes it.

Imports neither torch nor Lightning until a ``ckpt_path`` is given, so that ``train.py``
checks its command line quickly.
"""

from __future__ import annotations

from digitpairs.utils.errors import ConfigError

CKPT_KEYS = ("ckpt_path", "+ckpt_path", "++ckpt_path")


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line of a resumed run: the checkpoint's own overrides, then the user's.

    ``ckpt_path=X`` (also written ``+ckpt_path=X``) makes the run continue the
    checkpoint's run: its recorded overrides (model, seed, epochs, ...) come first, a key
    the user gives replaces the recorded one, and ``data.source`` is pinned to the
    source the checkpoint resolved (so ``auto`` draws the same pairs). Without
    ``ckpt_path`` (or with ``ckpt_path=null``) ``argv`` is returned unchanged.

    Raises:
        ConfigError: ``ckpt_path`` is not a checkpoint of this project, or is swept.
    """
    found = [a for a in argv if "=" in a and a.split("=", 1)[0] in CKPT_KEYS]
    if not found:
        return argv
    value = found[-1].split("=", 1)[1]
    if value in ("", "null", "None"):
        return [a for a in argv if a not in found]
    if "," in value:
        raise ConfigError("ckpt_path", value, "one checkpoint file (a sweep of checkpoints is not supported)")
    from digitpairs.training import checkpoint as ckpt_io

    ckpt = ckpt_io.load(value, check_class=False)  # the class is checked when the run starts
    about = ckpt_io.info(ckpt)
    user = [a for a in argv if a not in found]
    user_keys = {_key(a) for a in user if "=" in a}
    recorded = about["overrides"] or [f"model={about['model']}", f"seed={about['seed']}"]
    base = [a for a in recorded if _key(a) not in user_keys and _key(a) not in ("ckpt_path", "data.source")]
    if "data.source" not in user_keys and about["source"]:
        base.append(f"data.source={about['source']}")
    return [*base, *user, f"ckpt_path={value}"]
