"""``capture ingest`` and ``capture status``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from cli.options import DataDir, DbPath, parse_size, parse_vars
from cli.output import console, reporting_errors, setup_logging
from ingest.errors import ConfigError
from ingest.log.segments import DEFAULT_MAX_AGE, RotationPolicy
from ingest.log.status import log_status
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.sources.agent.client import AgentConfig
from ingest.sources.agent.user_input import open_input, read_lines
from ingest.sources.monitor import MonitorConfig, run_monitor
from ingest.sources.rest.backfill import BackfillConfig, run_backfill
from ingest.sources.run import IngestSettings, Sidecar, Source, ingest
from ingest.sources.urls import DEFAULT_BASE_URL, ws_base_url
from ingest.sources.webhook.receiver import WebhookConfig, run_webhook_server


__all__ = ["register"]

FSYNC_HELP = (
    "When lines are forced to disk. A killed process loses nothing in any mode; on power failure: "
    "'always' loses nothing (each line fsynced before the next frame; slowest), "
    "'interval' loses at most the last --fsync-interval (200 ms), fsynced off the receive path; "
    "'never' loses what the OS had not written back (typically up to 30 s)."
)


def register(app: typer.Typer) -> None:
    """Add ``ingest`` and ``status`` to ``app``."""

    @app.command("ingest")
    def ingest_command(
        agent_id: Annotated[
            str | None,
            typer.Option("--agent-id", envvar="AGENT_ID", help="The agent to talk to.", show_default=False),
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
        audio: Annotated[
            bool, typer.Option("--audio", help="Do not ask for a text-only conversation.")
        ] = False,
        user_id: Annotated[
            str | None, typer.Option("--user-id", help="user_id sent when each conversation starts.")
        ] = None,
        var: Annotated[
            list[str] | None,
            typer.Option("--var", help="Dynamic variable name=value (repeatable); sent as strings."),
        ] = None,
        input_spec: Annotated[
            str | None,
            typer.Option(
                "--input",
                metavar="FILE|-",
                help="Typed user text: each line is logged, then sent as a user_message. "
                "When it ends, the conversation ends and ingest stops.",
            ),
        ] = None,
        max_conversations: Annotated[
            int | None,
            typer.Option("--max-conversations", min=1, help="Stop after this many conversations."),
        ] = None,
        fsync: Annotated[FsyncPolicy, typer.Option("--fsync", help=FSYNC_HELP)] = FsyncPolicy.INTERVAL,
        fsync_interval: Annotated[
            float,
            typer.Option(
                "--fsync-interval", min=0.001, max=0.2, help="Seconds between fsyncs for 'interval'."
            ),
        ] = 0.2,
        segment_size: Annotated[
            str, typer.Option("--segment-size", help="Roll to a new segment at this size.")
        ] = "64MiB",
        segment_age: Annotated[
            float,
            typer.Option("--segment-age", min=0.001, help="Roll to a new segment after this many seconds."),
        ] = DEFAULT_MAX_AGE,
        no_project: Annotated[
            bool, typer.Option("--no-project", help="Do not update the SQLite user_texts table live.")
        ] = False,
        db: DbPath = None,
        agent_ws: Annotated[
            bool,
            typer.Option(
                "--agent-ws/--no-agent-ws",
                help="Hold conversations on the agent WebSocket. Turn off to run only the other sources.",
            ),
        ] = True,
        webhook_port: Annotated[
            int | None,
            typer.Option(
                "--webhook-port",
                min=0,
                max=65535,
                help="Also receive post-call webhooks on this port (secret: ELEVENLABS_WEBHOOK_SECRET).",
                show_default=False,
            ),
        ] = None,
        webhook_host: Annotated[
            str, typer.Option("--webhook-host", help="Interface the webhook receiver listens on.")
        ] = "127.0.0.1",
        webhook_path: Annotated[
            str, typer.Option("--webhook-path", help="URL path of the webhook receiver.")
        ] = "/webhooks/elevenlabs",
        backfill_follow: Annotated[
            bool,
            typer.Option(
                "--backfill-follow",
                help="Also poll the Conversations REST API for finished conversations (needs the API key).",
            ),
        ] = False,
        backfill_interval: Annotated[
            float, typer.Option("--backfill-interval", min=1.0, help="Seconds between REST polls.")
        ] = 60.0,
        monitor: Annotated[
            bool,
            typer.Option(
                "--monitor", help="Also attach to the agent's live conversations (enterprise monitor socket)."
            ),
        ] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    ) -> None:
        """Hold conversations with an agent and append every frame (audio excepted) to the log.

        Reads ELEVENLABS_API_KEY from the environment (never from a flag): with a key each
        connection uses a fresh signed URL, without one the agent must be public.
        """
        setup_logging(verbose)
        with reporting_errors():
            api_key = os.environ.get("ELEVENLABS_API_KEY") or None
            needs_agent = agent_ws or backfill_follow or monitor
            if needs_agent and not agent_id:
                raise ConfigError("no agent id: pass --agent-id or set AGENT_ID")
            if not (agent_ws or backfill_follow or monitor or webhook_port is not None):
                raise ConfigError(
                    "nothing to capture: --no-agent-ws needs --webhook-port, --backfill-follow or --monitor"
                )
            # Fail on a bad URL now rather than at the first connection.
            ws_base_url(base_url)
            agent = None
            if agent_ws:
                assert agent_id is not None
                agent = AgentConfig(
                    agent_id=agent_id,
                    base_url=base_url,
                    api_key=api_key,
                    text_only=not audio,
                    user_id=user_id,
                    dynamic_variables=parse_vars(var or []),
                )
            sources = other_sources(
                agent_id=agent_id,
                base_url=base_url,
                api_key=api_key,
                webhook=(webhook_host, webhook_port, webhook_path) if webhook_port is not None else None,
                backfill_interval=backfill_interval if backfill_follow else None,
                monitor=monitor,
            )
            settings = IngestSettings(
                data_dir=data_dir,
                fsync=fsync,
                fsync_interval=fsync_interval,
                rotation=RotationPolicy(max_bytes=parse_size(segment_size), max_age=segment_age),
                max_conversations=max_conversations,
            )
            stream = open_input(input_spec) if input_spec else None
            sidecars = [] if no_project else _sidecars(data_dir, db)
            summary = asyncio.run(
                ingest(
                    agent,
                    settings,
                    user_lines=read_lines(stream) if stream is not None else None,
                    sources=sources,
                    sidecars=sidecars,
                )
            )
        if agent_ws:
            console.print(
                f"{summary.conversations} conversations, {summary.frames_logged} frames logged, "
                f"{summary.audio_skipped} audio frames skipped",
                highlight=False,
            )

    @app.command("status")
    def status_command(
        data_dir: DataDir = Path("data"),
        db: DbPath = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    ) -> None:
        """Show what the log holds, whether an ingest is writing to it, and the projection's lag."""
        with reporting_errors():
            status = log_status(data_dir)
            extra = _projection_status(data_dir, db)
        if as_json:
            data = status.as_dict()
            data["projection"] = extra
            typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
            return
        table = Table(show_header=False, box=None)
        table.add_row("data dir", status.data_dir)
        table.add_row("segments", str(status.segments))
        table.add_row("lines", str(status.lines))
        table.add_row("bytes", f"{status.bytes:,}")
        table.add_row("last seq", str(status.last_seq) if status.last_seq is not None else "-")
        table.add_row("last received", status.last_received_at or "-")
        table.add_row("quarantined tails", ", ".join(status.quarantined) or "none")
        table.add_row("ingest", f"running: {status.writer}" if status.writer else "not running")
        if extra:
            for key, value in extra.items():
                table.add_row(f"projection {key}", str(value))
        console.print(table)


