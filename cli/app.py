"""The ``capture`` console script: cheap to import, so that Ctrl-C is never a traceback, not even at startup.

The typer application is :mod:`cli.commands`; it is imported inside
:func:`main`, where an interrupt while it loads ends the command as one
anywhere else does: one line and exit 130.

"""

from __future__ import annotations

import io
import sys


__all__ = ["main"]

#: The exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def _utf8(stream: object) -> None:
    # Whatever the console's code page (a redirected stdout on Windows is
    # cp1252), capture writes UTF-8; a character that cannot be written is
    # escaped, never an error.
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(encoding="utf-8", errors="backslashreplace")


def main() -> None:
    """Run the command line (the ``capture`` console script)."""
    try:
        _utf8(sys.stdout)
        _utf8(sys.stderr)
        from cli.commands import app

        app()
    except KeyboardInterrupt:
        # Only before a command runs (while capture loads): a command's own
        # interrupt is handled by cli.command.
        sys.stderr.write("interrupted\n")
        sys.exit(INTERRUPTED)
