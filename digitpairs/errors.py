"""The project's error types: one line for the user, never a deep traceback."""

from __future__ import annotations

from typing import Any


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
