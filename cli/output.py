"""How the command line talks: one-line errors, values in words, tables, progress."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ingest.errors import CaptureError


__all__ = [
    "console",
    "err_console",
    "fail",
    "human",
    "progress_bar",
    "reporting_errors",
    "say",
    "show",
    "warn",
]

console = Console()
err_console = Console(stderr=True)

# Wider than any terminal: a renderable's natural width, for output that is not one.
UNBOUNDED = 1_000_000


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red line on stderr and return the ``typer.Exit`` to raise."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def say(message: str) -> None:
    """Print one plain line on stderr (what was done, why it stopped): never wrapped, never styled."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """Print one line on stderr that the user should read (a hint, not an error)."""
    err_console.print(f"[yellow]note:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and their exit code."""
    try:
        yield
    except CaptureError as exc:
        raise fail(str(exc), exc.exit_code) from None


def human(value: Any) -> str:
    """``value`` in words for a person: yes/no, ``-`` for nothing, ``none`` for an empty collection."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {human(item)}" for key, item in value.items()) or "none"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(human(item) for item in value) or "none"
    return str(value)


def show(renderable: RenderableType) -> None:
    """Print a table on stdout: fitted to a terminal, at its full width anywhere else (a file, a pipe)."""
    if console.is_terminal:
        console.print(renderable)
        return
    natural = Measurement.get(console, console.options.update(max_width=UNBOUNDED), renderable).maximum
    whole = Console(file=console.file, width=max(natural, 1), color_system=None, highlight=False)
    whole.print(renderable, crop=False)


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
