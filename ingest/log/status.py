"""What a data dir's log holds, read without disturbing a running writer."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingest.log.envelope import LineError, decode_line
from ingest.log.lock import LockHolder, probe_lock
from ingest.log.reader import last_seq_of
from ingest.log.segments import first_seq_of, list_segments
from ingest.log.writer import events_dir


__all__ = ["LogStatus", "log_status", "read_last_line"]

_CHUNK = 64 * 1024


def read_last_line(path: Path) -> bytes | None:
    """Return the last complete line of a plain segment, reading backwards from its end."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        buffer = b""
        position = end
        while position > 0:
            step = min(_CHUNK, position)
            position -= step
            f.seek(position)
            buffer = f.read(step) + buffer
            complete_end = buffer.rfind(b"\n")
            if complete_end < 0:
                continue
            start = buffer.rfind(b"\n", 0, complete_end)
            if start >= 0 or position == 0:
                return buffer[start + 1 : complete_end + 1]
        return None


@dataclass(frozen=True)
class LogStatus:
    """A summary of one data dir's log.

    Attributes:
        data_dir: The data dir.
        segments: How many segment files.
        bytes: Their total size.
        lines: How many lines (seq is gap-free, so last seq - first seq + 1).
        first_seq: The seq of the first line.
        last_seq: The seq of the last complete line.
        last_received_at: When that line arrived.
        quarantined: Sidecar files holding torn tails cut at recovery.
        writer: Who holds the writer lock, if anyone (an ingest is running).

    """

    data_dir: str
    segments: int
    bytes: int
    lines: int
    first_seq: int | None
    last_seq: int | None
    last_received_at: str | None
    quarantined: list[str]
    writer: LockHolder | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["writer"] = asdict(self.writer) if self.writer else None
        return data


def log_status(data_dir: Path) -> LogStatus:
    """Summarise ``data_dir``'s log; cheap however large the log is."""
    folder = events_dir(data_dir)
    segments = list_segments(folder)
    quarantined = sorted(p.name for p in folder.glob("*.torn-*")) if folder.is_dir() else []
    size = sum(p.stat().st_size for p in segments)
    first_seq = first_seq_of(segments[0]) if segments else None
    last_seq: int | None = None
    last_at: str | None = None
    for segment in reversed(segments):
        if segment.suffix == ".jsonl":
            raw = read_last_line(segment)
            if raw is None:
                continue
            try:
                line = decode_line(raw)
            except LineError:
                last_seq = last_seq_of(segment)
                break
            last_seq, last_at = line.seq, line.received_at
        else:
            last_seq = last_seq_of(segment)
        break
    lines = last_seq - first_seq + 1 if last_seq is not None and first_seq is not None else 0
    return LogStatus(
        str(data_dir),
        len(segments),
        size,
        max(lines, 0),
        first_seq if lines > 0 else None,
        last_seq if lines > 0 else None,
        last_at,
        quarantined,
        probe_lock(data_dir),
    )
