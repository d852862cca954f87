"""``capture ingest``, ``webhook``, ``backfill`` and ``monitor``: the commands that write the log.

Each builds its sources from flags and the environment and runs them with
:func:`ingest.sources.run_sources` (a standalone command: one source), the
live projection beside them unless ``--no-project``.

"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.options import (
    AgentId,
    BaseUrl,
    DataDir,
    DbPath,
    Fsync,
    FsyncInterval,
    MetricsHost,
    MetricsPort,
    NoProject,
    Quiet,
    SegmentAge,
    SegmentSize,
    Verbose,
    parse_moment,
    parse_size,
    parse_vars,
)
from cli.output import console, progress_bar, reporting_errors, say, warn
from cli.process_log import setup_logging
from cli.secrets import API_KEY_ENV, RELAY_TOKEN_ENV, WEBHOOK_SECRET_ENV, take_secrets
from cli.writing import metrics_server, write_log, write_log_from
from ingest.errors import CaptureError, ConfigError
from ingest.log.segments import DEFAULT_MAX_AGE, RotationPolicy
from ingest.log.writer import DEFAULT_FSYNC_INTERVAL, FsyncPolicy
from ingest.observe.watch import BackfillWatch, MonitorWatch, Watched
from ingest.sources import (
    AgentConfig,
    BackfillConfig,
    BackfillReport,
    IngestSummary,
    LogSettings,
    MonitorConfig,
    MonitorReport,
    RelayReport,
    Source,
    WebhookConfig,
    WebhookStats,
    run_agent,
    run_backfill,
    run_monitor,
    run_webhook_server,
)
from ingest.sources.agent.user_input import open_input, read_lines
from ingest.sources.relay import RelayConfig, run_relay
from ingest.sources.urls import DEFAULT_BASE_URL, http_base_url, ws_base_url
from ingest.sources.webhook.receiver import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MIN_BODY_RATE,
    DEFAULT_PATH,
)


__all__ = ["register"]

NO_AGENT = "no agent id: pass --agent-id or set AGENT_ID"
DATA_DIR = Path("data")


def _required(value: str | None, message: str) -> str:
    """Return ``value``, or raise :class:`ConfigError` with ``message`` when it is missing or empty."""
    if not value:
        raise ConfigError(message)
    return value


def _backfill_summary(report: BackfillReport) -> str:
    text = (
        f"{report.listed} conversations listed, {report.logged} logged "
        f"({report.done} done, {report.failed} failed), {report.already_captured} already in the log"
    )
    if report.unfinished:
        text += f", {report.unfinished} not finished yet (the next run picks them up)"
    if report.missing:
        text += f", {report.missing} gone"
    if report.errors:
        text += f", {report.errors} could not be fetched"
    return text + f"; {report.requests} requests, {report.throttled} throttled"


def register(app: typer.Typer) -> None:
    """Add ``ingest``, ``webhook``, ``backfill`` and ``monitor`` to ``app``."""

    @app.command("ingest")
    def ingest_command(
        agent_id: AgentId = None,
        base_url: BaseUrl = DEFAULT_BASE_URL,
        data_dir: DataDir = DATA_DIR,
        audio: Annotated[
            bool, typer.Option("--audio", help="Do not ask for a text-only conversation.")
        ] = False,
        user_id: Annotated[
            str | None,
            typer.Option("--user-id", metavar="ID", help="user_id sent when each conversation starts."),
        ] = None,
        var: Annotated[
            list[str] | None,
            typer.Option(
                "--var",
                metavar="NAME=VALUE",
                help="A dynamic variable (repeatable); values are sent as strings.",
            ),
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
        fsync: Fsync = FsyncPolicy.INTERVAL,
        fsync_interval: FsyncInterval = DEFAULT_FSYNC_INTERVAL,
        segment_size: SegmentSize = "64MiB",
        segment_age: SegmentAge = DEFAULT_MAX_AGE,
        no_project: NoProject = False,
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
                metavar="PORT",
                help=f"Also receive post-call webhooks on this port (secret: {WEBHOOK_SECRET_ENV}).",
                show_default=False,
            ),
        ] = None,
        webhook_host: Annotated[
            str,
            typer.Option("--webhook-host", metavar="HOST", help="Interface the webhook receiver listens on."),
        ] = "127.0.0.1",
        webhook_path: Annotated[
            str, typer.Option("--webhook-path", metavar="PATH", help="URL path of the webhook receiver.")
        ] = DEFAULT_PATH,
        backfill_follow: Annotated[
            bool,
            typer.Option(
                "--backfill-follow",
                help="Also poll the Conversations REST API for finished conversations (needs the API key).",
            ),
        ] = False,
        backfill_interval: Annotated[
            float,
            typer.Option(
                "--backfill-interval", min=1.0, metavar="SECONDS", help="Seconds between REST polls."
            ),
        ] = 60.0,
        monitor: Annotated[
            bool,
            typer.Option(
                "--monitor", help="Also attach to the agent's live conversations (enterprise monitor socket)."
            ),
        ] = False,
        relay_port: Annotated[
            int | None,
            typer.Option(
                "--relay-port",
                min=0,
                max=65535,
                metavar="PORT",
                help="Also relay the agent's conversations between your clients and the platform on this "
                f"port, logging every frame both ways (see `capture relay`; token: {RELAY_TOKEN_ENV}).",
                show_default=False,
            ),
        ] = None,
        relay_host: Annotated[
            str, typer.Option("--relay-host", metavar="HOST", help="Interface the relay listens on.")
        ] = "127.0.0.1",
        relay_public_url: Annotated[
            str | None,
            typer.Option(
                "--relay-public-url",
                metavar="URL",
                help="The relay's address as clients reach it (wss://… behind TLS).",
                show_default=False,
            ),
        ] = None,
        metrics_port: MetricsPort = None,
        metrics_host: MetricsHost = "127.0.0.1",
        verbose: Verbose = 0,
        quiet: Quiet = False,
    ) -> None:
        """Hold conversations with an agent and append every frame (audio excepted) to the log.

        Reads ELEVENLABS_API_KEY from the environment (never from a flag): with a key each
        connection uses a fresh signed URL, without one the agent must be public.
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            secrets = take_secrets()
            api_key = secrets.api_key or None
            relay = relay_port is not None
            needs_agent = agent_ws or backfill_follow or monitor or relay
            agent = _required(agent_id, NO_AGENT) if needs_agent else ""
            if not (needs_agent or webhook_port is not None):
                raise ConfigError(
                    "nothing to capture: --no-agent-ws needs --webhook-port, --backfill-follow, --monitor "
                    "or --relay-port"
                )
            ws_base_url(base_url)  # a bad URL fails now, not at the first connection
            sources: list[Source[object]] = []
            watched = Watched()
            if webhook_port is not None:
                secret = _required(
                    secrets.webhook_secret,
                    f"--webhook-port needs the webhook secret: set {WEBHOOK_SECRET_ENV}",
                )
                webhook = WebhookConfig(
                    secret=secret, host=webhook_host, port=webhook_port, path=webhook_path
                )
                watched.webhook = webhook_stats = WebhookStats()
                sources.append(
                    lambda writer, stop: run_webhook_server(writer, webhook, stop, stats=webhook_stats)
                )
            key = ""
            if backfill_follow or monitor:
                key = _required(
                    api_key, f"--backfill-follow and --monitor need an API key: set {API_KEY_ENV}"
                )
            if backfill_follow:
                rest = BackfillConfig(agent, base_url, key, follow=True, interval=backfill_interval)
                watched.backfill = BackfillWatch(BackfillReport(), follow=True, interval=backfill_interval)
                rest_report = watched.backfill.report
                sources.append(lambda writer, stop: run_backfill(writer, rest, stop, report=rest_report))
            if monitor:
                live = MonitorConfig(agent, base_url, key)
                watched.monitor = MonitorWatch(MonitorReport(), live.poll_interval)
                live_report = watched.monitor.report
                sources.append(lambda writer, stop: run_monitor(writer, live, stop, report=live_report))
            if relay_port is not None:
                relay_config = RelayConfig(
                    agent_ids=[agent],
                    base_url=base_url,
                    api_key=api_key,
                    relay_token=secrets.relay_token or None,
                    host=relay_host,
                    port=relay_port,
                    public_url=relay_public_url,
                )
                watched.relay = relay_report = RelayReport()
                sources.append(
                    lambda writer, stop: run_relay(writer, relay_config, stop, report=relay_report)
                )
            rotation = RotationPolicy(max_bytes=parse_size(segment_size), max_age=segment_age)
            if agent_ws:
                config = AgentConfig(
                    agent_id=agent,
                    base_url=base_url,
                    api_key=api_key,
                    text_only=not audio,
                    user_id=user_id,
                    dynamic_variables=parse_vars(var or []),
                )
                lines = read_lines(open_input(input_spec)) if input_spec else None
                watched.agent = summary = IngestSummary()
                sources.append(
                    lambda writer, stop: run_agent(
                        writer,
                        config,
                        stop,
                        user_lines=lines,
                        max_conversations=max_conversations,
                        summary=summary,
                    )
                )
            settings = LogSettings(data_dir, fsync, fsync_interval, rotation)
            metrics = metrics_server(metrics_port, metrics_host, watched, settings, db, no_project)
            reports = write_log_from(sources, settings, db, no_project, metrics).report
        for report in reports:
            if isinstance(report, IngestSummary):
                console.print(
                    f"{report.conversations} conversations, {report.frames_logged} frames logged, "
                    f"{report.audio_skipped} audio frames skipped",
                    highlight=False,
                )

    @app.command("webhook")
    def webhook_command(
        host: Annotated[
            str, typer.Option("--host", metavar="HOST", help="Interface to listen on.")
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="Port; 0 picks a free one.")
        ] = 8080,
        path: Annotated[
            str, typer.Option("--path", metavar="PATH", help="The URL path ElevenLabs posts to.")
        ] = DEFAULT_PATH,
        data_dir: DataDir = DATA_DIR,
        fsync: Fsync = FsyncPolicy.INTERVAL,
        max_body: Annotated[
            str,
            typer.Option(
                "--max-body",
                metavar="SIZE",
                help="Larger bodies are refused with 413, except post_call_audio (read, never stored).",
            ),
        ] = f"{DEFAULT_MAX_BODY // 2**20}MiB",
        max_future: Annotated[
            float | None,
            typer.Option(
                "--max-future",
                min=0,
                metavar="SECONDS",
                help="Refuse signatures timestamped more than this far ahead of this server's clock "
                "(default: accept any, as the official SDK does; a large skew is logged).",
                show_default=False,
            ),
        ] = None,
        idle_timeout: Annotated[
            float,
            typer.Option(
                "--idle-timeout",
                min=0.001,
                metavar="SECONDS",
                help="Close a connection that has not sent its request line and headers within this long.",
            ),
        ] = DEFAULT_IDLE_TIMEOUT,
        body_timeout: Annotated[
            float,
            typer.Option(
                "--body-timeout",
                min=0.001,
                metavar="SECONDS",
                help="Answer 408 to a body that pauses this long, or that averages under "
                "--min-body-rate once this long has passed.",
            ),
        ] = DEFAULT_BODY_TIMEOUT,
        min_body_rate: Annotated[
            str,
            typer.Option(
                "--min-body-rate", metavar="SIZE", help="Bytes per second a body must average (0: no floor)."
            ),
        ] = f"{DEFAULT_MIN_BODY_RATE}",
        no_project: NoProject = False,
        db: DbPath = None,
        metrics_port: MetricsPort = None,
        metrics_host: MetricsHost = "127.0.0.1",
        verbose: Verbose = 0,
        quiet: Quiet = False,
    ) -> None:
        """Receive post-call webhooks: verify, append to the log, fsync, then answer 200.

        The HMAC secret comes from ELEVENLABS_WEBHOOK_SECRET, never from a flag.
        Missing, malformed, stale (over 30 min) or wrong signature: 401 (a future one is accepted).
        Refused deliveries are never stored; a replayed delivery is stored again.
        post_call_audio is answered 200; its audio is never stored.
        Whatever --fsync, a 200 waits until the delivery is on stable storage
        (an fsync shared by the deliveries in flight; one per delivery with 'always').
        Put it behind a TLS reverse proxy: ElevenLabs posts to https URLs.
        SIGTERM / Ctrl-C: finish deliveries in flight, fsync, unlock, exit 0.
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            secret = take_secrets().webhook_secret
            if not secret.strip():
                raise ConfigError(
                    f"no webhook secret: set {WEBHOOK_SECRET_ENV} (from the agent's webhook settings)"
                )
            rate = min_body_rate.strip()
            config = WebhookConfig(
                secret=secret,
                host=host,
                port=port,
                path=path,
                max_body=parse_size(max_body, "--max-body"),
                max_future=max_future,
                idle_timeout=idle_timeout,
                body_timeout=body_timeout,
                min_body_rate=0 if rate == "0" else parse_size(rate, "--min-body-rate"),
            )
            watched = Watched(webhook=WebhookStats())
            settings = LogSettings(data_dir, fsync, command="capture webhook")
            stats = write_log(
                lambda writer, stop: run_webhook_server(writer, config, stop, stats=watched.webhook),
                settings,
                db,
                no_project,
                metrics_server(metrics_port, metrics_host, watched, settings, db, no_project),
            ).report
        console.print(str(stats), highlight=False, soft_wrap=True)

    @app.command("backfill")
    def backfill_command(
        agent_id: AgentId = None,
        base_url: BaseUrl = DEFAULT_BASE_URL,
        data_dir: DataDir = DATA_DIR,
        since: Annotated[
            str | None,
            typer.Option(
                "--since",
                metavar="WHEN",
                help="Only calls that started at or after this: 2026-01-01, 2026-01-01T12:00:00Z, "
                "Unix seconds, or an age (7d, 12h, 30m). Times without an offset are UTC.",
                show_default=False,
            ),
        ] = None,
        until: Annotated[
            str | None,
            typer.Option(
                "--until",
                metavar="WHEN",
                help="Only calls that started before this (same forms).",
                show_default=False,
            ),
        ] = None,
        page_size: Annotated[
            int, typer.Option("--page-size", min=1, max=100, help="Conversations per list page.")
        ] = 100,
        concurrency: Annotated[
            int,
            typer.Option(
                "--concurrency",
                min=1,
                help="Requests in flight at most (list and get together); keep it within your plan's limit.",
            ),
        ] = 2,
        refresh: Annotated[
            bool, typer.Option("--refresh", help="Fetch again conversations the log already holds.")
        ] = False,
        follow: Annotated[
            bool,
            typer.Option("--follow", help="Keep polling (every --interval) so missed webhooks are caught."),
        ] = False,
        interval: Annotated[
            float,
            typer.Option(
                "--interval", min=0.01, metavar="SECONDS", help="Seconds between polls with --follow."
            ),
        ] = 60.0,
        wait_pending: Annotated[
            float,
            typer.Option(
                "--wait-pending",
                min=0,
                metavar="SECONDS",
                help="Without --follow: seconds to keep asking for conversations not finished yet "
                "(processing, in progress); what is left is picked up by the next run.",
            ),
        ] = 30.0,
        fsync: Fsync = FsyncPolicy.INTERVAL,
        fsync_interval: FsyncInterval = DEFAULT_FSYNC_INTERVAL,
        no_project: NoProject = False,
        db: DbPath = None,
        metrics_port: MetricsPort = None,
        metrics_host: MetricsHost = "127.0.0.1",
        verbose: Verbose = 0,
        quiet: Quiet = False,
    ) -> None:
        """Fetch the agent's finished conversations (Conversations REST API) into the log, each once.

        Reads ELEVENLABS_API_KEY from the environment (never from a flag). Conversations the log
        already holds (from an earlier backfill or a post-call webhook) are skipped, so an
        interrupted backfill simply runs again. Takes the data dir's lock: it cannot run while
        `capture ingest` writes to the same data dir (use `capture ingest --backfill-follow` there).
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            now = time.time()
            config = BackfillConfig(
                agent_id=agent_id or "",
                base_url=base_url,
                api_key=take_secrets().api_key,
                since=parse_moment(since, now, "--since") if since else None,
                until=parse_moment(until, now, "--until") if until else None,
                page_size=page_size,
                concurrency=concurrency,
                refresh=refresh,
                follow=follow,
                interval=interval,
                wait_pending=wait_pending,
            )
            http_base_url(base_url)  # a bad URL fails now, not at the first request
            with progress_bar() as bar:
                task = bar.add_task("backfill", total=None)

                def show(report: BackfillReport) -> None:
                    description = f"backfill: {report.listed} listed, {report.already_captured} in the log"
                    bar.update(task, description=description, total=report.queued, completed=report.answered)

                watch = BackfillWatch(BackfillReport(), follow=follow, interval=interval)
                settings = LogSettings(data_dir, fsync, fsync_interval, command="capture backfill")
                written = write_log(
                    lambda writer, stop: run_backfill(writer, config, stop, show, report=watch.report),
                    settings,
                    db,
                    no_project,
                    metrics_server(
                        metrics_port, metrics_host, Watched(backfill=watch), settings, db, no_project
                    ),
                )
            report = written.report
            console.print(_backfill_summary(report), highlight=False, soft_wrap=True)
            if written.signal is not None and not follow:
                say(
                    "interrupted; run it again to resume (conversations already in the log are not "
                    "fetched again)"
                )
                raise typer.Exit(128 + written.signal)
            if report.listed == 0 and not report.list_incomplete and written.signal is None:
                warn(
                    f"the API listed no conversations of agent {config.agent_id}"
                    + (" in that time range" if since or until else "")
                    + ": check --agent-id (an unknown agent lists none) and that the API key's "
                    "workspace owns the agent"
                )
            if report.list_incomplete or report.errors:
                raise CaptureError(
                    "the backfill is incomplete (see the warnings above); run it again to continue"
                )

    @app.command("monitor")
    def monitor_command(
        agent_id: AgentId = None,
        base_url: BaseUrl = DEFAULT_BASE_URL,
        data_dir: DataDir = DATA_DIR,
        poll_interval: Annotated[
            float,
            typer.Option(
                "--poll-interval",
                min=0.01,
                metavar="SECONDS",
                help="Seconds between looks for new live conversations.",
            ),
        ] = 5.0,
        lookback: Annotated[
            float,
            typer.Option(
                "--lookback",
                min=1,
                metavar="SECONDS",
                help="Look for live calls that started within this many seconds.",
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
        fsync: Fsync = FsyncPolicy.INTERVAL,
        fsync_interval: FsyncInterval = DEFAULT_FSYNC_INTERVAL,
        no_project: NoProject = False,
        db: DbPath = None,
        metrics_port: MetricsPort = None,
        metrics_host: MetricsHost = "127.0.0.1",
        verbose: Verbose = 0,
        quiet: Quiet = False,
    ) -> None:
        """Attach to the agent's live conversations and log every frame (audio excepted).

        Real-time monitoring is enterprise-only and must be enabled on the agent; without it this
        exits with code 2 and one line saying so. Reads ELEVENLABS_API_KEY from the environment
        (never from a flag). Takes the data dir's lock: use `capture ingest --monitor` to run it
        next to the other sources.
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            config = MonitorConfig(
                agent_id=agent_id or "",
                base_url=base_url,
                api_key=take_secrets().api_key,
                poll_interval=poll_interval,
                lookback=lookback,
                concurrency=concurrency,
                max_attachments=max_attachments,
                max_conversations=max_conversations,
            )
            ws_base_url(base_url)  # a bad URL fails now, not at the first connection
            watch = MonitorWatch(MonitorReport(), poll_interval)
            settings = LogSettings(data_dir, fsync, fsync_interval, command="capture monitor")
            report = write_log(
                lambda writer, stop: run_monitor(writer, config, stop, report=watch.report),
                settings,
                db,
                no_project,
                metrics_server(metrics_port, metrics_host, Watched(monitor=watch), settings, db, no_project),
            ).report
        console.print(
            f"{report.conversations} conversations monitored, {report.frames_logged} frames logged, "
            f"{report.audio_skipped} audio frames skipped",
            highlight=False,
        )
