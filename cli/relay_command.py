"""``capture relay``: stand between a team's clients and the platform, logging every frame both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import (
    BaseUrl,
    DataDir,
    DbPath,
    Fsync,
    FsyncInterval,
    MetricsHost,
    MetricsPort,
    NoProject,
    Quiet,
    Verbose,
)
from cli.output import console, reporting_errors
from cli.process_log import setup_logging
from cli.secrets import take_secrets
from cli.writing import metrics_server, write_log
from ingest.log.writer import DEFAULT_FSYNC_INTERVAL, FsyncPolicy
from ingest.observe.watch import Watched
from ingest.sources import LogSettings
from ingest.sources.relay import RelayConfig, RelayReport, run_relay
from ingest.sources.urls import DEFAULT_BASE_URL


__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``relay`` to ``app``."""

    @app.command("relay")
    def relay_command(
        agent_id: Annotated[
            list[str],
            typer.Option(
                "--agent-id",
                metavar="ID",
                help="An agent to relay (repeatable); no other agent is.",
                show_default=False,
            ),
        ],
        host: Annotated[
            str, typer.Option("--host", metavar="HOST", help="Interface to listen on.")
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="Port; 0 picks a free one.")
        ] = 8766,
        base_url: BaseUrl = DEFAULT_BASE_URL,
        public_url: Annotated[
            str | None,
            typer.Option(
                "--public-url",
                metavar="URL",
                help="The relay's address as clients reach it, e.g. wss://relay.example.com behind TLS "
                "(default: the request's Host, wss when X-Forwarded-Proto is https).",
                show_default=False,
            ),
        ] = None,
        data_dir: DataDir = Path("data"),
        db: DbPath = None,
        no_project: NoProject = False,
        stall_timeout: Annotated[
            float,
            typer.Option(
                "--stall-timeout",
                min=0.1,
                metavar="SECONDS",
                help="Close a connection whose side does not read for this long.",
            ),
        ] = 10.0,
        fsync: Fsync = FsyncPolicy.INTERVAL,
        fsync_interval: FsyncInterval = DEFAULT_FSYNC_INTERVAL,
        metrics_port: MetricsPort = None,
        metrics_host: MetricsHost = "127.0.0.1",
        verbose: Verbose = 0,
        quiet: Quiet = False,
    ) -> None:
        """Relay the agents' conversations between your clients and the platform, logging every frame.

        Serves GET /v1/convai/conversation/get-signed-url and the WebSocket /v1/convai/conversation,
        as the SDKs use them: point a client's base URL at the relay. Reads ELEVENLABS_API_KEY (signed
        URLs are fetched with it, never handed out) and CAPTURE_RELAY_TOKEN (what clients send as
        xi-api-key on the signed-URL call; required beyond loopback) from the environment, never from
        a flag. Audio is forwarded, never stored. SIGTERM / Ctrl-C: close every conversation with
        1001, fsync, unlock, exit 0.
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            secrets = take_secrets()
            config = RelayConfig(
                agent_ids=agent_id,
                base_url=base_url,
                api_key=secrets.api_key or None,
                relay_token=secrets.relay_token or None,
                host=host,
                port=port,
                public_url=public_url,
                stall_timeout=stall_timeout,
            )
            watched = Watched(relay=RelayReport())
            settings = LogSettings(data_dir, fsync, fsync_interval, command="capture relay")
            report = write_log(
                lambda writer, stop: run_relay(writer, config, stop, report=watched.relay),
                settings,
                db,
                no_project,
                metrics_server(metrics_port, metrics_host, watched, settings, db, no_project),
            ).report
        console.print(str(report), highlight=False, soft_wrap=True)
