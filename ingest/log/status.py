"""What a data dir's log holds, read without disturbing a running writer, and what is wrong with it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.log.envelope import LineError, decode_line
from ingest.log.lock import LockHolder, probe_lock
from ingest.log.reader import last_seq_of, line_seq, open_segment
from ingest.log.segments import check_segments, first_seq_of
from ingest.log.writer import events_dir


__all__ = ["LogStatus", "SegmentSpan", "log_status", "read_last_line"]

_CHUNK = 64 * 1024


def read_last_line(path: Path) -> bytes | None:
    """Return the last complete line of a segment, newline included.

    A plain segment is read backwards from its end; a compressed one is read
    whole (its end cannot be found otherwise).

    Raises:
        LogError: the segment cannot be read (a compressed one is damaged).

    """
    with open_segment(path) as f:
        if path.suffix != ".jsonl":
            last = None
            for raw in f:
                if raw.endswith(b"\n"):
                    last = raw
            return last
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


@dataclass(frozen=True, slots=True)
class SegmentSpan:
    """The seqs one segment holds, as its name and its last line tell.

    Attributes:
        name: The file name.
        first_seq: The seq its name announces.
        last_seq: The seq of its last complete line (``first_seq - 1`` if it has none).
        last_received_at: When that line arrived (``None`` if it is damaged).

    """

    name: str
    first_seq: int
    last_seq: int
    last_received_at: str | None


def _span(path: Path) -> SegmentSpan:
    first = first_seq_of(path) or 0
    raw = read_last_line(path)
    if raw is None:
        return SegmentSpan(path.name, first, first - 1, None)
    try:
        line = decode_line(raw)
    except LineError:
        seq = line_seq(raw)  # damaged, but its seq still reads
        return SegmentSpan(path.name, first, last_seq_of(path) if seq is None else seq, None)
    return SegmentSpan(path.name, first, line.seq, line.received_at)


def _gaps(spans: list[SegmentSpan]) -> tuple[list[tuple[int, int]], list[str]]:
    """The seqs missing between segments, as (after_seq, next_seq) pairs, and a sentence for each problem."""
    gaps: list[tuple[int, int]] = []
    problems: list[str] = []
    if spans and spans[0].first_seq > 1:
        gaps.append((0, spans[0].first_seq))
        problems.append(
            f"the log starts at seq {spans[0].first_seq} ({spans[0].name}): seq 1..{spans[0].first_seq - 1} "
            "are not in it (segments removed?)"
        )
    for before, after in zip(spans, spans[1:], strict=False):
        if before.last_seq + 1 < after.first_seq:
            gaps.append((before.last_seq, after.first_seq))
            problems.append(
                f"seq {before.last_seq + 1}..{after.first_seq - 1} missing: {before.name} ends at seq "
                f"{before.last_seq} and {after.name} starts at {after.first_seq} (a segment cut short or gone)"
            )
        elif before.last_seq >= after.first_seq:
            problems.append(
                f"{before.name} ends at seq {before.last_seq}, past the start of {after.name} (seq {after.first_seq})"
            )
    return gaps, problems


@dataclass(frozen=True)
class LogStatus:
    """A summary of one data dir's log.

    Attributes:
        data_dir: The data dir.
        segments: How many segment files.
        bytes: Their total size.
        lines: How many lines (the seqs each segment spans, added up).
        first_seq: The seq of the first line.
        last_seq: The seq of the last complete line.
        last_received_at: When that line arrived.
        quarantined: Sidecar files holding torn tails cut at recovery.
        writer: Who holds the writer lock, if anyone (an ingest is running).
        gaps: Seqs missing between segments, as ``(after_seq, next_seq)``:
            a segment cut short or gone (damaged lines inside a segment are
            what the projection reports).
        problems: One sentence per problem found.

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
    gaps: list[tuple[int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["writer"] = asdict(self.writer) if self.writer else None
        return data


def log_status(data_dir: Path) -> LogStatus:
    """Summarise ``data_dir``'s log and check that its segments follow each other.

    Cheap for plain segments (their last line is read backwards); a
    compressed segment is read whole to find its last line.

    Raises:
        LogError: ``events/`` holds junk named like a segment, or a segment
            cannot be read (the message names it).

    """
    folder = events_dir(data_dir)
    segments = check_segments(folder)
    quarantined = sorted(p.name for p in folder.glob("*.torn-*")) if folder.is_dir() else []
    size = sum(p.stat().st_size for p in segments)
    spans = [_span(path) for path in segments]
    gaps, problems = _gaps(spans)
    lines = sum(max(0, span.last_seq - span.first_seq + 1) for span in spans)
    last = next((span for span in reversed(spans) if span.last_seq >= span.first_seq), None)
    return LogStatus(
        str(data_dir),
        len(segments),
        size,
        lines,
        spans[0].first_seq if lines else None,
        last.last_seq if last else None,
        last.last_received_at if last else None,
        quarantined,
        probe_lock(data_dir),
        gaps,
        problems,
    )
