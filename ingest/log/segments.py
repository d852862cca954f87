"""Segment files: their names and when to roll to a new one. Pure functions.

A segment is named after the seq of its first line, zero-padded so that names
sort in log order (Kafka's convention): ``00000000000000000001.jsonl``.
Closed segments may be compressed in place (``.jsonl.gz``, ``.jsonl.zst``);
DuckDB and the reader accept both.

"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "RotationPolicy",
    "first_seq_of",
    "list_segments",
    "segment_name",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE = 3600.0

_NAME = re.compile(r"^(\d{20})\.jsonl(\.gz|\.zst)?$")


def segment_name(first_seq: int) -> str:
    """Return the file name of the segment whose first line has ``first_seq``."""
    return f"{first_seq:020d}.jsonl"


def first_seq_of(path: Path) -> int | None:
    """Return the first seq a segment's name announces, or ``None`` if it is no segment."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def list_segments(events_dir: Path) -> list[Path]:
    """Return the segments in ``events_dir`` in log order (sidecar files excluded)."""
    if not events_dir.is_dir():
        return []
    found = [p for p in events_dir.iterdir() if first_seq_of(p) is not None]
    return sorted(found, key=lambda p: p.name)


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
