"""The ``capture`` typer application; each module registers its group of commands."""

from __future__ import annotations

import typer

from cli import ingest_commands, log_commands, projection_commands, relay_command, simulator_commands


app = typer.Typer(
    name="capture",
    help="Capture what users say to ElevenLabs Agents into your own database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ingest_commands.register(app)
relay_command.register(app)
log_commands.register(app)
projection_commands.register(app)
simulator_commands.register(app)


def main() -> None:
    """Run the command line (the ``capture`` console script)."""
    app()
