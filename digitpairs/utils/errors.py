"""The project's error types and their one-line exit: never a deep traceback.

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn


class ConfigError(ValueError):
    """A configuration value that cannot be used, found before any work starts.

    Args:
        key: the config key as the user types it, e.g. ``"optim.lr1"``.
        value: the value that was given.
        allowed: what would be accepted, in words, e.g. ``"a number > 0"``.

    ``str(err)`` is one line: ``optim.lr1=-1.0 is not allowed: expected a number > 0``.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: expected {allowed}")


class RunFailed(RuntimeError):
    """A run that started but cannot give a valid result (for example a NaN loss)."""


def require_number(
    key: str,
    value: Any,
    low: float,
    *,
    strict: bool = False,
    high: float | None = None,
    high_strict: bool = True,
    integer: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in the allowed range.

    Args:
        key: the config key, for the message.
        value: what was given (a string from the command line is refused, not compared).
        low: the lower bound; ``strict`` makes it exclusive (``> low``) instead of ``>= low``.
        high: an optional upper bound, exclusive unless ``high_strict`` is False.
        integer: require an ``int`` (``bool`` is refused).

    Raises:
        ConfigError: naming ``key``, ``value`` and the allowed range.
    """
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} {'>' if strict else '>='} {low}"
    if high is not None:
        allowed = f"{kind} in {'(' if strict else '['}{low}, {high}{')' if high_strict else ']'}"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok_type or isinstance(value, bool) or not math.isfinite(value):  # inf and nan are never allowed
        raise ConfigError(key, value, f"a finite {allowed.removeprefix('a ')}" if ok_type else allowed)
    if not (value > low if strict else value >= low):  # also refuses nan
        raise ConfigError(key, value, allowed)
    if high is not None and not (value < high if high_strict else value <= high):
        raise ConfigError(key, value, allowed)


def require_choice(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``.

    Raises:
        ConfigError: naming ``key``, ``value`` and the choices, e.g.
            ``model.trunk='foo' is not allowed: expected one of table1, wide, compact``.
    """
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}")


class JobInterrupted(RunFailed):
    """A run stopped from outside before it finished (SLURM's time-limit warning signal);
    its checkpoint was saved. Recorded with status ``killed``."""


def from_omegaconf(err: Exception) -> ConfigError:
    """An OmegaConf error met while reading the composed config (a key deleted with ``~``,
    a value left ``???``, an interpolation that does not resolve) as a :class:`ConfigError`
    naming the key: ``seed='???' is not allowed: expected a value (Missing mandatory value)``.
    """
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "config"
    message = (getattr(err, "msg", None) or str(err)).strip().splitlines()[0]
    name = type(err).__name__
    if name == "MissingMandatoryValue":
        return ConfigError(str(key), "???", f"a value ({message})")
    if "Interpolation" in name:
        return ConfigError(
            str(key), getattr(err, "value", None) or "${...}", f"an interpolation that resolves ({message})"
        )
    return ConfigError(str(key), "(none)", f"a key of the project's config ({message})")


@contextmanager
def one_line_config_errors() -> Iterator[None]:
    """Turn OmegaConf's errors raised inside the block into :class:`ConfigError` (:func:`from_omegaconf`)."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except OmegaConfBaseException as err:
        raise from_omegaconf(err) from None


def exit_with(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code``.

    The one way the project's entry points stop on bad input (2) or a failed run (1).
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextmanager
def one_line_errors(code: int = 2) -> Iterator[None]:
    """Turn a :class:`ConfigError` raised inside the block into :func:`exit_with` (one line,
    exit ``code``). Any other exception passes unchanged."""
    try:
        yield
    except ConfigError as err:
        exit_with(str(err), code)
