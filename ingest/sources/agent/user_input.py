"""Typed user text for ``--input``: lines from a file or standard input, read off the event loop."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from ingest.errors import ConfigError


__all__ = ["open_input", "read_lines"]


def open_input(spec: str) -> TextIO:
    """Open ``spec`` (a path, or ``-`` for standard input) as UTF-8 text.

    Raises:
        ConfigError: the file cannot be opened.

    """
    if spec == "-":
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(encoding="utf-8", errors="replace")
        return sys.stdin
    try:
        return Path(spec).open(encoding="utf-8", errors="replace", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read --input {spec}: {exc.strerror or exc}") from exc


async def read_lines(stream: TextIO) -> AsyncIterator[str]:
    """Yield the lines of ``stream`` as they become available, without blocking the loop."""
    while True:
        line = await asyncio.to_thread(stream.readline)
        if not line:
            return
        yield line
