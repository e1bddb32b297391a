"""Files and paths: atomic writes, paths relative to the project, and folder locks.

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: folders are used unlocked
    fcntl = None

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


# ---- folders in use ------------------------------------------------------------------
LOCK_FILE = ".lock"  # in a run or sweep folder: the lock of the process that writes there

# errno values of a file system that has no working flock (some NFS and Lustre mounts):
# the folder is then used without a lock, as before locks existed
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


class FolderInUse(RuntimeError):
    """Another process holds the lock of a folder (:class:`FolderLock`).

    Attributes:
        folder: the folder.
        holder: the process id its lock file names (``"?"`` while unknown).
    """

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = Path(folder), holder
        super().__init__(f"process {holder} holds the lock of {folder} ({Path(folder) / LOCK_FILE})")


@dataclass
class _Held:
    fd: int | None  # None: a file system without locks
    depth: int
    pid: int


CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # a lock file's descriptor never goes to a program started by exec
PROBE_GRACE_S = 0.5  # how long acquire() retries before it refuses

_HELD: dict[str, _Held] = {}  # the folder locks this process holds, by lock file (a process-wide resource)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "?"


class FolderLock:
    """An exclusive lock on a run or sweep folder: ``fcntl.flock`` on ``<folder>/.lock``,
    which holds the owner's process id.

    The kernel releases it when the process ends, however it ends (SIGKILL and the OOM
    killer included), so a crashed run never leaves a stale lock. It is reentrant within
    one process (``train.py`` takes it before Hydra writes into the folder, the run takes
    it again), and a forked child does not inherit the right to take it again. The lock
    file itself stays in the folder (removing it would let two processes lock two files).
    POSIX only (``fcntl``); on a file system without ``flock`` the folder is used unlocked.

    Args:
        folder: the folder; it is created (with its parents) when the lock is taken.

    Raises (from :meth:`acquire`):
        FolderInUse: another process holds the lock.
        OSError: the folder cannot be created or the lock file written (a path through a
            file, a read-only file system, a full disk, no permission).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE

    def _key(self) -> str:
        return os.path.realpath(self.path)

    def held_here(self) -> bool:
        """Whether this process holds the lock (taken, not released)."""
        held = _HELD.get(self._key())
        return held is not None and held.pid == os.getpid()

    def holder(self) -> str | None:
        """The process id (a string, ``"?"`` if unknown) of another process that holds the
        lock, else None. Creates nothing: a folder without a lock file is free."""
        if self.held_here() or fcntl is None or not self.path.is_file():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError:  # no flock on this file system
            return None
        finally:
            os.close(fd)  # also releases the shared lock just taken
        return None

    def acquire(self, wait_s: float = 0.0) -> FolderLock:
        """Take the lock (again, if this process holds it already); returns ``self``.

        Args:
            wait_s: seconds to wait for another process to release it (at least
                ``PROBE_GRACE_S``, so that another process's :meth:`holder`, which holds the
                lock for an instant, never makes it fail).
        """
        if self.held_here():
            _HELD[self._key()].depth += 1
            return self
        created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | CLOEXEC, 0o644)
        deadline = time.monotonic() + max(wait_s, PROBE_GRACE_S)
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl")
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderInUse(self.folder, holder) from None
        except OSError as err:
            os.close(fd)
            if err.errno not in NO_LOCKS:
                raise
            fd = None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as err:  # a full disk: leave nothing behind
                err.filename = err.filename or str(self.path)
                with contextlib.suppress(OSError):
                    self.path.unlink()
                    if created:
                        self.folder.rmdir()
                os.close(fd)
                raise
        _HELD[self._key()] = _Held(fd, 1, os.getpid())
        return self

    def release(self) -> None:
        """Give the lock back once for each :meth:`acquire`; the last one unlocks it."""
        key = self._key()
        held = _HELD.get(key)
        if held is None or held.pid != os.getpid():
            return
        held.depth -= 1
        if held.depth > 0:
            return
        del _HELD[key]
        if held.fd is not None:
            os.close(held.fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# errno values that say the storage, not the program, failed: a read-only file system, a
# full disk or quota, no permission, a file where a folder belongs, an I/O error
STORAGE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EIO,
        errno.EFBIG,
    }
)


def storage_error(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is an ``OSError`` of the storage
    (:data:`STORAGE_ERRNOS`)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def storage_reason(err: BaseException, folder: str | Path | None = None) -> str:
    """One line for a storage error (or any ``OSError``): its reason and the path it names (the one inside
    ``folder`` when it names two), e.g. ``No space left on device: /x/run/checkpoints/.last.ckpt.7.tmp``;
    a path through a file is ``/x/afile is a file``."""
    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS):
        seen = seen.__cause__ or seen.__context__
    seen = seen or (err if isinstance(err, OSError) else None)
    if seen is None:
        return " ".join(f"{type(err).__name__}: {err}".split())
    names = [n for n in (seen.filename, seen.filename2) if n]
    inside = [n for n in names if folder is not None and str(n).startswith(str(folder))]
    name = (inside or names or [""])[0]
    if seen.errno in (errno.EEXIST, errno.ENOTDIR) and name:
        blocker = Path(name)
        while not blocker.exists() and blocker != blocker.parent:
            blocker = blocker.parent
        for part in [blocker, *blocker.parents]:
            if part.exists() and not part.is_dir():
                return f"{part} is a file"
    reason = seen.strerror or type(seen).__name__
    return f"{reason}: {name}" if name else reason