def other_sources(
    *,
    agent_id: str | None,
    base_url: str,
    api_key: str | None,
    webhook: tuple[str, int, str] | None,
    backfill_interval: float | None,
    monitor: bool,
) -> list[Source]:
    """Build the sources that run beside the agent WebSocket, validating their settings now."""
    sources: list[Source] = []
    if webhook is not None:
        secret = os.environ.get("ELEVENLABS_WEBHOOK_SECRET") or ""
        if not secret:
            raise ConfigError("--webhook-port needs the webhook secret: set ELEVENLABS_WEBHOOK_SECRET")
        host, port, path = webhook
        config = WebhookConfig(secret=secret, host=host, port=port, path=path)

        async def webhooks(writer: LogWriter, stop: asyncio.Event) -> object:
            return await run_webhook_server(writer, config, stop)

        sources.append(webhooks)
    if backfill_interval is not None or monitor:
        if not api_key:
            raise ConfigError("--backfill-follow and --monitor need an API key: set ELEVENLABS_API_KEY")
        assert agent_id is not None
    if backfill_interval is not None:
        assert agent_id is not None and api_key is not None
        backfill_config = BackfillConfig(
            agent_id=agent_id, base_url=base_url, api_key=api_key, follow=True, interval=backfill_interval
        )

        async def backfill(writer: LogWriter, stop: asyncio.Event) -> object:
            return await run_backfill(writer, backfill_config, stop)

        sources.append(backfill)
    if monitor:
        assert agent_id is not None and api_key is not None
        monitor_config = MonitorConfig(agent_id=agent_id, base_url=base_url, api_key=api_key)

        async def live(writer: LogWriter, stop: asyncio.Event) -> object:
            return await run_monitor(writer, monitor_config, stop)

        sources.append(live)
    return sources


def _sidecars(data_dir: Path, db: Path | None) -> list[Sidecar]:
    try:
        from projections.live import live_projection_sidecar
    except ImportError:
        return []
    return [live_projection_sidecar(data_dir, db)]


def _projection_status(data_dir: Path, db: Path | None) -> dict[str, object] | None:
    try:
        from projections.sqlite import projection_status
    except ImportError:
        return None
    return projection_status(data_dir, db)
