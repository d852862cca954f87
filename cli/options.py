"""Options shared by several commands, declared once, and the parsers of option values."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ingest.errors import ConfigError
from ingest.log.writer import FsyncPolicy, events_dir


__all__ = [
    "AgentId",
    "BaseUrl",
    "DataDir",
    "DbPath",
    "Fsync",
    "FsyncInterval",
    "MetricsHost",
    "MetricsPort",
    "NoProject",
    "Quiet",
    "SegmentAge",
    "SegmentSize",
    "Verbose",
    "parse_moment",
    "parse_size",
    "parse_vars",
    "require_log",
]

AgentId = Annotated[
    str | None,
    typer.Option("--agent-id", envvar="AGENT_ID", metavar="ID", help="The agent's id.", show_default=False),
]

BaseUrl = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar="ELEVENLABS_BASE_URL",
        metavar="URL",
        help="API host; residency hosts work (https://api.eu.residency.elevenlabs.io).",
    ),
]

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="CAPTURE_DATA_DIR",
        metavar="DIR",
        help="Folder holding the log (events/) and the projections.",
        file_okay=False,
    ),
]

DbPath = Annotated[
    Path | None,
    typer.Option(
        "--db",
        envvar="WHATSAPP_DB_PATH",
        metavar="FILE",
        dir_okay=False,
        show_default=False,
        help="SQLite file of the user_texts table (default: <data dir>/whatsapp_storage.db).",
    ),
]

Fsync = Annotated[
    FsyncPolicy,
    typer.Option(
        "--fsync",
        help="When lines are forced to disk. A killed process loses nothing in any mode; on power "
        "failure: 'always' loses nothing (each line fsynced before the next frame; slowest), "
        "'interval' loses at most the last --fsync-interval (200 ms), fsynced off the receive path; "
        "'never' loses what the OS had not written back (typically up to 30 s).",
    ),
]

FsyncInterval = Annotated[
    float,
    typer.Option(
        "--fsync-interval",
        min=0.001,
        max=0.2,
        metavar="SECONDS",
        help="Seconds between fsyncs for 'interval'.",
    ),
]

SegmentSize = Annotated[
    str,
    typer.Option("--segment-size", metavar="SIZE", help="Roll to a new segment at this size (64MiB, 500kB)."),
]

SegmentAge = Annotated[
    float,
    typer.Option(
        "--segment-age", min=0.001, metavar="SECONDS", help="Roll to a new segment after this many seconds."
    ),
]

MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        metavar="PORT",
        help="Serve Prometheus metrics (/metrics), /healthz and /readyz on this port (off by default).",
        show_default=False,
    ),
]

MetricsHost = Annotated[
    str,
    typer.Option("--metrics-host", metavar="HOST", help="Interface the metrics endpoint listens on."),
]

NoProject = Annotated[
    bool, typer.Option("--no-project", help="Do not update the SQLite user_texts table live.")
]

Verbose = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        help="Log more: -v capture's own detail, -vv the libraries' too (websockets, aiohttp).",
    ),
]

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Log only warnings and errors.")]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str, flag: str = "--segment-size") -> int:
    """Parse ``64MiB``, ``500kb`` or ``1048576`` into bytes.

    Raises:
        ConfigError: the text is not a size of at least 1 byte (naming ``flag``).

    """
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{flag} {text!r} is not a size; use e.g. 64MiB or 1000000")
    number = float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
    if number < 1:
        raise ConfigError(f"{flag} must be at least 1 byte")
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


def parse_moment(text: str, now: float, flag: str = "--since") -> int:
    """Parse a moment as Unix seconds: ``1767225600``, ``2026-01-01``, ``2026-01-01T12:00:00+01:00`` or an age (``7d``, ``12h``, ``30m``).

    A date or time without an offset is UTC; an age counts back from ``now``.

    Raises:
        ConfigError: the text is none of those.

    """
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    age = _AGE.match(stripped)
    if age:
        return int(now - float(age.group(1)) * _AGE_UNITS[age.group(2).lower()])
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a moment; use e.g. 2026-01-01, 2026-01-01T12:00:00Z, "
            "1767225600 (Unix seconds) or an age like 7d, 12h, 30m"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def require_log(data_dir: Path) -> None:
    """Check that ``data_dir`` holds a log, for the commands that read one (they never create it).

    Raises:
        ConfigError: there is no ``events/`` folder in ``data_dir`` (a misspelled ``--data-dir``).

    """
    if not events_dir(data_dir).is_dir():
        where = "does not exist" if not data_dir.exists() else f"has no {events_dir(data_dir).name}/ folder"
        raise ConfigError(
            f"no log in {data_dir}: it {where}; check --data-dir or CAPTURE_DATA_DIR "
            "(the commands that write the log create it: ingest, webhook, backfill, monitor, relay)"
        )
