"""How the command line talks: one-line errors, the process log, tables."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ingest.errors import CaptureError


__all__ = ["console", "err_console", "progress_bar", "reporting_errors", "setup_logging"]

console = Console()
err_console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    """Send the process log (one line per connection, warnings) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Library chatter (websockets' own reconnect and frame logs) only when asked.
    for noisy in ("websockets", "aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red line on stderr and return the ``typer.Exit`` to raise."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and their exit code."""
    try:
        yield
    except CaptureError as exc:
        raise fail(str(exc), exc.exit_code) from None


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """Show progress on stderr while the block runs, when stderr is a terminal (else draw nothing)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as progress:
        yield progress
