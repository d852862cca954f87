"""``capture project``, ``capture rebuild`` and ``capture sql``: thin wrappers over ``projections``."""

from __future__ import annotations

import csv
import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from cli.options import DataDir, DbPath
from cli.output import console, err_console, progress_bar, reporting_errors
from ingest.errors import QueryError
from projections import ProjectReport, default_db_path, log_last_seq, project, rebuild
from projections.duckdb_views import QueryResult, default_duckdb_path, open_analytics, run_query


__all__ = ["OutputFormat", "register"]

DuckdbPath = Annotated[
    Path | None,
    typer.Option(
        "--duckdb",
        dir_okay=False,
        show_default=False,
        help="DuckDB file holding the analytics views (default: <data dir>/analytics.duckdb).",
    ),
]

# More rows than this make a table unreadable; csv and json print them all.
_TABLE_ROWS = 1_000


class OutputFormat(enum.StrEnum):
    """How ``capture sql`` prints a result."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def _print_report(report: ProjectReport, title: str) -> None:
    table = Table(title=title, show_header=False, box=None, title_justify="left")
    table.add_row("database", str(report.db_path))
    table.add_row("lines read", f"{report.lines_read:,}")
    table.add_row("rows written", f"{report.rows_written:,}")
    for reason, count in sorted(report.skipped.items()):
        table.add_row(f"skipped: {reason}", f"{count:,}")
    table.add_row("position (last seq)", f"{report.last_seq:,}")
    if report.rebuilt:
        table.add_row("rebuilt", f"{report.rebuilt}: the table was rebuilt from the log")
    if report.invalid:
        shown = ", ".join(str(line) for line in report.damaged[:5])
        more = f" (+{len(report.invalid) - 5} more)" if len(report.invalid) > 5 else ""
        table.add_row("damaged lines (skipped)", f"{len(report.invalid)}: {shown}{more}")
    if report.gaps:
        shown = ", ".join(str(gap) for gap in report.gaps[:5])
        more = f" (+{len(report.gaps) - 5} more)" if len(report.gaps) > 5 else ""
        table.add_row("gaps in seq", f"{len(report.gaps)}: {shown}{more}")
    if report.partial_tail:
        table.add_row("log tail", "a last line is still being written; the next run applies it")
    if report.swap:
        table.add_row("swap", report.swap)
    table.add_row("time", f"{report.elapsed:.2f} s ({report.lines_per_second:,.0f} lines/s)")
    console.print(table)


def _cell(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _print_result(result: QueryResult, output: OutputFormat) -> None:
    if not result.columns:
        return
    if output is OutputFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow(["" if value is None else value for value in row])
        sys.stdout.flush()
        return
    if output is OutputFormat.JSON:
        out = sys.stdout
        out.write("[")
        for i, row in enumerate(result.rows):
            record = dict(zip(result.columns, row, strict=True))
            out.write(("," if i else "") + "\n" + orjson.dumps(record, default=str).decode())
        out.write("\n]\n")
        out.flush()
        return
    table = Table(*result.columns, show_lines=False)
    shown = 0
    more = False
    for row in result.rows:
        if shown == _TABLE_ROWS:
            more = True
            break
        table.add_row(*(escape(_cell(value)) for value in row))
        shown += 1
    console.print(table)
    note = f"{shown} row{'s' if shown != 1 else ''}"
    if more:
        note += " shown (more not shown: add a LIMIT, or use --format csv or json)"
    err_console.print(f"[dim]{note}[/dim]", highlight=False)


def _interactive(conn: Any, output: OutputFormat) -> None:
    try:
        import readline  # noqa: F401  (line editing and history where available)
    except ImportError:
        pass
    err_console.print(
        "[dim]SQL over the views events, user_texts, conversations, daily_activity. "
        "End a statement with ';'. Quit with .quit or Ctrl-D.[/dim]"
    )
    buffer: list[str] = []
    while True:
        try:
            line = input("sql> " if not buffer else "...> ")
        except EOFError:
            break
        if not buffer and line.strip() in {".quit", ".exit", "\\q", "quit", "exit"}:
            break
        buffer.append(line)
        statement = "\n".join(buffer).strip()
        if not statement:
            buffer.clear()
            continue
        if not statement.endswith(";"):
            continue
        buffer.clear()
        try:
            _print_result(run_query(conn, statement), output)
        except QueryError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``project``, ``rebuild`` and ``sql`` commands to ``app``."""

    @app.command("project")
    def project_command(data_dir: DataDir = Path("data"), db: DbPath = None) -> None:
        """Apply the log's lines not yet in the SQLite user_texts table (after --no-project or a crash)."""
        with reporting_errors():
            report = project(data_dir, db or default_db_path(data_dir))
        _print_report(report, "capture project")

    @app.command("rebuild")
    def rebuild_command(data_dir: DataDir = Path("data"), db: DbPath = None) -> None:
        """Rebuild the SQLite user_texts table from the whole log, then swap it in atomically.

        Readers of the old table see it whole until the new one replaces it.
        Lines appended meanwhile are applied by the live projection or `capture project`.
        """
        with reporting_errors():
            with progress_bar() as bar:
                task = bar.add_task("rebuilding user_texts", total=log_last_seq(data_dir) or None)
                report = rebuild(
                    data_dir,
                    db or default_db_path(data_dir),
                    progress=lambda seq: bar.update(task, completed=seq),
                )
        _print_report(report, "capture rebuild")

    @app.command("sql")
    def sql_command(
        query: Annotated[
            str | None,
            typer.Argument(
                help="One SQL statement; without it, an interactive prompt opens.", show_default=False
            ),
        ] = None,
        data_dir: DataDir = Path("data"),
        duckdb_path: DuckdbPath = None,
        output: Annotated[
            OutputFormat, typer.Option("--format", "-f", help="How to print the result.")
        ] = OutputFormat.TABLE,
    ) -> None:
        """Run SQL over the DuckDB views of the log: events, user_texts, conversations, daily_activity.

        Works while `capture ingest` runs. A statement DuckDB rejects prints its message and exits 1.
        """
        with reporting_errors():
            conn = open_analytics(data_dir, duckdb_path or default_duckdb_path(data_dir))
            try:
                if query is None:
                    _interactive(conn, output)
                else:
                    _print_result(run_query(conn, query), output)
            finally:
                conn.close()
