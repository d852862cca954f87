"""``capture backfill``: fetch the agent's finished conversations from the REST API into the log."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.ingest_command import FSYNC_HELP
from cli.options import DataDir
from cli.output import console, err_console, reporting_errors, setup_logging
from ingest.errors import CaptureError, ConfigError, LogWriteError
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.sources.rest.backfill import BackfillConfig, BackfillReport, run_backfill
from ingest.sources.signals import stop_on_signals
from ingest.sources.urls import DEFAULT_BASE_URL, http_base_url


__all__ = ["parse_moment", "register"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_moment(text: str, now: float, flag: str = "--since") -> int:
    """Parse a moment as Unix seconds: ``1767225600``, ``2026-01-01``, ``2026-01-01T12:00:00+01:00`` or an age (``7d``, ``12h``, ``30m``).

    A date or time without an offset is UTC; an age counts back from ``now``.

    Raises:
        ConfigError: the text is none of those.

    """
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    age = _AGE.match(stripped)
    if age:
        return int(now - float(age.group(1)) * _AGE_UNITS[age.group(2).lower()])
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a moment; use e.g. 2026-01-01, 2026-01-01T12:00:00Z, "
            "1767225600 (Unix seconds) or an age like 7d, 12h, 30m"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _summary(report: BackfillReport) -> str:
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


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        yield progress


async def _run(
    config: BackfillConfig, data_dir: Path, fsync: FsyncPolicy, fsync_interval: float
) -> BackfillReport:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failures: list[LogWriteError] = []

    def on_error(error: LogWriteError) -> None:
        failures.append(error)
        loop.call_soon_threadsafe(stop.set)

    writer = LogWriter.open(
        data_dir, fsync=fsync, fsync_interval=fsync_interval, command="capture backfill", on_error=on_error
    )
    try:
        with _progress_bar(err_console.is_terminal) as bar, stop_on_signals(loop, stop):
            task = bar.add_task("backfill", total=None) if bar is not None else None

            def show(report: BackfillReport) -> None:
                if bar is not None and task is not None:
                    bar.update(
                        task,
                        description=f"backfill: {report.listed} listed, {report.already_captured} in the log",
                        total=report.queued,
                        completed=report.answered,
                    )

            report = await run_backfill(writer, config, stop, show)
    finally:
        writer.close()
    if failures:
        raise failures[0]
    return report


def register(app: typer.Typer) -> None:
    """Add ``backfill`` to ``app``."""

    @app.command("backfill")
    def backfill_command(
        agent_id: Annotated[
            str | None,
            typer.Option(
                "--agent-id",
                envvar="AGENT_ID",
                help="The agent whose conversations to fetch.",
                show_default=False,
            ),
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
        since: Annotated[
            str | None,
            typer.Option(
                "--since",
                help="Only calls that started at or after this: 2026-01-01, 2026-01-01T12:00:00Z, "
                "Unix seconds, or an age (7d, 12h, 30m). Times without an offset are UTC.",
                show_default=False,
            ),
        ] = None,
        until: Annotated[
            str | None,
            typer.Option(
                "--until", help="Only calls that started before this (same forms).", show_default=False
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
            float, typer.Option("--interval", min=0.01, help="Seconds between polls with --follow.")
        ] = 60.0,
        wait_pending: Annotated[
            float,
            typer.Option(
                "--wait-pending",
                min=0,
                help="Without --follow: seconds to keep asking for conversations not finished yet "
                "(processing, in progress); what is left is picked up by the next run.",
            ),
        ] = 30.0,
        fsync: Annotated[FsyncPolicy, typer.Option("--fsync", help=FSYNC_HELP)] = FsyncPolicy.INTERVAL,
        fsync_interval: Annotated[
            float,
            typer.Option(
                "--fsync-interval", min=0.001, max=0.2, help="Seconds between fsyncs for 'interval'."
            ),
        ] = 0.2,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    ) -> None:
        """Fetch the agent's finished conversations (Conversations REST API) into the log, each once.

        Reads ELEVENLABS_API_KEY from the environment (never from a flag). Conversations the log
        already holds (from an earlier backfill or a post-call webhook) are skipped, so an
        interrupted backfill simply runs again. Takes the data dir's lock: it cannot run while
        `capture ingest` writes to the same data dir (use `capture ingest --backfill-follow` there).
        """
        setup_logging(verbose)
        with reporting_errors():
            api_key = os.environ.get("ELEVENLABS_API_KEY") or ""
            if not agent_id:
                raise ConfigError("no agent id: pass --agent-id or set AGENT_ID")
            if not api_key:
                raise ConfigError("no API key: set ELEVENLABS_API_KEY (the Conversations API needs one)")
            http_base_url(base_url)
            now = time.time()
            config = BackfillConfig(
                agent_id=agent_id,
                base_url=base_url,
                api_key=api_key,
                since=parse_moment(since, now, "--since") if since else None,
                until=parse_moment(until, now, "--until") if until else None,
                page_size=page_size,
                concurrency=concurrency,
                refresh=refresh,
                follow=follow,
                interval=interval,
                wait_pending=wait_pending,
            )
            report = asyncio.run(_run(config, data_dir, fsync, fsync_interval))
            console.print(_summary(report), highlight=False, soft_wrap=True)
            if report.stopped and not follow:
                console.print("stopped; run it again to continue", highlight=False)
            elif report.list_incomplete or report.errors:
                raise CaptureError(
                    "the backfill is incomplete (see the warnings above); run it again to continue"
                )
