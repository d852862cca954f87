"""The live projector's process: tail the log, apply each new batch to SQLite.

Started by :func:`projections.live.start_live_projection` as
``python -m projections.follow --data-dir D --db F [--niceness N]``. It runs at
a lower CPU priority than ``capture ingest`` and shares nothing with it but the files: it
reads the segments (no lock taken) and writes the database under SQLite's own
locking. It stops when its stdin closes (the parent asked, or died), after
applying everything the log holds by then.

"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ingest.errors import CaptureError, ProjectionError
from ingest.log.writer import events_dir
from projections.log_scan import LogTail
from projections.rule import fold
from projections.sqlite import UserTextStore


__all__ = ["DEFAULT_POLL_INTERVAL", "NICENESS_STEP", "follow", "follower_niceness", "main"]

DEFAULT_POLL_INTERVAL = 0.02
#: How much nicer than ``capture ingest`` the follower runs on POSIX (19 is the floor):
#: as nice as can be, so that under a burst it gets only the CPU time the
#: receive path leaves; when the CPU is idle, niceness costs it nothing.
NICENESS_STEP = 19
_BATCH_LINES = 5_000


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _busy(exc: ProjectionError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause)


def follow(
    data_dir: Path,
    db_path: Path,
    should_stop: Callable[[], bool],
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    batch_lines: int = _BATCH_LINES,
) -> None:
    """Apply the log's new lines to the table until ``should_stop()``, then drain and return.

    Each poll reads only what was appended since the last one. When another
    projector moved the stored position (``capture project``, a rebuild's swap)
    or the file was replaced, the tail restarts from the stored position.

    Raises:
        ProjectionError: the database cannot be opened or written.

    """
    store = UserTextStore.open(db_path)
    identity = _identity(db_path)
    tail = LogTail(events_dir(data_dir), store.last_seq)
    try:
        while True:
            stopping = should_stop()
            read = tail.read(batch_lines)
            if read.items or read.invalid:
                from_seq = store.last_seq
                # Folded in place: a refused or failed batch is undone by reload().
                result = fold(store.state, read.items, store)
                try:
                    inserted = store.apply(result, from_seq, read.invalid)
                except ProjectionError as exc:
                    if not _busy(exc):
                        raise
                    inserted = None  # a rebuild's copy held the lock: read again from the stored position
                moved = inserted is None
                if _identity(db_path) != identity:
                    # Deleted or renamed over: continue in the file now at db_path.
                    store.close()
                    store = UserTextStore.open(db_path)
                    identity = _identity(db_path)
                    moved = True
                elif moved:
                    store.reload()
                if moved:
                    tail.seek(store.last_seq)
                if len(read.items) >= batch_lines:
                    continue  # more is waiting: no pause
            elif stopping:
                return
            else:
                time.sleep(poll_interval)
    finally:
        tail.close()
        store.close()


def _stdin_closed() -> Callable[[], bool]:
    closed = threading.Event()

    def wait() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        closed.set()

    threading.Thread(target=wait, name="capture-follow-stdin", daemon=True).start()
    return closed.is_set


def follower_niceness(current: int) -> int:
    """The niceness the follower runs at, for an ingest at ``current``."""
    return min(19, current + NICENESS_STEP)


def _lower_priority(niceness: int | None) -> None:
    """Run nicer than ``capture ingest``, so that its receive path keeps priority under a burst."""
    if not hasattr(os, "setpriority"):
        return  # Windows: the parent starts us BELOW_NORMAL
    current = os.getpriority(os.PRIO_PROCESS, 0)
    target = follower_niceness(current) if niceness is None else niceness
    if target > current:  # never raise it (that needs privileges anyway)
        os.setpriority(os.PRIO_PROCESS, 0, target)


def main(argv: list[str] | None = None) -> int:
    """Run the follower; exit status 0 when stopped, 1 (one line on stderr) on an error."""
    parser = argparse.ArgumentParser(prog="python -m projections.follow")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL)
    parser.add_argument(
        "--niceness",
        type=int,
        default=None,
        help=f"POSIX niceness to run at (default: {NICENESS_STEP} more than now)",
    )
    args = parser.parse_args(argv)
    # The terminal's Ctrl-C reaches the whole process group; the parent stops
    # us through stdin once its log is closed, so everything gets applied.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _lower_priority(args.niceness)
    try:
        follow(args.data_dir, args.db, _stdin_closed(), poll_interval=args.poll_interval)
    except CaptureError as exc:
        print(f"capture live projection stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
