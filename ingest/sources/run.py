"""The one writer lifecycle: open the log, run sources and sidecars on it, stop them, close it.

Every command that writes the log (``capture ingest``, ``webhook``, ``relay``,
``backfill``, ``monitor``) is :func:`run_sources` with its sources; a
standalone command is :func:`run_source` with one. A source knows nothing of
the lifecycle: it is a coroutine function ``(writer, stop) -> report`` that
appends to the shared writer on this event loop and returns soon after
``stop`` is set. Adding a source to a run is adding it to the list.

"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeAlias, TypeVar

from ingest.errors import LogWriteError
from ingest.log.segments import RotationPolicy
from ingest.log.writer import DEFAULT_FSYNC_INTERVAL, FsyncPolicy, LogWriter
from ingest.sources.signals import stop_on_signals


__all__ = ["LogSettings", "Observer", "Sidecar", "Source", "run_source", "run_sources"]

log = logging.getLogger("capture.ingest")

R = TypeVar("R")

#: Runs on the shared event loop, appends to the shared writer, and returns
#: its report soon after the event is set (the agent client, the webhook
#: receiver, the backfill, the monitor).
Source: TypeAlias = Callable[[LogWriter, asyncio.Event], Awaitable[R]]

#: Started once the log is open, given the writer; returns the function that
#: stops it, called after the log is closed (so that it sees the whole log)
#: and expected to return within seconds (the live projection).
Sidecar: TypeAlias = Callable[[LogWriter], Callable[[], None]]


class Observer(Protocol):
    """Watches a run from the moment its log is open until its sources have stopped (the metrics endpoint)."""

    async def start(self, writer: LogWriter, stop: asyncio.Event) -> None:
        """Begin, on the run's loop, before any source starts; raise ``CaptureError`` to end the run."""
        ...

    async def close(self) -> None:
        """End, once every source has stopped and before the log is closed."""
        ...


@dataclass(frozen=True)
class LogSettings:
    """How a run opens the log.

    Attributes:
        data_dir: The folder holding the log (``events/``) and its lock.
        fsync: When appended lines are forced to stable storage.
        fsync_interval: Seconds between background fsyncs under ``interval``.
        rotation: When the active segment rolls.
        command: The command named in the lock (``capture status``, and the
            error a second writer gets).

    """

    data_dir: Path
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval: float = DEFAULT_FSYNC_INTERVAL
    rotation: RotationPolicy = field(default_factory=RotationPolicy)
    command: str = "capture ingest"


async def run_sources(
    sources: Sequence[Source[object]],
    settings: LogSettings,
    *,
    sidecars: Sequence[Sidecar] = (),
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    observer: Observer | None = None,
) -> list[object]:
    """Open the log, run ``sources`` on one writer until the first one ends, then close the log.

    The run ends when a source returns (the agent client after
    ``max_conversations`` or the end of its input, a one-shot backfill), a
    source fails, the log fails (a background fsync), ``stop`` is set, or,
    with ``handle_signals``, on SIGTERM or SIGINT (Ctrl-C; also Ctrl-Break on
    Windows). Ending means setting ``stop``: every source finishes on its own
    terms (the agent socket closes with 1000, deliveries in flight get their
    answer). Then the log is fsynced and closed, the lock released, and the
    sidecars stopped, last started first.

    Args:
        sources: What to run; each gets the writer and ``stop``.
        settings: How to open the log.
        sidecars: Started once the log is open, in order.
        stop: Set it to end the run (a fresh event if omitted).
        handle_signals: Turn SIGTERM and SIGINT into setting ``stop`` for the
            whole run, opening and closing included; off for a caller that
            owns the signals.
        observer: Started once the log is open, before the sidecars and
            sources; closed after the sources stopped (``--metrics-port``).

    Returns:
        Each source's report, in the order of ``sources``.

    Raises:
        LockedError: another writer holds the data dir.
        LogWriteError: the log could not be written.
        CaptureError: a source failed (its error, once the others stopped):
            ``AuthError`` when a server refused the key, ``ConfigError`` for a
            setting it refused, and so on.

    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if not handle_signals:
        return await _run(sources, settings, sidecars, stop, loop, observer)
    with stop_on_signals(loop, stop):
        return await _run(sources, settings, sidecars, stop, loop, observer)


async def run_source(
    source: Source[R],
    settings: LogSettings,
    *,
    sidecars: Sequence[Sidecar] = (),
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    observer: Observer | None = None,
) -> R:
    """Run one source as :func:`run_sources` does and return its report."""
    reports: list[R] = []

    async def keep_report(writer: LogWriter, stop: asyncio.Event) -> None:
        reports.append(await source(writer, stop))

    await run_sources(
        [keep_report],
        settings,
        sidecars=sidecars,
        stop=stop,
        handle_signals=handle_signals,
        observer=observer,
    )
    return reports[0]


async def _run(
    sources: Sequence[Source[object]],
    settings: LogSettings,
    sidecars: Sequence[Sidecar],
    stop: asyncio.Event,
    loop: asyncio.AbstractEventLoop,
    observer: Observer | None,
) -> list[object]:
    def on_error(error: LogWriteError) -> None:
        # From the fsync thread; the writer raises the error again on close.
        loop.call_soon_threadsafe(stop.set)

    writer = LogWriter.open(
        settings.data_dir,
        fsync=settings.fsync,
        fsync_interval=settings.fsync_interval,
        rotation=settings.rotation,
        command=settings.command,
        on_error=on_error,
    )
    recovery = writer.recovery
    if recovery.quarantined is not None:
        log.warning(
            "recovered the log: %d torn bytes from seq %s moved to %s",
            recovery.quarantined_bytes,
            recovery.first_bad_seq,
            recovery.quarantined,
        )
    stoppers: list[Callable[[], None]] = []
    observing: Observer | None = None
    try:
        if observer is not None:
            await observer.start(writer, stop)
            observing = observer
        for start in sidecars:
            stoppers.append(start(writer))
        return await _until_first_ends(sources, writer, stop)
    finally:
        try:
            try:
                if observing is not None:
                    await observing.close()
            finally:
                writer.close()
        finally:
            for stop_sidecar in reversed(stoppers):
                stop_sidecar()


async def _until_first_ends(
    sources: Sequence[Source[object]], writer: LogWriter, stop: asyncio.Event
) -> list[object]:
    """Run every source; the first to return or fail sets ``stop``; raise the first failure."""
    reports: list[object] = [None] * len(sources)
    failures: list[Exception] = []

    async def run(index: int, source: Source[object]) -> None:
        try:
            reports[index] = await source(writer, stop)
        except Exception as exc:
            # Not raised into the task group, which would cancel the others:
            # they are stopped, and end as they do on SIGTERM.
            failures.append(exc)
        finally:
            stop.set()

    async with asyncio.TaskGroup() as group:
        for index, source in enumerate(sources):
            group.create_task(run(index, source))
    if failures:
        raise failures[0]
    return reports
