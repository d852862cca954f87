"""The live projector's process: :func:`projections.runner.follow` until its parent says stop, or is gone.

Started by :func:`projections.live.start_live_projection` as
``python -m projections.follow --data-dir D --db F [--niceness N]``. It runs at
a lower CPU priority than ``capture ingest`` and shares nothing with it but the files: it
reads the segments (no lock taken) and writes the database under SQLite's own
locking.

Its stdin is a pipe from the parent, which it reads until its end:

* ``stop T`` (then the end): the parent's log is closed; apply what it holds,
  for at most ``T`` seconds, then exit (status 0, or :data:`EXIT_BEHIND` if
  lines were left for the next ``capture project``);
* the end without ``stop``: the parent is gone (killed, even with SIGKILL: the
  OS closes its end of the pipe). Go on for at most :data:`ORPHAN_DRAIN`
  seconds, as after ``stop``, then stop after the batch in hand.

Either way a watchdog ends the process :data:`EXIT_GRACE` seconds after that
deadline, whatever it is doing (a batch waiting on SQLite's busy timeout, a
rebuild): no follower outlives its parent by more than ``ORPHAN_DRAIN +
EXIT_GRACE`` seconds. Ending there is safe: a batch is one transaction.

"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ingest.errors import CaptureError
from projections.runner import DEFAULT_POLL_INTERVAL, follow


__all__ = [
    "EXIT_BEHIND",
    "EXIT_GRACE",
    "EXIT_WATCHDOG",
    "NICENESS_STEP",
    "ORPHAN_DRAIN",
    "StopSignal",
    "follower_niceness",
    "main",
    "stop_message",
]

#: How much nicer than ``capture ingest`` the follower runs on POSIX (19 is the floor):
#: as nice as can be, so that under a burst it gets only the CPU time the
#: receive path leaves; when the CPU is idle, niceness costs it nothing.
NICENESS_STEP = 19

#: Seconds an orphaned follower goes on applying before it stops.
ORPHAN_DRAIN = 1.0
#: Seconds after its deadline before the watchdog ends the process.
EXIT_GRACE = 2.0
#: Exit status when stopped at the deadline with lines left to apply.
EXIT_BEHIND = 3
#: Exit status when the watchdog ended it.
EXIT_WATCHDOG = 4


def stop_message(timeout: float) -> bytes:
    """What the parent writes on the follower's stdin to stop it, applying what the log holds within ``timeout`` s."""
    return f"stop {timeout:g}\n".encode()


class StopSignal:
    """Reads the follower's stdin in a thread: when to drain, when to give up, when to end at any cost."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self.deadline: float | None = None  # time.monotonic() by which to stop
        self.orphaned = False

    def start(self) -> None:
        threading.Thread(target=self._read, name="capture-follow-stdin", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in sys.stdin.buffer:
                words = line.split()
                if len(words) == 2 and words[0] == b"stop" and self.deadline is None:
                    try:
                        self._stop_by(float(words[1]))
                    except ValueError:
                        self._stop_by(0.0)
        except (OSError, ValueError):
            pass
        if self.deadline is None:
            self.orphaned = True
            self._stop_by(ORPHAN_DRAIN)
        assert self.deadline is not None
        # The watchdog: ends the process even if it is stuck (a busy database).
        time.sleep(max(0.0, self.deadline - time.monotonic()) + EXIT_GRACE)
        print("capture live projection: ended by its watchdog", file=sys.stderr, flush=True)
        os._exit(EXIT_WATCHDOG)

    def _stop_by(self, seconds: float) -> None:
        self.deadline = time.monotonic() + max(0.0, seconds)
        self._requested.set()

    def requested(self) -> bool:
        """Whether to stop once what the log holds is applied."""
        return self._requested.is_set()

    def cancelled(self) -> bool:
        """Whether the deadline passed: stop after the batch in hand."""
        return self.deadline is not None and time.monotonic() > self.deadline


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
    stop = StopSignal()
    stop.start()
    try:
        done = follow(
            args.data_dir,
            args.db,
            stop.requested,
            poll_interval=args.poll_interval,
            cancelled=stop.cancelled,
        )
    except CaptureError as exc:
        print(f"capture live projection stopped: {exc}", file=sys.stderr)
        return 1
    if stop.orphaned:
        print(
            "capture live projection: its capture process is gone; stopping"
            + ("" if done else " (the next `capture project` or ingest applies the rest)"),
            file=sys.stderr,
        )
    return 0 if done else EXIT_BEHIND


if __name__ == "__main__":
    sys.exit(main())
