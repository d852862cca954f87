"""Reading the log in order, from any position, while a writer may be appending.

:func:`iter_log` yields :class:`~ingest.log.envelope.LogLine` objects in seq order.
A line without its newline at the very end of the log is a write in progress
(or a crash's torn tail, which the next writer moves aside): it is not
yielded. A complete line that does not decode is skipped and counted in
:class:`ReadStats` so the caller can report it.

"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from ingest.errors import LogError
from ingest.log.envelope import LineError, LogLine, decode_line
from ingest.log.segments import first_seq_of, list_segments


__all__ = ["ReadStats", "find_line", "iter_log", "last_seq_of", "open_segment"]

_SEQ_PREFIX = b'{"seq":'


@dataclass
class ReadStats:
    """What a read saw besides good lines.

    Attributes:
        corrupt: (segment name, byte offset) of each complete line that did
            not decode.
        partial_tail: Whether the read stopped at a line without newline.

    """

    corrupt: list[tuple[str, int]] = field(default_factory=list)
    partial_tail: bool = False


def open_segment(path: Path) -> IO[bytes]:
    """Open a segment for reading, plain or compressed."""
    try:
        if path.name.endswith(".gz"):
            return cast(IO[bytes], gzip.open(path, "rb"))
        if path.name.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raise LogError(
                    f"{path.name} is zstd-compressed; install the 'zstandard' package to read it"
                ) from None
            return cast(IO[bytes], zstandard.open(path, "rb"))
        return path.open("rb")
    except OSError as exc:
        raise LogError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _quick_seq(raw: bytes) -> int | None:
    if not raw.startswith(_SEQ_PREFIX):
        return None
    end = raw.find(b",", len(_SEQ_PREFIX))
    try:
        return int(raw[len(_SEQ_PREFIX) : end])
    except ValueError:
        return None


def iter_log(events_dir: Path, after_seq: int = 0, stats: ReadStats | None = None) -> Iterator[LogLine]:
    """Yield the log's lines with ``seq > after_seq``, in order.

    Memory stays flat: segments are streamed line by line. Segments created
    after the call started are not read; call again to continue.

    """
    stats = stats if stats is not None else ReadStats()
    segments = list_segments(events_dir)
    start = 0
    for i, path in enumerate(segments):
        first = first_seq_of(path)
        if first is not None and first <= after_seq + 1:
            start = i
    for index in range(start, len(segments)):
        path = segments[index]
        last_segment = index == len(segments) - 1
        offset = 0
        with open_segment(path) as f:
            for raw in f:
                here = offset
                offset += len(raw)
                if not raw.endswith(b"\n"):
                    stats.partial_tail = True
                    if not last_segment:
                        stats.corrupt.append((path.name, here))
                    break
                quick = _quick_seq(raw)
                if quick is not None and quick <= after_seq:
                    continue
                try:
                    line = decode_line(raw)
                except LineError:
                    stats.corrupt.append((path.name, here))
                    continue
                if line.seq <= after_seq:
                    continue
                yield line


def last_seq_of(path: Path) -> int:
    """Return the seq of the last complete, valid line of one segment (its first seq - 1 if none)."""
    first = first_seq_of(path)
    last = (first or 1) - 1
    with open_segment(path) as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                last = decode_line(raw).seq
            except LineError:
                continue
    return last


# Below this many bytes, a segment is searched line by line.
_SEARCH_WINDOW = 64 * 1024


def _seq_after(f: IO[bytes], offset: int) -> tuple[int, int] | None:
    """(start, seq) of the first line starting after ``offset`` (the line at 0 if ``offset`` is 0)."""
    f.seek(offset)
    if offset:
        f.readline()  # the rest of the line ``offset`` falls in
    start = f.tell()
    raw = f.readline()
    if not raw.endswith(b"\n"):
        return None
    seq = _quick_seq(raw)
    return (start, seq) if seq is not None else None


def find_line(events_dir: Path, seq: int) -> LogLine | None:
    """Return the line with ``seq``, or ``None`` when the log does not hold it (whole and valid).

    Cheap in a plain segment however large: a binary search on byte offsets
    (lines are in seq order), then a short scan. A compressed segment is read
    from its start.

    """
    holder = None
    for path in list_segments(events_dir):
        first = first_seq_of(path)
        if first is not None and first <= seq:
            holder = path
    if holder is None:
        return None
    low = 0
    if holder.suffix == ".jsonl":
        with holder.open("rb") as f:
            high = f.seek(0, 2)
            while high - low > _SEARCH_WINDOW:
                middle = (low + high) // 2
                found = _seq_after(f, middle)
                if found is None or found[1] > seq:
                    high = middle
                else:
                    low = found[0]
    with open_segment(holder) as f:
        if low:
            f.seek(low)
        for raw in f:
            if not raw.endswith(b"\n"):
                return None
            quick = _quick_seq(raw)
            if quick is not None and quick < seq:
                continue
            if quick is not None and quick > seq:
                return None
            try:
                line = decode_line(raw)
            except LineError:
                continue
            if line.seq == seq:
                return line
            if line.seq > seq:
                return None
    return None
