"""``capture relay``: stand between a team's clients and the platform, logging every frame both ways."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cli.options import DataDir, DbPath, Fsync
from cli.output import console, reporting_errors, setup_logging
from ingest.errors import LogWriteError
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.sources.relay import RELAY_TOKEN_ENV, RelayConfig, RelayReport, run_relay
from ingest.sources.signals import stop_on_signals
from ingest.sources.urls import DEFAULT_BASE_URL


__all__ = ["register"]

API_KEY_ENV = "ELEVENLABS_API_KEY"


# The writer's lifecycle as cli/monitor_command.py has it, until `capture ingest --relay-port`
# runs the relay on the shared one.
async def _run(
    config: RelayConfig,
    data_dir: Path,
    fsync: FsyncPolicy,
    fsync_interval: float,
    db: Path | None,
    project: bool,
) -> RelayReport:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failures: list[LogWriteError] = []

    def on_error(error: LogWriteError) -> None:
        failures.append(error)
        loop.call_soon_threadsafe(stop.set)

    writer = LogWriter.open(
        data_dir, fsync=fsync, fsync_interval=fsync_interval, command="capture relay", on_error=on_error
    )
    stop_projection: Callable[[], None] | None = None
    try:
        if project:
            from projections.live import live_projection_sidecar

            stop_projection = live_projection_sidecar(data_dir, db)(writer)
        with stop_on_signals(loop, stop):
            report = await run_relay(writer, config, stop)
    finally:
        try:
            writer.close()
        finally:
            if stop_projection is not None:
                stop_projection()
    if failures:
        raise failures[0]
    return report


def register(app: typer.Typer) -> None:
    """Add ``relay`` to ``app``."""

    @app.command("relay")
    def relay_command(
        agent_id: Annotated[
            list[str],
            typer.Option(
                "--agent-id", help="An agent to relay (repeatable); no other agent is.", show_default=False
            ),
        ],
        host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="Port; 0 picks a free one.")
        ] = 8766,
        base_url: Annotated[
            str,
            typer.Option(
                "--base-url",
                envvar="ELEVENLABS_BASE_URL",
                help="The platform; residency hosts work (https://api.eu.residency.elevenlabs.io).",
            ),
        ] = DEFAULT_BASE_URL,
        public_url: Annotated[
            str | None,
            typer.Option(
                "--public-url",
                help="The relay's address as clients reach it, e.g. wss://relay.example.com behind TLS "
                "(default: the request's Host, wss when X-Forwarded-Proto is https).",
                show_default=False,
            ),
        ] = None,
        data_dir: DataDir = Path("data"),
        db: DbPath = None,
        no_project: Annotated[
            bool, typer.Option("--no-project", help="Do not run the live SQLite projection.")
        ] = False,
        stall_timeout: Annotated[
            float,
            typer.Option(
                "--stall-timeout", min=0.1, help="Close a connection whose side does not read for this long."
            ),
        ] = 10.0,
        fsync: Fsync = FsyncPolicy.INTERVAL,
        fsync_interval: Annotated[
            float,
            typer.Option(
                "--fsync-interval", min=0.001, max=0.2, help="Seconds between fsyncs for 'interval'."
            ),
        ] = 0.2,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    ) -> None:
        """Relay the agents' conversations between your clients and the platform, logging every frame.

        Serves GET /v1/convai/conversation/get-signed-url and the WebSocket /v1/convai/conversation,
        as the SDKs use them: point a client's base URL at the relay. Reads ELEVENLABS_API_KEY (signed
        URLs are fetched with it, never handed out) and CAPTURE_RELAY_TOKEN (what clients send as
        xi-api-key on the signed-URL call; required beyond loopback) from the environment, never from
        a flag. Audio is forwarded, never stored. SIGTERM / Ctrl-C: close every conversation with
        1001, fsync, unlock, exit 0.
        """
        setup_logging(verbose)
        with reporting_errors():
            config = RelayConfig(
                agent_ids=agent_id,
                base_url=base_url,
                api_key=os.environ.get(API_KEY_ENV) or None,
                relay_token=os.environ.get(RELAY_TOKEN_ENV) or None,
                host=host,
                port=port,
                public_url=public_url,
                stall_timeout=stall_timeout,
            )
            # Read once: a child process (the live projection) must not inherit them.
            for name in (API_KEY_ENV, RELAY_TOKEN_ENV):
                os.environ.pop(name, None)
            report = asyncio.run(_run(config, data_dir, fsync, fsync_interval, db, not no_project))
        console.print(str(report), highlight=False, soft_wrap=True)
