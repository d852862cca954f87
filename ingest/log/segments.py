"""Segment files: their names, finding them, and when to roll to a new one.

A segment is named after the seq of its first line, zero-padded so that names
sort in log order (Kafka's convention): ``00000000000000000001.jsonl``.
Closed segments may be compressed in place (``.jsonl.gz``, ``.jsonl.zst``);
DuckDB and the reader accept both.

Anything in ``events/`` named like a segment must be one: a name whose
number does not fit a seq (64-bit signed, as SQLite and DuckDB store it), a
folder, a file that cannot be opened, or a compressed file that does not
start as its format does is :class:`~ingest.errors.LogError` naming the file
(:func:`list_segments`, :func:`check_segments`), never a traceback later.

"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import LogError


__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "MAX_SEQ",
    "RotationPolicy",
    "check_segments",
    "first_seq_of",
    "find_segment",
    "list_segments",
    "segment_name",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE = 3600.0

#: The largest seq: SQLite's INTEGER and DuckDB's BIGINT are 64-bit signed.
MAX_SEQ = 2**63 - 1

_NAME = re.compile(r"^(\d{20})\.jsonl(\.gz|\.zst)?$")
# The first bytes of a file in each compressed format.
_MAGIC = {".gz": b"\x1f\x8b", ".zst": b"\x28\xb5\x2f\xfd"}


def segment_name(first_seq: int) -> str:
    """Return the file name of the segment whose first line has ``first_seq``."""
    return f"{first_seq:020d}.jsonl"


def first_seq_of(path: Path) -> int | None:
    """Return the first seq a segment's name announces, or ``None`` if it is no segment."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def _junk(path: Path, reason: str) -> LogError:
    return LogError(f"{path} {reason}; move it out of {path.parent}")


def list_segments(events_dir: Path) -> list[Path]:
    """Return the segments in ``events_dir`` in log order (sidecar files excluded).

    Cheap (one directory listing): call it as often as needed.

    Raises:
        LogError: an entry named like a segment is a folder or not a regular
            file, or its number is larger than :data:`MAX_SEQ`.

    """
    if not events_dir.is_dir():
        return []
    found = []
    try:
        with os.scandir(events_dir) as entries:
            for entry in entries:
                match = _NAME.match(entry.name)
                if match is None:
                    continue
                path = events_dir / entry.name
                if int(match.group(1)) > MAX_SEQ:
                    raise _junk(path, "is no segment: its number is larger than a seq can be")
                if entry.is_dir():
                    raise _junk(path, "is a folder, not a segment")
                if not entry.is_file():
                    raise _junk(path, "is not a regular file (a broken link, a pipe?), so no segment")
                found.append(path)
    except OSError as exc:
        raise LogError(f"cannot list {events_dir}: {exc.strerror or exc}") from exc
    return sorted(found, key=lambda p: p.name)


def find_segment(events_dir: Path, first_seq: int) -> Path | None:
    """Return the segment whose first seq is ``first_seq``, plain or compressed, if there is one."""
    for path in list_segments(events_dir):
        if first_seq_of(path) == first_seq:
            return path
    return None


def check_segments(events_dir: Path) -> list[Path]:
    """Return :func:`list_segments`, having checked that each can be opened and read as its name says.

    Opens each segment and reads its first bytes (a compressed one must start
    as its format does): run it once when a command starts, so that junk in
    ``events/`` is one line naming the file before anything else is done.

    Raises:
        LogError: as :func:`list_segments`, or a segment cannot be opened, or a
            compressed one is not in its format.

    """
    segments = list_segments(events_dir)
    for path in segments:
        try:
            with path.open("rb") as f:
                head = f.read(4)
        except OSError as exc:
            raise _junk(path, f"cannot be read ({exc.strerror or exc})") from exc
        magic = _MAGIC.get(path.suffix)
        if magic is not None and head and not head.startswith(magic):
            raise _junk(path, f"is not {path.suffix[1:]}-compressed, as its name says")
    return segments


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """When the active segment is closed and a new one started.

    Attributes:
        max_bytes: Roll once the segment holds at least this many bytes.
        max_age: Roll once the segment's first line is this many seconds old.

    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_age: float = DEFAULT_MAX_AGE

    def should_rotate(self, size: int, age: float) -> bool:
        """Decide whether to roll before appending to a segment of ``size`` bytes and ``age`` s.

        An empty segment is never rolled.

        """
        return size > 0 and (size >= self.max_bytes or age >= self.max_age)
