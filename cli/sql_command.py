"""``capture sql``: read-only SQL over the DuckDB views, printed or exported; an interactive prompt."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import duckdb
import typer

from cli.command import INTERRUPTED, ctrl_c_sets
from cli.options import DataDir, require_log
from cli.output import err_console, fail, reporting_errors, say
from cli.results import OutputFormat, print_table, write_csv, write_json
from ingest.errors import CaptureError, ConfigError, QueryCancelledError, QueryError, QueryRefusedError
from projections.duckdb_views import (
    VIEW_NAMES,
    QueryResult,
    default_duckdb_path,
    open_analytics,
    read_statements,
    run_query,
    write_parquet,
)


__all__ = ["register"]

DuckdbPath = Annotated[
    Path | None,
    typer.Option(
        "--duckdb",
        dir_okay=False,
        metavar="FILE",
        show_default=False,
        help="DuckDB file holding the analytics views (default: <data dir>/analytics.duckdb).",
    ),
]

# More rows than this make a table unreadable; csv and json print them all.
_TABLE_ROWS = 1_000

_SUFFIXES = {".csv": OutputFormat.CSV, ".json": OutputFormat.JSON, ".parquet": OutputFormat.PARQUET}

_QUIT = {".quit", ".exit", "\\q", "quit", "exit"}


def _print(result: QueryResult, output: OutputFormat) -> None:
    if not result.columns:
        return
    if output is OutputFormat.CSV:
        write_csv(result, sys.stdout)
    elif output is OutputFormat.JSON:
        write_json(result, sys.stdout)
    else:
        shown, more = print_table(result, _TABLE_ROWS)
        note = f"{shown} row{'s' if shown != 1 else ''}"
        if more:
            note += " shown (more not shown: add a LIMIT, or use --format csv or json)"
        err_console.print(f"[dim]{note}[/dim]", highlight=False)
    sys.stdout.flush()


def _is_under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _export_target(output: Path, data_dir: Path, duckdb_path: Path) -> Path:
    """The file ``--output`` names, resolved; never in the data dir (the log lives there) nor the DuckDB file."""
    target = output.resolve()
    analytics = duckdb_path.resolve()
    if (
        _is_under(target, data_dir.resolve())
        or target.parent == analytics.parent
        and target.name.startswith(analytics.name)
    ):
        raise ConfigError(
            f"--output {output} is in the data dir {data_dir} (or is its DuckDB file): "
            "capture sql never writes there; choose a file elsewhere"
        )
    if target.is_dir():
        raise ConfigError(f"--output {output} is a folder; name a file")
    if not target.parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {target.parent} does not exist")
    return target


def _format_of(output: Path, given: OutputFormat | None) -> OutputFormat:
    if given is not None:
        if given is OutputFormat.TABLE:
            raise ConfigError("--output writes csv, json or parquet: pass --format csv|json|parquet")
        return given
    inferred = _SUFFIXES.get(output.suffix.lower())
    if inferred is None:
        raise ConfigError(f"cannot tell the format of --output {output}: pass --format csv|json|parquet")
    return inferred


def _export(
    conn: duckdb.DuckDBPyConnection,
    statement: duckdb.Statement,
    target: Path,
    fmt: OutputFormat,
    cancel: threading.Event,
) -> str:
    """Write the statement's result to ``target`` whole or not at all; say what was written."""
    scratch = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        if fmt is OutputFormat.PARQUET:
            write_parquet(conn, statement, scratch, cancel=cancel)
            written = f"wrote {target}"
        else:
            result = run_query(conn, statement, cancel=cancel)
            with scratch.open("w", encoding="utf-8", newline="") as out:
                rows = write_csv(result, out) if fmt is OutputFormat.CSV else write_json(result, out)
            written = f"wrote {rows} row{'s' if rows != 1 else ''} to {target}"
        os.replace(scratch, target)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        raise CaptureError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return written


def _run(conn: duckdb.DuckDBPyConnection, statements: list[duckdb.Statement], output: OutputFormat) -> None:
    """Run and print each statement in turn; Ctrl-C cancels (:class:`QueryCancelledError`)."""
    cancel = threading.Event()
    with ctrl_c_sets(cancel):
        for statement in statements:
            _print(run_query(conn, statement, cancel=cancel), output)


