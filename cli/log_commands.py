"""``capture status``: what the log holds, who writes it, how far the projection lags."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from cli.options import DataDir, DbPath, require_log
from cli.output import human, reporting_errors, show
from ingest.log.status import log_status
from ingest.log.writer import events_dir
from ingest.observe.figures import projection_lag
from projections import projection_status


__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``status`` to ``app``."""

    @app.command("status")
    def status_command(
        data_dir: DataDir = Path("data"),
        db: DbPath = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    ) -> None:
        """Show what the log holds, whether an ingest is writing to it, and the projection's lag."""
        with reporting_errors():
            require_log(data_dir)
            status = log_status(data_dir)
            projection = projection_status(data_dir, db)
            position = projection.get("last_projected_seq", 0) if "error" not in projection else None
            if position is not None:
                lag = projection_lag(events_dir(data_dir), position, status.last_seq, time.time())
                projection["lag_seconds"] = round(lag.seconds, 3)
            from ingest.observe.address import published_url, scrape  # prometheus-client: only here

            url = published_url(data_dir, status.writer)
            live = scrape(url) if url is not None else None
        if as_json:
            data = status.as_dict()
            data["projection"] = projection
            data["live"] = asdict(live) if live is not None else None
            typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
            return
        table = Table(show_header=False, box=None)
        table.add_row("data dir", status.data_dir)
        table.add_row("segments", human(status.segments))
        table.add_row("lines", human(status.lines))
        table.add_row("bytes", human(status.bytes))
        table.add_row("last seq", human(status.last_seq))
        table.add_row("last received", human(status.last_received_at))
        table.add_row("quarantined tails", human(status.quarantined))
        table.add_row("ingest", f"running: {status.writer}" if status.writer else "not running")
        for key, value in projection.items():
            if key != "problems":
                table.add_row(f"projection {key.replace('_', ' ')}", human(value))
        for problem in [*status.problems, *projection.get("problems", [])]:
            table.add_row("[red]problem[/red]", escape(problem))
        if live is not None:
            table.add_row("live", live.url + (f" (cannot be read: {live.error})" if live.error else ""))
            for check in live.checks:
                table.add_row("live ready", check)
            for name, value in (live.metrics or {}).items():
                table.add_row(f"live {name}", human(int(value) if value.is_integer() else round(value, 6)))
        show(table)
