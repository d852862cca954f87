"""The ``capture`` typer application: each module registers its group of commands."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from typer.core import TyperCommand

from cli import (
    doctor_command,
    ingest_commands,
    log_commands,
    projection_commands,
    relay_command,
    simulator_commands,
    sql_command,
)
from cli.command import CaptureCommand, CaptureGroup


__all__ = ["app"]

app = typer.Typer(
    name="capture",
    cls=CaptureGroup,
    help="Capture what users say to ElevenLabs Agents into your own database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ingest_commands.register(app)
relay_command.register(app)
log_commands.register(app)
doctor_command.register(app)
projection_commands.register(app)
sql_command.register(app)
simulator_commands.register(app)
for _command in app.registered_commands:
    if _command.cls in (None, TyperCommand):
        _command.cls = CaptureCommand


def _version() -> str:
    try:
        return version("capture")
    except PackageNotFoundError:  # a checkout that was not installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"capture {_version()}")
        raise typer.Exit()


@app.callback()
def _capture(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print capture's version and exit."
        ),
    ] = False,
) -> None:
    """Capture what users say to ElevenLabs Agents into your own database."""