def _prompt(conn: duckdb.DuckDBPyConnection, output: OutputFormat) -> None:
    """Read statements ending in ``;`` and run them until ``.quit`` or Ctrl-D.

    Ctrl-C cancels the statement running (or being typed); the prompt stays.
    """
    try:
        import readline  # noqa: F401  (line editing and history where available)
    except ImportError:
        pass
    interactive = sys.stdin.isatty()
    if interactive:
        err_console.print(
            f"[dim]SQL over the views {', '.join(VIEW_NAMES)}. End a statement with ';'. "
            "Ctrl-C cancels a statement; .quit or Ctrl-D leaves.[/dim]"
        )
    buffer: list[str] = []
    while True:
        try:
            line = input(("sql> " if not buffer else "...> ") if interactive else "")
            if not buffer and line.strip() in _QUIT:
                return
            buffer.append(line)
            text = "\n".join(buffer).strip()
            if text and not text.endswith(";"):
                continue
            buffer.clear()
            if text:
                _run(conn, read_statements(text), output)
        except EOFError:
            if interactive:
                err_console.print()
            return
        except KeyboardInterrupt:  # while a statement is typed: drop it
            buffer.clear()
            err_console.print()
        except QueryCancelledError:
            say("query cancelled")
        except QueryError as exc:
            fail(str(exc))  # printed; the prompt goes on


@dataclass(frozen=True)
class _Plan:
    """What a ``capture sql`` call does: the prompt (no statements), print, or export to ``target``."""

    statements: list[duckdb.Statement] | None
    output: OutputFormat
    target: Path | None = None


def _plan(
    query: str | None,
    given: OutputFormat | None,
    output: Path | None,
    multiple: bool,
    data_dir: Path,
    duckdb_file: Path,
) -> _Plan:
    """Check the flags and the statements before anything runs.

    Raises:
        ConfigError: flags that do not go together, or an ``--output`` refused.
        QueryError: a statement DuckDB cannot parse.
        QueryRefusedError: a statement that does not read, or too many.

    """
    if query is None:
        if output is not None or multiple:
            raise ConfigError("--output and --multiple need a statement; the prompt prints results")
        return _Plan(None, given or OutputFormat.TABLE)
    statements = read_statements(query)
    if len(statements) > 1 and (not multiple or output is not None):
        more = "--output writes one result" if output is not None else "add --multiple to run them in turn"
        raise QueryRefusedError(f"one statement per call, and this is {len(statements)}: {more}")
    if output is not None:
        return _Plan(statements, _format_of(output, given), _export_target(output, data_dir, duckdb_file))
    if given is OutputFormat.PARQUET:
        raise ConfigError("--format parquet writes a file: add --output FILE")
    return _Plan(statements, given or OutputFormat.TABLE)


def _carry_out(conn: duckdb.DuckDBPyConnection, plan: _Plan) -> None:
    if plan.statements is None:
        _prompt(conn, plan.output)
    elif plan.target is not None:
        cancel = threading.Event()
        with ctrl_c_sets(cancel):
            say(_export(conn, plan.statements[0], plan.target, plan.output, cancel))
    else:
        _run(conn, plan.statements, plan.output)


def register(app: typer.Typer) -> None:
    """Add ``sql`` to ``app``."""

    @app.command("sql")
    def sql_command(
        query: Annotated[
            str | None,
            typer.Argument(
                metavar="SQL",
                help="A statement that reads (SELECT …); without it, an interactive prompt opens.",
                show_default=False,
            ),
        ] = None,
        data_dir: DataDir = Path("data"),
        duckdb_path: DuckdbPath = None,
        output_format: Annotated[
            OutputFormat | None,
            typer.Option(
                "--format",
                "-f",
                help="table (the default on screen), csv or json; with --output also parquet "
                "(the default there: the file's extension).",
                show_default=False,
            ),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option(
                "--output",
                "-o",
                metavar="FILE",
                dir_okay=False,
                help="Write the result to this file (csv, json or parquet), anywhere but the data dir.",
                show_default=False,
            ),
        ] = None,
        multiple: Annotated[
            bool, typer.Option("--multiple", help="Run several statements (separated by ';') in turn.")
        ] = False,
    ) -> None:
        """Run SQL that reads over the DuckDB views of the log: events, user_texts, conversations, daily_activity.

        Only statements that read run (SELECT, WITH, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN), one per
        call unless --multiple; anything that would write (COPY, EXPORT, ATTACH, CREATE, SET, …)
        is refused with exit 2. Export a result with --output FILE. Works while `capture ingest`
        runs. A statement DuckDB rejects prints its message and exits 1. Ctrl-C cancels the query
        (exit 130); in the prompt it cancels the statement and the prompt stays.
        """
        with reporting_errors():
            require_log(data_dir)
            duckdb_file = duckdb_path or default_duckdb_path(data_dir)
            plan = _plan(query, output_format, output, multiple, data_dir, duckdb_file)
            conn = open_analytics(data_dir, duckdb_file)
            try:
                _carry_out(conn, plan)
            except QueryCancelledError:
                say("query cancelled")
                raise typer.Exit(INTERRUPTED) from None
            finally:
                conn.close()
