"""``capture project`` and ``capture rebuild``: thin wrappers over ``projections``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.command import INTERRUPTED
from cli.options import DataDir, DbPath, Quiet, Verbose, require_log
from cli.output import progress_bar, reporting_errors, say, show
from cli.process_log import setup_logging
from projections import ProjectReport, default_db_path, log_last_seq, project, rebuild


__all__ = ["register"]


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
    show(table)


def register(app: typer.Typer) -> None:
    """Add the ``project`` and ``rebuild`` commands to ``app``."""

    @app.command("project")
    def project_command(
        data_dir: DataDir = Path("data"), db: DbPath = None, verbose: Verbose = 0, quiet: Quiet = False
    ) -> None:
        """Apply the log's lines not yet in the SQLite user_texts table (after --no-project or a crash).

        Ctrl-C stops it (exit 130); what was applied stays, and the next run continues from there.
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            require_log(data_dir)
            try:
                report = project(data_dir, db or default_db_path(data_dir))
            except KeyboardInterrupt:
                say("interrupted; run it again to continue from where it stopped")
                raise typer.Exit(INTERRUPTED) from None
        _print_report(report, "capture project")

    @app.command("rebuild")
    def rebuild_command(
        data_dir: DataDir = Path("data"), db: DbPath = None, verbose: Verbose = 0, quiet: Quiet = False
    ) -> None:
        """Rebuild the SQLite user_texts table from the whole log, then swap it in atomically.

        Readers of the old table see it whole until the new one replaces it.
        Lines appended meanwhile are applied by the live projection or `capture project`.
        Ctrl-C stops it (exit 130) and leaves the old table as it was.
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            require_log(data_dir)
            try:
                report = _rebuild(data_dir, db)
            except KeyboardInterrupt:
                say("interrupted; the table was not replaced")
                raise typer.Exit(INTERRUPTED) from None
        _print_report(report, "capture rebuild")


def _rebuild(data_dir: Path, db: Path | None) -> ProjectReport:
    with progress_bar() as bar:
        task = bar.add_task("rebuilding user_texts", total=log_last_seq(data_dir) or None)
        return rebuild(
            data_dir, db or default_db_path(data_dir), progress=lambda seq: bar.update(task, completed=seq)
        )
