"""The log tally in a process of its own, at the lowest priority: frames by type without the run's GIL.

Counting a flood's lines (:class:`~ingest.log.tally.LogTally`, about 1.4 µs a
line) in a thread of the writing process would take that time from its
receive paths, which hold the same GIL. So it runs as
``python -m ingest.observe.tally_process`` beside the run, as the live
projection does: nicer than the run (19 on POSIX, ``BELOW_NORMAL`` on
Windows), in its own process group, with no secret in its environment. It
reads only the segments, and prints a line of JSON with its counts each time
they change (at most every ``--every`` seconds); :class:`TallyProcess` keeps
the latest for the metrics endpoint. It ends when its stdin closes (the run
stopped, or died).

"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ingest.log.tally import LogTally, TallyKey
from ingest.secrets import without_secrets


__all__ = ["TallyProcess", "main"]

log = logging.getLogger("capture.metrics")

#: Seconds between two counts of the log's new lines.
DEFAULT_EVERY = 1.0

# The folder holding the top-level packages: the child must import this very code.
_IMPORT_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class TallyProcess:
    """The running tally; :attr:`counts` is its latest report."""

    def __init__(self) -> None:
        self.counts: Mapping[TallyKey, int] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None

    async def start(self, events_dir: Path, segment: Path, offset: int, every: float = DEFAULT_EVERY) -> None:
        """Start counting the lines appended to ``segment`` (and the segments after it) from ``offset``."""
        argv = [
            sys.executable, "-P", "-m", "ingest.observe.tally_process", "--events", str(events_dir.resolve()),
            "--segment", str(segment.resolve()), "--offset", str(offset), "--every", str(every),
        ]  # fmt: skip
        env = without_secrets(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, env.get("PYTHONPATH")) if p)
        options: dict[str, Any] = {}
        if sys.platform == "win32":
            options["creationflags"] = (
                subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS
            )
        else:
            options["process_group"] = 0  # the terminal's Ctrl-C is the run's to handle
        self._process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, **options
        )
        if sys.platform != "win32":
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self._process.pid, 19)
        self._reading = asyncio.create_task(self._read(self._process), name="capture-metrics-tally")

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            try:
                report = orjson.loads(line)
                self.counts = {(s, d, t): int(n) for s, d, t, n in report["counts"]}
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue

    async def close(self, timeout: float = 2.0) -> None:
        """Let it count the last lines, then end it (idempotent)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reading, timeout)


def _stdin_closed() -> threading.Event:
    closed = threading.Event()

    def wait() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        closed.set()

    threading.Thread(target=wait, name="capture-tally-stdin", daemon=True).start()
    return closed


def main(argv: list[str] | None = None) -> int:
    """Count and report until stdin closes; exit 0."""
    parser = argparse.ArgumentParser(prog="python -m ingest.observe.tally_process")
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--segment", type=Path, required=True)
    parser.add_argument("--offset", type=int, required=True)
    parser.add_argument("--every", type=float, default=DEFAULT_EVERY)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(19 - os.nice(0))
    tally = LogTally(args.events, args.segment, args.offset)
    closed = _stdin_closed()
    reported = -1
    while True:
        stopping = closed.wait(args.every)
        while tally.update():
            pass
        if tally.lines != reported:
            reported = tally.lines
            counts = [[*key, n] for key, n in tally.counts.items()]
            sys.stdout.buffer.write(orjson.dumps({"lines": tally.lines, "counts": counts}) + b"\n")
            sys.stdout.buffer.flush()
        if stopping:
            return 0


if __name__ == "__main__":
    sys.exit(main())
