"""The live projector's process: :func:`projections.runner.follow` until its stdin closes.

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
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ingest.errors import CaptureError
from projections.runner import DEFAULT_POLL_INTERVAL, follow


__all__ = ["NICENESS_STEP", "follower_niceness", "main"]

#: How much nicer than ``capture ingest`` the follower runs on POSIX (19 is the floor):
#: as nice as can be, so that under a burst it gets only the CPU time the
#: receive path leaves; when the CPU is idle, niceness costs it nothing.
NICENESS_STEP = 19


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
