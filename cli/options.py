"""Options shared by several commands, declared once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ingest.errors import ConfigError


__all__ = ["DataDir", "DbPath", "parse_size", "parse_vars"]

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="CAPTURE_DATA_DIR",
        help="Folder holding the log (events/) and the projections.",
        file_okay=False,
    ),
]

DbPath = Annotated[
    Path | None,
    typer.Option(
        "--db",
        envvar="WHATSAPP_DB_PATH",
        dir_okay=False,
        show_default=False,
        help="SQLite file of the user_texts table (default: <data dir>/whatsapp_storage.db).",
    ),
]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


def parse_size(text: str) -> int:
    """Parse ``64MiB``, ``500kb`` or ``1048576`` into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"--segment-size {text!r} is not a size; use e.g. 64MiB or 1000000")
    number = float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
    if number < 1:
        raise ConfigError("--segment-size must be at least 1 byte")
    return int(number)


def parse_vars(pairs: list[str]) -> dict[str, str | int | float | bool]:
    """Parse ``--var name=value`` pairs; values are sent as strings (``0123`` stays ``"0123"``)."""
    result: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--var {pair!r} is not name=value")
        result[name.strip()] = value
    return result
