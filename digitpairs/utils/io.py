"""Files and paths: atomic writes and paths relative to the project.

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding train.py, conf/ and data/


def project_path(path: str | Path, root: str | Path = PROJECT_ROOT) -> Path:
    """``path`` itself if absolute, else ``root / path``.

    Data and checkpoint paths in configs and on command lines are relative to the project,
    not to the working directory (Hydra 1.3 keeps the working directory; ``conf/``
    resolves ``paths.root`` to the project).
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A process killed while writing leaves the previous file whole (``os.replace`` is atomic
    on one file system), and parallel readers never see half a file. The temporary name
    holds the process id, so two processes never share one. The parent folder is created.

    Returns:
        ``path``, as a ``Path``.

    Raises:
        whatever ``write`` raises (the temporary file is then removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, atomically. Float ``nan`` becomes ``null``; other
    values that JSON lacks (tensors, paths) become their ``str``."""
    return write_text(path, json.dumps(_plain(payload), indent=2, default=str))
