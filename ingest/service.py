"""``capture ingest`` as a library call: open the log, run the sources, shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .agent_client import AgentClient, AgentConfig, IngestSummary
from .errors import LogWriteError
from .log import DEFAULT_FSYNC_INTERVAL, FsyncPolicy, LogWriter
from .reconnect import ReconnectPolicy
from .segments import RotationPolicy
from .signals import stop_on_signals


__all__ = ["IngestSettings", "Sidecar", "ingest"]

log = logging.getLogger("capture.ingest")

# Something started once the log is open and stopped before it closes (the live
# projection, for instance); ``stop`` must return within a few seconds.
Sidecar = Callable[[LogWriter], Callable[[], None]]


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
    agent: AgentConfig,
    settings: IngestSettings,
    *,
    user_lines: AsyncIterator[str] | None = None,
    sidecars: list[Sidecar] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> IngestSummary:
    """Capture conversations with one agent into ``settings.data_dir`` until done or stopped.

    SIGTERM and SIGINT close the connection with 1000, fsync the log and
    release the lock; the function then returns normally.

    Raises:
        LockedError: another writer holds the data dir.
        AuthError: the server refused the key, agent or an override.
        LogWriteError: the log could not be written.

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
    try:
        for start in sidecars or []:
            stoppers.append(start(writer))
        client = AgentClient(
            agent,
            writer,
            policy=settings.policy,
            user_lines=user_lines,
            max_conversations=settings.max_conversations,
            stop=stop,
        )
        if handle_signals:
            with stop_on_signals(loop, stop):
                summary = await client.run()
        else:
            summary = await client.run()
    finally:
        try:
            writer.close()
        finally:
            for stop_sidecar in reversed(stoppers):
                stop_sidecar()
    if failures:
        raise failures[0]
    return summary
