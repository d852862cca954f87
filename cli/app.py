"""The ``capture`` typer application (commands are registered by their modules)."""

from __future__ import annotations

import typer


app = typer.Typer(
    name="capture",
    help="Capture what users say to ElevenLabs Agents into your own database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main() -> None:
    """Run the command line (the ``capture`` console script)."""
    app()
