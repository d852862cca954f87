"""The live projection while ``capture ingest`` runs: a separate follower process.

The ingest process calls :func:`start_live_projection` once its log writer is
open and :meth:`LiveProjection.stop` at shutdown, after closing the writer.
The work happens in another process (:mod:`projections.follow`), never on the
receive path: parsing and SQLite writes there cannot delay a frame or a pong,
and on a 2-core machine a thread would contend for the ingest's GIL. Under a
burst the follower (at a lower priority) falls behind and catches up; its lag
is in :func:`projection_status`. It never outlives the ingest by more than a
few seconds, however the ingest ends (``kill -9`` included: see
:mod:`projections.follow`).

The follower takes no lock on the data dir (``capture.lock`` belongs to the
writer); it reads segments and writes the database under SQLite's locking.

"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ingest.log.writer import LogWriter
from ingest.secrets import without_secrets
from projections.follow import EXIT_BEHIND, EXIT_GRACE, NICENESS_STEP, follower_niceness, stop_message
from projections.runner import DEFAULT_POLL_INTERVAL
from projections.sqlite import UserTextStore, default_db_path, projection_status


__all__ = [
    "NICENESS_STEP",
    "LiveProjection",
    "live_projection_sidecar",
    "projection_status",
    "start_live_projection",
]

log = logging.getLogger("capture.projection")

# The folder holding the top-level packages: the child must import this very code.
_IMPORT_ROOT = str(Path(__file__).resolve().parent.parent)


def _follower_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``python -m projections.follow *args`` on this code.

    The folder holding the packages goes first on the child's ``PYTHONPATH``,
    whatever the working directory and however ``capture`` was installed, and
    ``-P`` keeps ``-m`` from putting the working directory before it (a folder
    holding another checkout's packages would otherwise win).
    """
    env = without_secrets(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-P", "-m", "projections.follow", *args], env


class LiveProjection:
    """A running follower process; stop it with :meth:`stop`."""

    def __init__(self, process: subprocess.Popen[bytes], data_dir: Path, db_path: Path) -> None:
        self.process = process
        self.data_dir = data_dir
        self.db_path = db_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> int:
        """Let the follower apply what the log holds, then end it; return its exit status.

        Close the log writer first, so that "what the log holds" is final.
        A follower still busy after ``timeout`` seconds (far behind after a
        burst) stops after the batch in hand (exit status
        :data:`~projections.follow.EXIT_BEHIND`); the next ``capture ingest``
        or ``capture project`` applies the rest.
        """
        process = self.process
        if process.stdin is not None and not process.stdin.closed:
            try:
                process.stdin.write(stop_message(timeout))
                process.stdin.close()
            except OSError:
                pass  # it is gone already
        try:
            # It bounds itself: its watchdog ends it EXIT_GRACE after the deadline.
            code = process.wait(timeout + EXIT_GRACE + 1.0)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code == EXIT_BEHIND:
            log.warning(
                "the live projection did not catch up within %.0f s; "
                "`capture project` (or the next ingest) applies the rest",
                timeout,
            )
        elif code != 0:
            log.warning("the live projection exited with status %s", code)
        return code


def start_live_projection(
    data_dir: Path, db_path: Path | None = None, *, poll_interval: float = DEFAULT_POLL_INTERVAL
) -> LiveProjection:
    """Start the follower process that keeps ``user_texts`` up to date with the log.

    Returns at once; the follower first catches up from the stored position,
    then applies new lines within about ``poll_interval`` of their append.

    Raises:
        ProjectionError: the database cannot be used (checked here, before the
            process starts, e.g. it needs ``capture rebuild``).

    """
    db_path = db_path or default_db_path(data_dir)
    UserTextStore.open(db_path).close()
    argv, env = _follower_command(
        "--data-dir",
        str(data_dir.resolve()),
        "--db",
        str(db_path.resolve()),
        "--poll-interval",
        str(poll_interval),
    )
    if sys.platform == "win32":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env, creationflags=flags)
    else:
        niceness = follower_niceness(os.getpriority(os.PRIO_PROCESS, 0))
        argv += ["--niceness", str(niceness)]
        # Its own process group, so that the terminal's Ctrl-C does not reach
        # it (the parent stops it once the log is closed), but the same
        # session: Linux's autogroup scheduling gives each session an equal
        # share of the CPU, which would make niceness across sessions moot.
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env, process_group=0)
        # At once, so that its start-up (imports, catching up) already yields to a
        # burst; the follower sets the same value itself should this lose a race.
        try:
            os.setpriority(os.PRIO_PROCESS, process.pid, niceness)
        except OSError:
            pass
    return LiveProjection(process, data_dir, db_path)


def live_projection_sidecar(
    data_dir: Path, db_path: Path | None
) -> Callable[[LogWriter], Callable[[], None]]:
    """Adapt :func:`start_live_projection` to ``ingest.sources.run``'s sidecar hook.

    The returned callable starts the follower once the writer is open and
    returns the function that stops it.
    """

    def start(writer: LogWriter) -> Callable[[], None]:
        projection = start_live_projection(writer.data_dir, db_path)

        def stop() -> None:
            projection.stop()

        return stop

    return start
