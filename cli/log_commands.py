"""``capture status``: what the log holds, who writes it, how far the projection lags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from cli.options import DataDir, DbPath
from cli.output import console, reporting_errors
from ingest.log.status import log_status
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
            status = log_status(data_dir)
            projection = projection_status(data_dir, db)
        if as_json:
            data = status.as_dict()
            data["projection"] = projection
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
        for key, value in projection.items():
            if key != "problems":
                table.add_row(f"projection {key}", str(value))
        for problem in [*status.problems, *projection["problems"]]:
            table.add_row("[red]problem[/red]", escape(problem))
        console.print(table)
