"""Following the log as it grows: new complete lines since the last call, across rotation.

:class:`LogTail` keeps an open segment and a byte offset, so each call reads
only what was appended since the previous one (``ingest.reader.iter_log``
re-reads the active segment from its start, which is fine once, not 50 times
a second). It never opens a segment for writing and takes no lock.

"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ingest.envelope import LineError, LogLine, decode_line
from ingest.reader import open_segment
from ingest.segments import first_seq_of, list_segments


__all__ = ["LogTail", "TailRead"]

_CHUNK = 1 << 20
_SEQ_PREFIX = b'{"seq":'


@dataclass
class TailRead:
    """What one :meth:`LogTail.read` found.

    Attributes:
        lines: Valid lines, in log order, with seq above the tail's start.
        invalid: Where the complete lines that did not decode are (and the
            torn end of a segment the writer rolled away from): the first seq
            of their segment and their byte offset.

    """

    lines: list[LogLine] = field(default_factory=list)
    invalid: list[tuple[int, int]] = field(default_factory=list)


def _quick_seq(raw: bytes) -> int | None:
    if not raw.startswith(_SEQ_PREFIX):
        return None
    end = raw.find(b",", len(_SEQ_PREFIX))
    try:
        return int(raw[len(_SEQ_PREFIX) : end])
    except ValueError:
        return None


class LogTail:
    """Read a log's new lines incrementally, from a seq on.

    Call :meth:`close` when done. Not thread-safe.
    """

    def __init__(self, events_dir: Path, after_seq: int = 0) -> None:
        self.events_dir = events_dir
        self._file: IO[bytes] | None = None
        self._segment: Path | None = None
        self._pending = b""
        self._pending_offset = 0  # where _pending starts in the segment
        self._skip_to = after_seq
        self.seek(after_seq)

    def seek(self, after_seq: int) -> None:
        """Restart so that the next lines read are those with seq above ``after_seq``."""
        self.close()
        self._skip_to = after_seq
        segments = list_segments(self.events_dir)
        chosen: Path | None = None
        for path in segments:
            first = first_seq_of(path)
            if first is not None and first <= after_seq + 1:
                chosen = path
        if chosen is None and segments:
            chosen = segments[0]
        if chosen is not None:
            self._open(chosen)

    def _open(self, path: Path) -> None:
        self._file = open_segment(path)
        self._segment = path
        self._pending = b""
        self._pending_offset = 0

    def _segment_seq(self) -> int:
        return (first_seq_of(self._segment) if self._segment is not None else None) or 0

    def _successor(self) -> Path | None:
        current = first_seq_of(self._segment) if self._segment is not None else None
        for path in list_segments(self.events_dir):
            first = first_seq_of(path)
            if first is not None and (current is None or first > current):
                return path
        return None

    def _take_lines(self, out: TailRead, max_lines: int) -> None:
        data = self._pending
        start = 0
        while len(out.lines) < max_lines:
            end = data.find(b"\n", start)
            if end < 0:
                break
            raw = data[start : end + 1]
            start = end + 1
            quick = _quick_seq(raw)
            if quick is not None and quick <= self._skip_to:
                continue
            try:
                line = decode_line(raw)
            except LineError:
                out.invalid.append((self._segment_seq(), self._pending_offset + start - len(raw)))
                continue
            if line.seq <= self._skip_to:
                continue
            out.lines.append(line)
        self._pending = data[start:]
        self._pending_offset += start

    def read(self, max_lines: int = 10_000) -> TailRead:
        """Return up to ``max_lines`` new complete lines (fewer when the log has no more yet)."""
        out = TailRead()
        if self._file is None:
            self.seek(self._skip_to)
            if self._file is None:
                return out
        while True:
            self._take_lines(out, max_lines)
            if len(out.lines) >= max_lines:
                return out
            assert self._file is not None
            chunk = self._file.read(_CHUNK)
            if chunk:
                self._pending += chunk
                continue
            successor = self._successor()
            if successor is None:
                return out
            # A successor exists, so the writer closed this segment before
            # creating it: one more read reaches this segment's true end.
            chunk = self._file.read()
            if chunk:
                self._pending += chunk
                continue
            if self._pending:
                out.invalid.append((self._segment_seq(), self._pending_offset))  # a closed segment's torn end
            self._file.close()
            self._open(successor)

    def close(self) -> None:
        """Close the open segment (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
