"""The data dir's single-writer lock, portable between POSIX and Windows.

The lock is an OS file lock (``flock`` on POSIX, ``msvcrt.locking`` on
Windows) on ``<data dir>/capture.lock``. The OS drops it when the process dies,
so a crash never leaves a stale lock. The file also records who holds it
(pid, host, start time, command) for ``capture status`` and error messages.

"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ingest.errors import LockedError, LogError


__all__ = ["LOCK_NAME", "DataDirLock", "LockHolder", "fsync_dir", "probe_lock"]

LOCK_NAME = "capture.lock"

# Windows locks byte ranges and a locked range cannot be read by others: lock
# one byte far past the holder's description so that it stays readable.
_WINDOWS_LOCK_OFFSET = 1 << 30


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable.

    A no-op on Windows, where directories cannot be opened for fsync.

    """
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds the lock, as it wrote itself into the lock file."""

    pid: int | None
    host: str | None
    started_at: str | None
    command: str | None

    def __str__(self) -> str:
        where = f" on {self.host}" if self.host else ""
        since = f" since {self.started_at}" if self.started_at else ""
        what = self.command or "capture"
        return f"{what} (pid {self.pid}{where}{since})"


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(path: Path) -> LockHolder:
    try:
        with path.open("rb") as f:
            info: Any = orjson.loads(f.readline() or b"{}")
    except (OSError, orjson.JSONDecodeError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    return LockHolder(info.get("pid"), info.get("host"), info.get("started_at"), info.get("command"))


class DataDirLock:
    """An exclusive, non-blocking lock on a data dir.

    Use as a context manager, or call :meth:`acquire` and :meth:`release`.

    """

    def __init__(self, data_dir: Path, command: str = "capture ingest") -> None:
        self.path = data_dir / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or fail at once.

        Raises:
            LockedError: another process holds it; the message names it.
            LogError: the lock file cannot be created.

        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as exc:
            raise LogError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        # `capture status` probes by taking the lock for an instant: a few quick
        # tries keep a start that races with a probe from failing.
        for attempt in range(5):
            if _try_lock(fd):
                break
            if attempt < 4:
                time.sleep(0.02)
        else:
            os.close(fd)
            holder = _read_holder(self.path)
            raise LockedError(
                f"another {holder} is writing to {self.path.parent}; stop it first, or use another --data-dir"
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": self.command,
        }
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, orjson.dumps(info) + b"\n")
        os.fsync(fd)
        if created:
            fsync_dir(self.path.parent)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def probe_lock(data_dir: Path) -> LockHolder | None:
    """Return who holds ``data_dir``'s lock, or ``None`` if nobody does."""
    path = data_dir / LOCK_NAME
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        if _try_lock(fd):
            _unlock(fd)
            return None
    finally:
        os.close(fd)
    return _read_holder(path)
