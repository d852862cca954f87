"""``capture monitor``: attach to the agent's live conversations (enterprise monitor socket)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from cli.ingest_command import FSYNC_HELP
from cli.options import DataDir
from cli.output import console, reporting_errors, setup_logging
from ingest.errors import ConfigError, LogWriteError
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.sources.monitor import MonitorConfig, MonitorReport, run_monitor
from ingest.sources.signals import stop_on_signals
from ingest.sources.urls import DEFAULT_BASE_URL, ws_base_url


__all__ = ["register"]


async def _run(
    config: MonitorConfig, data_dir: Path, fsync: FsyncPolicy, fsync_interval: float
) -> MonitorReport:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failures: list[LogWriteError] = []

    def on_error(error: LogWriteError) -> None:
        failures.append(error)
        loop.call_soon_threadsafe(stop.set)

    writer = LogWriter.open(
        data_dir, fsync=fsync, fsync_interval=fsync_interval, command="capture monitor", on_error=on_error
    )
    try:
        with stop_on_signals(loop, stop):
            report = await run_monitor(writer, config, stop)
    finally:
        writer.close()
    if failures:
        raise failures[0]
    return report


def register(app: typer.Typer) -> None:
    """Add ``monitor`` to ``app``."""

    @app.command("monitor")
    def monitor_command(
        agent_id: Annotated[
            str | None,
            typer.Option("--agent-id", envvar="AGENT_ID", help="The agent to watch.", show_default=False),
        ] = None,
        base_url: Annotated[
            str,
            typer.Option(
                "--base-url",
                envvar="ELEVENLABS_BASE_URL",
                help="API host; residency hosts work (https://api.eu.residency.elevenlabs.io).",
            ),
        ] = DEFAULT_BASE_URL,
        data_dir: DataDir = Path("data"),
        poll_interval: Annotated[
            float,
            typer.Option(
                "--poll-interval", min=0.01, help="Seconds between looks for new live conversations."
            ),
        ] = 5.0,
        lookback: Annotated[
            float,
            typer.Option(
                "--lookback", min=1, help="Look for live calls that started within this many seconds."
            ),
        ] = 6 * 3600.0,
        max_conversations: Annotated[
            int | None,
            typer.Option(
                "--max-conversations", min=1, help="Stop after this many monitored conversations ended."
            ),
        ] = None,
        max_attachments: Annotated[
            int, typer.Option("--max-attachments", min=1, help="Monitor sockets open at most.")
        ] = 256,
        concurrency: Annotated[
            int, typer.Option("--concurrency", min=1, help="REST requests in flight at most.")
        ] = 2,
        fsync: Annotated[FsyncPolicy, typer.Option("--fsync", help=FSYNC_HELP)] = FsyncPolicy.INTERVAL,
        fsync_interval: Annotated[
            float,
            typer.Option(
                "--fsync-interval", min=0.001, max=0.2, help="Seconds between fsyncs for 'interval'."
            ),
        ] = 0.2,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    ) -> None:
        """Attach to the agent's live conversations and log every frame (audio excepted).

        Real-time monitoring is enterprise-only and must be enabled on the agent; without it this
        exits with code 2 and one line saying so. Reads ELEVENLABS_API_KEY from the environment
        (never from a flag). Takes the data dir's lock: use `capture ingest --monitor` to run it
        next to the other sources.
        """
        setup_logging(verbose)
        with reporting_errors():
            api_key = os.environ.get("ELEVENLABS_API_KEY") or ""
            if not agent_id:
                raise ConfigError("no agent id: pass --agent-id or set AGENT_ID")
            if not api_key:
                raise ConfigError("no API key: set ELEVENLABS_API_KEY (the monitor socket needs one)")
            ws_base_url(base_url)
            config = MonitorConfig(
                agent_id=agent_id,
                base_url=base_url,
                api_key=api_key,
                poll_interval=poll_interval,
                lookback=lookback,
                concurrency=concurrency,
                max_attachments=max_attachments,
                max_conversations=max_conversations,
            )
            report = asyncio.run(_run(config, data_dir, fsync, fsync_interval))
        console.print(
            f"{report.conversations} conversations monitored, {report.frames_logged} frames logged, "
            f"{report.audio_skipped} audio frames skipped",
            highlight=False,
        )
