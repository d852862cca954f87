"""Reading the log in order, from any position, while a writer may be appending.

:func:`iter_log` yields :class:`~ingest.log.envelope.LogLine` objects in seq order.
A line without its newline at the very end of the log is a write in progress
(or a crash's torn tail, which the next writer moves aside): it is not
yielded. A complete line that does not decode is skipped and counted in
:class:`ReadStats` so the caller can report it.

"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from ingest.errors import LogError
from ingest.log.envelope import LineError, LogLine, decode_line
from ingest.log.segments import find_segment, first_seq_of, list_segments, segment_name


__all__ = [
    "DamagedLine",
    "ReadStats",
    "SegmentFile",
    "damaged_line",
    "find_line",
    "iter_log",
    "last_seq_of",
    "line_seq",
    "open_segment",
    "read_line_ending_at",
]

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


def _read_errors() -> tuple[type[Exception], ...]:
    errors: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


_READ_ERRORS = _read_errors()


class SegmentFile:
    """A segment open for reading (plain or compressed): a binary file whose errors name the segment.

    Every way a damaged file fails to read (``OSError``, a truncated or
    corrupt compressed stream) is :class:`~ingest.errors.LogError` saying
    which segment.
    """

    __slots__ = ("path", "_file")

    def __init__(self, path: Path, file: IO[bytes]) -> None:
        self.path = path
        self._file = file

    def _error(self, exc: BaseException) -> LogError:
        return LogError(f"cannot read {self.path}: {getattr(exc, 'strerror', None) or exc}")

    def __iter__(self) -> Iterator[bytes]:
        """Yield its lines, each with its newline (but the last, if it has none)."""
        try:
            yield from self._file
        except _READ_ERRORS as exc:
            raise self._error(exc) from exc

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.read(size)
        except _READ_ERRORS as exc:
            raise self._error(exc) from exc

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return self._file.seek(offset, whence)
        except _READ_ERRORS as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> SegmentFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_segment(path: Path) -> SegmentFile:
    """Open a segment for reading, plain or compressed.

    Raises:
        LogError: it cannot be opened (reading it later raises the same, naming it).

    """
    try:
        if path.name.endswith(".gz"):
            return SegmentFile(path, cast(IO[bytes], gzip.open(path, "rb")))
        if path.name.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raise LogError(
                    f"{path.name} is zstd-compressed; install the 'zstandard' package to read it"
                ) from None
            return SegmentFile(path, cast(IO[bytes], zstandard.open(path, "rb")))
        return SegmentFile(path, path.open("rb"))
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


def line_seq(raw: bytes) -> int | None:
    """The seq a line starts with as the writer writes it (``{"seq":N,``), damaged or not; ``None`` if it does not."""
    return _quick_seq(raw)


_WINDOW = 4096
_MAX_LINE = 64 << 20  # far more than the longest line (a 16 MiB binary frame in base64)


def read_line_ending_at(path: Path, end: int) -> bytes | None:
    """Return the line of a segment that ends at byte ``end`` (its newline the byte before), newline included.

    Reads backwards from ``end`` in a plain segment; a compressed one is read
    from its start. Offsets count uncompressed bytes.

    Returns:
        The line, or ``None`` if the segment is shorter or its byte
        ``end - 1`` is not a newline.

    Raises:
        LogError: the segment cannot be read.

    """
    if end <= 0:
        return None
    with open_segment(path) as f:
        if path.suffix != ".jsonl":
            return _line_ending_at_streamed(f, end)
        window = _WINDOW
        while True:
            start = max(0, end - window)
            f.seek(start)
            data = f.read(end - start)
            if len(data) < end - start or not data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n", 0, len(data) - 1)
            if cut >= 0 or start == 0:
                return data[cut + 1 :]
            window *= 4


def _line_ending_at_streamed(f: SegmentFile, end: int) -> bytes | None:
    read = 0
    line = b""
    while read < end:
        chunk = f.read(min(1 << 20, end - read))
        if not chunk:
            return None
        read += len(chunk)
        # Keep only the bytes after the last newline before `end - 1`.
        cut = chunk.rfind(b"\n", 0, len(chunk) - 1 if read == end else len(chunk))
        line = chunk[cut + 1 :] if cut >= 0 else line + chunk
        if len(line) > _MAX_LINE:
            return None
    return line if line.endswith(b"\n") else None


@dataclass(frozen=True, slots=True)
class DamagedLine:
    """A complete line that is not a valid log line (readers skip it), and where it is.

    Attributes:
        segment: The file name of its segment.
        offset: The byte offset of its first byte (in the uncompressed bytes).
        seq: The seq its place gives it: one more than the seq the line
            before starts with (its segment's first seq, for a first line);
            ``None`` when that is damaged too.

    """

    segment: str
    offset: int
    seq: int | None

    def __str__(self) -> str:
        return f"seq {'?' if self.seq is None else self.seq} ({self.segment}, byte {self.offset:,})"


def damaged_line(events_dir: Path, segment_first_seq: int, offset: int) -> DamagedLine:
    """Describe the damaged line at ``offset`` of the segment whose first seq is ``segment_first_seq``.

    Raises:
        LogError: the segment cannot be read.

    """
    path = find_segment(events_dir, segment_first_seq)
    if path is None:
        return DamagedLine(segment_name(segment_first_seq), offset, None)
    if offset == 0:
        return DamagedLine(path.name, offset, segment_first_seq)
    before = read_line_ending_at(path, offset)
    seq = line_seq(before) if before is not None else None
    return DamagedLine(path.name, offset, None if seq is None else seq + 1)
