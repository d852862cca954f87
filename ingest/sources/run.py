"""``capture ingest`` as a library call: open the log, run the sources, shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.errors import LogWriteError
from ingest.log.segments import RotationPolicy
from ingest.log.writer import DEFAULT_FSYNC_INTERVAL, FsyncPolicy, LogWriter
from ingest.sources.agent.client import AgentClient, AgentConfig, IngestSummary
from ingest.sources.reconnect import ReconnectPolicy
from ingest.sources.signals import stop_on_signals


__all__ = ["IngestSettings", "Sidecar", "Source", "ingest"]

log = logging.getLogger("capture.ingest")

# Something started once the log is open and stopped before it closes (the live
# projection, for instance); ``stop`` must return within a few seconds.
Sidecar = Callable[[LogWriter], Callable[[], None]]

# A source runs on the shared event loop, appends to the shared writer, and
# returns soon after ``stop`` is set (webhook receiver, backfill, monitor).
Source = Callable[[LogWriter, asyncio.Event], Coroutine[Any, Any, object]]


@dataclass
class IngestSettings:
    """Everything ``capture ingest`` needs besides the agent config."""

    data_dir: Path
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval: float = DEFAULT_FSYNC_INTERVAL
    rotation: RotationPolicy = field(default_factory=RotationPolicy)
    policy: ReconnectPolicy = field(default_factory=ReconnectPolicy.from_env)
    max_conversations: int | None = None


async def ingest(
    agent: AgentConfig | None,
    settings: IngestSettings,
    *,
    user_lines: AsyncIterator[str] | None = None,
    sources: Sequence[Source] = (),
    sidecars: Sequence[Sidecar] = (),
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> IngestSummary:
    """Capture into ``settings.data_dir`` from the agent WebSocket and any other sources.

    All sources share one :class:`LogWriter` (one lock, one log) on this event
    loop. When the agent client is done (``max_conversations``, end of
    input), the other sources are stopped too; without an agent client, the
    sources run until stopped. SIGTERM and SIGINT close the connection with
    1000, let the sources finish, fsync the log and release the lock; the
    function then returns normally.

    Raises:
        LockedError: another writer holds the data dir.
        AuthError: the server refused the key, agent or an override.
        LogWriteError: the log could not be written.
        CaptureError: a source failed (the others are stopped first).

    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    failures: list[LogWriteError] = []

    def on_error(error: LogWriteError) -> None:
        failures.append(error)
        loop.call_soon_threadsafe(stop.set)

    writer = LogWriter.open(
        settings.data_dir,
        fsync=settings.fsync,
        fsync_interval=settings.fsync_interval,
        rotation=settings.rotation,
        on_error=on_error,
    )
    if writer.recovery.quarantined is not None:
        log.warning(
            "recovered the log: %d torn bytes from seq %s moved to %s",
            writer.recovery.quarantined_bytes,
            writer.recovery.first_bad_seq,
            writer.recovery.quarantined,
        )
    stoppers: list[Callable[[], None]] = []
    summary = IngestSummary()
    try:
        for start in sidecars:
            stoppers.append(start(writer))
        client = None
        if agent is not None:
            client = AgentClient(
                agent,
                writer,
                policy=settings.policy,
                user_lines=user_lines,
                max_conversations=settings.max_conversations,
                stop=stop,
            )
            summary = client.summary
        if handle_signals:
            with stop_on_signals(loop, stop):
                await _run_all(client, writer, sources, stop)
        else:
            await _run_all(client, writer, sources, stop)
    finally:
        try:
            writer.close()
        finally:
            for stop_sidecar in reversed(stoppers):
                stop_sidecar()
    if failures:
        raise failures[0]
    return summary


async def _run_all(
    client: AgentClient | None, writer: LogWriter, sources: Sequence[Source], stop: asyncio.Event
) -> None:
    """Run the agent client and the sources until done; the first error stops the rest and is raised."""
    tasks: list[asyncio.Task[object]] = []
    if client is not None:
        tasks.append(asyncio.create_task(client.run(), name="agent_ws"))
    tasks += [
        asyncio.create_task(source(writer, stop), name=f"source-{i}") for i, source in enumerate(sources)
    ]
    if not tasks:
        return
    agent_task = tasks[0] if client is not None else None
    pending = set(tasks)
    error: BaseException | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None and error is None:
                    error = task.exception()
                    stop.set()
                elif task is agent_task:
                    # The agent client finished its work: the other sources stop with it.
                    stop.set()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if error is not None:
        raise error
