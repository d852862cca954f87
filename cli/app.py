"""The ``capture`` typer application; each module registers its commands."""

from __future__ import annotations

import typer

from cli import (
    backfill_command,
    demo_command,
    ingest_command,
    monitor_command,
    projection_commands,
    relay_command,
    simulate_command,
    webhook_command,
)


app = typer.Typer(
    name="capture",
    help="Capture what users say to ElevenLabs Agents into your own database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ingest_command.register(app)
simulate_command.register(app)
projection_commands.register(app)
demo_command.register(app)
webhook_command.register(app)
backfill_command.register(app)
monitor_command.register(app)
relay_command.register(app)


def main() -> None:
    """Run the command line (the ``capture`` console script)."""
    app()
