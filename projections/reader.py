"""Reading the log for the projections: the catch-up :func:`scan` and the live :class:`LogTail`.

Both hand the fold (:func:`projections.rule.fold`) one item per line, in log order:

* a :class:`~ingest.log.envelope.LogLine` for a line the rule may read (a live
  user turn, an init frame, a ``connection_closed`` record, a REST body, a
  webhook delivery), decoded and checked (JSON, ``crc32``);
* a ``range`` of seqs for consecutive lines the rule does not read: no
  :class:`~ingest.log.envelope.LogLine` is built for them. Most of a log is
  such lines (pings, agent text, tentative transcripts).

Which lines the rule may read is told from their bytes by three patterns
(:func:`is_candidate`), built from :data:`~projections.rule.LIVE_RULE_TYPES` and
:data:`~projections.rule.BODY_SOURCES`: a line that starts as the writer writes
it (``{"seq":N,``) and does not match it gives no row, so it is not checked
beyond its seq. Every other line is decoded: a line the rule reads must decode
(JSON, its frame matches its ``crc32``, its seq is the one it starts with);
any other line must be a JSON object with an integer seq. A line that is not
is not handed on; its position (the segment's first seq, byte offset) is
reported so that it is counted once. A line without its newline at the very
end of the log is a write in progress and is left for the next read; a closed
segment's torn end is an invalid line. A line that repeats the ``source`` or
``type`` key has no agreed meaning (parsers differ on which copy wins).

:func:`scan` has DuckDB read each uncompressed segment of 1 MiB or more
(:data:`DUCKDB_MIN_BYTES`) in a worker thread, in native code that does not
hold the GIL, while the caller folds the segment before: DuckDB hands on only
the lines that match :func:`is_candidate` or do not continue the seq of the line
before, with the row number and byte offset of each, and the caller rebuilds
the runs of the other lines from them. Before a segment's lines are handed on,
what DuckDB read is checked against the file (every byte accounted for, no
carriage return, which DuckDB's reader takes for a line end); a segment that
fails the check, a compressed one and a small one are read line by line in
Python, by the same rule. Neither reader opens a segment for writing or takes
a lock.

Both note where each item they hand on ends (:class:`Marks`), so that a batch's
position can be stored with the :class:`Anchor` of its last line: what
:func:`anchor_problem` checks the log still holds before reading on.

"""

from __future__ import annotations

import io
import os
import re
import zlib
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ingest.errors import LogError
from ingest.log.envelope import LineError, LogLine, decode_line
from ingest.log.reader import SegmentFile, last_seq_of, open_segment, read_line_ending_at
from ingest.log.segments import find_segment, first_seq_of, list_segments, segment_name
from ingest.log.writer import events_dir
from projections.rule import BODY_SOURCES, LIVE_RULE_TYPES, reads


if TYPE_CHECKING:
    import duckdb


__all__ = [
    "DUCKDB_MIN_BYTES",
    "Anchor",
    "LineItem",
    "LogTail",
    "Marks",
    "Position",
    "ScanStats",
    "TailRead",
    "anchor_problem",
    "is_candidate",
    "line_items",
    "log_last_seq",
    "scan",
]

#: What the readers hand the fold: a decoded line the rule may read, or the seqs of consecutive lines it does not.
LineItem = LogLine | range
#: Where a line is: (first seq of its segment, byte offset in it).
Position = tuple[int, int]

#: Segments smaller than this are read in Python: starting a DuckDB query costs about a millisecond.
DUCKDB_MIN_BYTES = 1 << 20

_JSON_SPACE = "[ \t\n\r]*"


def _names(values: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(value) for value in sorted(values)) + ")"


def _escapes(words: Iterable[str]) -> str:
    """A pattern for a ``\\u`` escape of any character of ``words`` (hex digits in either case)."""
    chars = sorted(set("".join(words)))
    assert all(char.isascii() and char not in '"\\/' for char in chars), "only \\u escapes can spell them"
    codes = (
        "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{ord(c):02x}") for c in chars
    )
    return r"\\u00(?:" + "|".join(codes) + ")"


_RULE_TYPES = {kind for kinds in LIVE_RULE_TYPES.values() for kind in kinds}
# Three patterns rather than one alternation: each keeps its literal head, which
# DuckDB's RE2 and Python's re both search for at memchr speed.
_TYPE_PATTERN = f'"type"{_JSON_SPACE}:{_JSON_SPACE}"{_names(_RULE_TYPES)}"'
_SOURCE_PATTERN = f'"source"{_JSON_SPACE}:{_JSON_SPACE}"{_names(BODY_SOURCES)}"'
# A key or a value spelled with an escape decodes to the same text: a line
# holding an escape of any of their characters may be a candidate too.
_ESCAPE_PATTERN = _escapes([*_RULE_TYPES, *BODY_SOURCES, "type", "source"])

_CANDIDATE_PATTERNS = tuple(re.compile(p.encode()) for p in (_TYPE_PATTERN, _SOURCE_PATTERN, _ESCAPE_PATTERN))


def is_candidate(raw: bytes) -> bool:
    """Whether a line may be one the rule reads: true of every such line (the fold checks the rest)."""
    return any(pattern.search(raw) is not None for pattern in _CANDIDATE_PATTERNS)


# How the writer starts a line: its seq, first. DuckDB's copy caps the digits so
# that seq + 1 cannot overflow its BIGINT; a longer seq is read here.
_PREFIX = re.compile(rb'\{"seq":(0|[1-9][0-9]*),')
_PREFIX_SQL = r'^\{"seq":(0|[1-9][0-9]{0,17}),'
_ESCAPE_MARK = "\\u00"

_CHUNK = 1 << 20
_SURVEY_CHUNK = 16 << 20

# Per line: whether it is a candidate (is_candidate, the escape pattern tried
# only where an escape is), its seq when it starts as the writer writes it, its
# row number and where it ends (each line end counts one byte). Handed on: the
# candidates, the lines that do not continue the seq of the line before, the
# last line, and the one ending where the survey found the last complete line.
_SCAN_SQL = f"""
WITH lines AS (
    SELECT line,
           regexp_matches(line, '{_TYPE_PATTERN}') OR regexp_matches(line, '{_SOURCE_PATTERN}')
               OR contains(line, '{_ESCAPE_MARK}') AND regexp_matches(line, '{_ESCAPE_PATTERN}') AS candidate,
           nullif(regexp_extract(line, '{_PREFIX_SQL}', 1), '')::BIGINT AS seq
    FROM read_csv($path, columns = {{'line': 'VARCHAR'}}, delim = chr(1), quote = '', escape = '',
                  header = false, auto_detect = false, ignore_errors = true, buffer_size = 4194304)
), placed AS (
    SELECT *, row_number() OVER () AS n,
           sum(coalesce(strlen(line), 0) + 1) OVER (ROWS UNBOUNDED PRECEDING) AS stop,
           lag(seq) OVER () AS prev_seq, lead(true, 1, false) OVER () AS more
    FROM lines
)
SELECT n, stop, seq, candidate, line FROM placed
WHERE NOT coalesce((NOT candidate OR seq <= $after_seq) AND seq = prev_seq + 1 AND more, false)
   OR stop = $complete
"""


@dataclass(frozen=True, slots=True)
class Anchor:
    """What identifies one line of the log: its seq, where it ends, and its bytes' CRC-32.

    A projection stores the anchor of the last line it applied with its
    position (:func:`anchor_problem` checks that the log still holds it).

    Attributes:
        seq: The line's seq.
        segment: The first seq of its segment (compressing the segment keeps it).
        end: The byte offset just past its newline, in the segment's
            uncompressed bytes.
        crc: ``zlib.crc32`` of its bytes, newline included.

    """

    seq: int
    segment: int
    end: int
    crc: int


def anchor_problem(events_dir: Path, last_seq: int, anchor: Anchor | None) -> str | None:
    """Say why the log no longer holds the line a projection's position names, or ``None`` if it does.

    Args:
        events_dir: The log.
        last_seq: The position (0: nothing applied, nothing to check).
        anchor: The position's anchor, as stored with it.

    Raises:
        LogError: the segment holding it cannot be read.

    """
    if last_seq == 0:
        return None
    if anchor is None or anchor.seq != last_seq:
        return f"nothing identifies seq {last_seq}, the last line the table applied"
    where = f"seq {last_seq}, the last line the table applied ({segment_name(anchor.segment)}, byte {anchor.end:,})"
    path = find_segment(events_dir, anchor.segment)
    if path is None:
        return f"the log no longer holds {where}: its segment is gone"
    raw = read_line_ending_at(path, anchor.end)
    if raw is None:
        return (
            f"the log no longer holds {where}: no line ends there now (the segment was cut, or written again)"
        )
    if zlib.crc32(raw) != anchor.crc:
        return f"the log no longer holds {where}: another line is there now"
    return None


# seq, file, segment's first seq, end offset, the line's bytes if at hand
_Mark = tuple[int, Path, int, int, bytes | None]


class Marks:
    """Where the last items a reader handed on end, so that the position after a batch can be anchored.

    A reader notes each item as it hands it on (:meth:`note`); after the fold
    took a batch, :meth:`anchor` names the line the batch ended with. At most
    two items are handed on at once, so the last two are kept.
    """

    __slots__ = ("_last", "_before")

    def __init__(self) -> None:
        self._last: _Mark | None = None
        self._before: _Mark | None = None

    def note(self, seq: int, path: Path, segment: int, end: int, raw: bytes | None) -> None:
        """Note an item whose last line has ``seq`` and ends at ``end`` of ``path`` (its bytes, if at hand)."""
        self._before, self._last = self._last, (seq, path, segment, end, raw)

    def anchor(self, seq: int) -> Anchor | None:
        """The anchor of the line with ``seq``, if it ends one of the last two items; ``None`` if not, or gone."""
        for mark in (self._last, self._before):
            if mark is not None and mark[0] == seq:
                _, path, segment, end, raw = mark
                if raw is None:
                    try:
                        raw = read_line_ending_at(path, end)
                    except LogError:
                        return None
                    if raw is None:
                        return None
                return Anchor(seq, segment, end, zlib.crc32(raw))
        return None


class _Runs:
    """Consecutive seqs of lines the rule does not read, merged into one ``range`` until a break.

    Each run handed on is noted in ``marks``, with where its last line ends.
    """

    __slots__ = ("after_seq", "marks", "path", "segment", "_start", "_stop", "_end", "_raw")

    def __init__(
        self, after_seq: int, marks: Marks | None = None, path: Path | None = None, segment: int = 0
    ) -> None:
        self.after_seq = after_seq
        self.marks = marks
        self.path = path or Path()
        self.segment = segment
        self._start = self._stop = self._end = 0
        self._raw: bytes | None = None

    def add(self, start: int, stop: int, end: int, raw: bytes | None = None) -> range | None:
        """Add the lines with seqs ``start`` to ``stop - 1``, the last ending at byte ``end`` (its bytes ``raw``).

        Returns:
            The run they do not continue, if any.

        """
        start = max(start, self.after_seq + 1)
        if start >= stop:
            return None
        done = None
        if start != self._stop:
            done = self.flush()
            self._start = start
        self._stop = stop
        self._end = end
        self._raw = raw
        return done

    def line(self, line: LogLine, end: int, raw: bytes | None) -> None:
        """Note a decoded line handed on (after the run :meth:`flush` returned, if any)."""
        if self.marks is not None:
            self.marks.note(line.seq, self.path, self.segment, end, raw)

    def flush(self) -> range | None:
        """Return the pending run, if any, and start afresh."""
        done = range(self._start, self._stop) if self._stop > self._start else None
        if done is not None and self.marks is not None:
            self.marks.note(self._stop - 1, self.path, self.segment, self._end, self._raw)
        self._start = self._stop = 0
        return done


@dataclass
class ScanStats:
    """What a :func:`scan` saw besides lines.

    Attributes:
        invalid: Positions of the complete lines that are not valid log lines,
            and of a closed segment's torn end.
        partial_tail: The log ended inside a line (a write in progress, or a
            torn tail the next ``capture ingest`` moves aside).
        marks: Where the last items handed on end (:meth:`Marks.anchor`).

    """

    invalid: list[Position] = field(default_factory=list)
    partial_tail: bool = False
    marks: Marks = field(default_factory=Marks)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` parsed, if it is a JSON object with an integer ``seq``."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(envelope) is not dict or type(envelope.get("seq")) is not int:  # bool is no seq either
        return None
    return envelope


def _decoded(seq: int | None, raw: bytes) -> LogLine | int | None:
    """A line :func:`is_candidate` matches: decoded if the rule reads it, else its seq; ``None`` if invalid."""
    try:
        line = decode_line(raw)
    except LineError:
        envelope = _json_object(raw)
        if envelope is None or reads(envelope):
            return None
        return envelope["seq"] if seq is None else seq
    if seq is None or line.seq == seq:
        return line  # handed on whether the rule reads it or not: the fold looks
    return None if reads(line.envelope) else seq  # it repeats "seq": its first one counts


def _candidate(
    runs: _Runs, seq: int | None, raw: bytes, where: Position, invalid: list[Position], end: int, whole: bool
) -> tuple[LineItem, ...]:
    """The items a line that may be a candidate gives (``seq`` as it starts, if it does): decoded and checked.

    ``end`` is where the line ends, newline included; ``whole``: ``raw`` holds the newline too.
    """
    if seq is not None and seq <= runs.after_seq:
        return ()  # read before: not decoded again
    found = _decoded(seq, raw)
    if found is None:
        invalid.append(where)
    elif isinstance(found, int):
        done = runs.add(found, found + 1, end, raw if whole else None)
        if done is not None:
            return (done,)
    elif found.seq > runs.after_seq:
        done = runs.flush()
        runs.line(found, end, raw if whole else None)
        return (found,) if done is None else (done, found)
    return ()


def _python_lines(
    raws: Iterable[bytes], runs: _Runs, segment: int, offset: int, invalid: list[Position]
) -> Iterator[LineItem]:
    """The items of complete lines (with their newline) read in Python, the first at ``offset``."""
    for raw in raws:
        head = _PREFIX.match(raw)
        seq = int(head[1]) if head is not None else None
        end = offset + len(raw)
        if seq is not None and not is_candidate(raw):
            done = runs.add(seq, seq + 1, end, raw)
            if done is not None:
                yield done
        else:
            yield from _candidate(runs, seq, raw, (segment, offset), invalid, end, True)
        offset = end


def line_items(
    raws: Iterable[bytes],
    after_seq: int = 0,
    *,
    segment: int = 1,
    offset: int = 0,
    marks: Marks | None = None,
    path: Path | None = None,
) -> tuple[list[LineItem], list[Position]]:
    """Sort complete lines of one segment into items, decoding the lines the rule may read.

    Args:
        raws: Complete lines, in log order, each with its newline.
        after_seq: Lines with a seq at or below it are left out.
        segment: The first seq of their segment (how positions name it).
        offset: The byte offset of the first line in the segment.
        marks: Where to note the items' ends (see :class:`Marks`).
        path: The segment's file, for ``marks``.

    Returns:
        The items, and the positions of the lines that are not valid log lines.

    """
    runs = _Runs(after_seq, marks, path, segment)
    invalid: list[Position] = []
    items = list(_python_lines(raws, runs, segment, offset, invalid))
    done = runs.flush()
    return (items if done is None else [*items, done]), invalid


@dataclass(frozen=True, slots=True)
class _Segment:
    """One segment as found before DuckDB reads it."""

    path: Path
    first_seq: int
    complete: int  # bytes up to the end of its last complete line
    size: int  # bytes read (its torn end after `complete`)
    clean: bool  # no carriage return in its complete lines
    last_line: bytes  # its last complete line, newline cut
    active: bool  # the last segment of the log: it may grow while it is read


def _survey(path: Path, active: bool) -> _Segment:
    """Read ``path`` once for what checking DuckDB's reading of it needs."""
    complete = size = 0
    clean = True
    # Large reads: after each, this thread waits for the GIL, which the folding
    # thread gives up only every few milliseconds.
    buffer = bytearray(_SURVEY_CHUNK)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            clean = clean and buffer.find(b"\r", 0, n) < 0
            end = buffer.rfind(b"\n", 0, n)
            if end >= 0:
                complete = size + end + 1
            size += n
        last_line = b""
        window = 4096
        while complete:
            start = max(0, complete - window)
            f.seek(start)
            tail = f.read(complete - start)[:-1]  # its newline cut
            cut = tail.rfind(b"\n")
            if cut >= 0 or start == 0:
                last_line = tail[cut + 1 :]
                break
            window *= 4
    return _Segment(path, first_seq_of(path) or 0, complete, size, clean, last_line, active)


def _query(
    connection: duckdb.DuckDBPyConnection, segment: _Segment, after_seq: int
) -> list[tuple[Any, ...]] | None:
    """DuckDB's reading of ``segment`` (:data:`_SCAN_SQL`), or ``None`` if it does not check out."""
    import duckdb

    if not segment.clean:
        return None
    params = {"path": str(segment.path), "after_seq": after_seq, "complete": segment.complete}
    try:
        rows = connection.execute(_SCAN_SQL, params).fetchall()
    except duckdb.Error:
        return None  # read line by line instead, which names what is wrong
    # Every byte read is accounted for (a line DuckDB could not read is left
    # out): the last complete line ends where the survey found it, and in a
    # closed segment, whose size is known, so does the torn end after it.
    if not segment.complete:
        return rows
    for _, stop, _, _, line in reversed(rows):  # rows after the last complete line are few
        if stop <= segment.complete:
            if stop != segment.complete or (line or "").encode() != segment.last_line:
                return None
            break
    else:
        return None
    if segment.active or rows[-1][1] == segment.size + (segment.size > segment.complete):
        return rows
    return None


def _fast_items(
    segment: _Segment, rows: list[tuple[Any, ...]], after_seq: int, stats: ScanStats
) -> Iterator[LineItem]:
    """The items of ``segment`` from DuckDB's reading of it (:func:`_query`), decoded as the caller folds."""
    first, complete, invalid = segment.first_seq, segment.complete, stats.invalid
    runs = _Runs(after_seq, stats.marks, segment.path, first)
    done = seq_after = 0  # rows accounted for; the seq of the last one
    for n, stop, seq, candidate, line in rows:
        if stop > complete:
            break  # a torn end, or lines appended since the survey
        raw = b"" if line is None else line.encode()
        if n > done + 1:  # rows that continued the seq of the row before: they end where this one starts
            ended = runs.add(seq_after + 1, seq_after + n - done, stop - len(raw) - 1)
            if ended is not None:
                yield ended
        if seq is not None and not candidate:
            ended = runs.add(seq, seq + 1, stop)
            if ended is not None:
                yield ended
        elif line is None:
            invalid.append((first, stop - 1))  # an empty line
        else:
            yield from _candidate(runs, seq, raw, (first, stop - len(raw) - 1), invalid, stop, False)
        done, seq_after = n, seq if seq is not None else -1
    if not segment.active and segment.size > segment.complete:
        invalid.append((first, segment.complete))
    ended = runs.flush()
    if ended is not None:
        yield ended


def _python_items(
    path: Path, first: int, active: bool, after_seq: int, stats: ScanStats
) -> Iterator[LineItem]:
    """The items of the segment at ``path``, read line by line."""

    def complete(f: SegmentFile) -> Iterator[bytes]:
        offset = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                if active:
                    stats.partial_tail = True
                else:
                    stats.invalid.append((first, offset))  # a closed segment's torn end
                return
            offset += len(raw)
            yield raw

    runs = _Runs(after_seq, stats.marks, path, first)
    with open_segment(path) as f:
        yield from _python_lines(complete(f), runs, first, 0, stats.invalid)
    ended = runs.flush()
    if ended is not None:
        yield ended


def _start(segments: list[Path], after_seq: int) -> int:
    start = 0
    for i, path in enumerate(segments):
        first = first_seq_of(path)
        if first is not None and first <= after_seq + 1:
            start = i
    return start


def _worth_duckdb(path: Path) -> bool:
    if path.suffix != ".jsonl" or any(char in str(path) for char in "*?[{"):
        return False  # compressed, or a path DuckDB would take for a pattern
    try:
        return path.stat().st_size >= DUCKDB_MIN_BYTES
    except OSError:
        return False  # gone meanwhile: reading it says so


def scan(
    events_dir: Path, after_seq: int = 0, stats: ScanStats | None = None
) -> Generator[LineItem, None, None]:
    """Yield one item per line with seq above ``after_seq``, in log order, streaming.

    Memory stays flat: DuckDB reads one segment ahead of the caller. Segments
    created after the call started are not read; call again to continue.
    Close the generator to stop early.

    Raises:
        LogError: a segment cannot be read.

    """
    stats = stats if stats is not None else ScanStats()
    segments = list_segments(events_dir)
    segments = segments[_start(segments, after_seq) :]
    if not segments:
        return
    connection: duckdb.DuckDBPyConnection | None = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-scan")

    def read(index: int) -> tuple[_Segment, list[tuple[Any, ...]] | None] | None:
        nonlocal connection
        path = segments[index]
        if not _worth_duckdb(path):
            return None
        segment = _survey(path, index == len(segments) - 1)
        if connection is None:
            # Imported here: the live follower and small logs never need it (it takes 0.1 s).
            import duckdb

            # Two threads: DuckDB's own runs the query without the GIL, which the
            # calling thread takes back between tasks, and the caller holds.
            connection = duckdb.connect(config={"threads": 2})
        return segment, _query(connection, segment, after_seq)

    ahead: Future[Any] = pool.submit(read, 0)
    try:
        for index, path in enumerate(segments):
            try:
                read_ahead = ahead.result()
            except OSError as exc:
                raise LogError(f"cannot read {path}: {exc.strerror or exc}") from exc
            if index + 1 < len(segments):
                ahead = pool.submit(read, index + 1)
            active = index == len(segments) - 1
            if read_ahead is not None and read_ahead[1] is not None:
                segment, rows = read_ahead
                yield from _fast_items(segment, rows, after_seq, stats)
                stats.partial_tail = stats.partial_tail or (active and segment.size > segment.complete)
            else:
                yield from _python_items(path, first_seq_of(path) or 0, active, after_seq, stats)
    finally:
        if connection is not None:
            connection.interrupt()
        pool.shutdown(wait=True, cancel_futures=True)
        if connection is not None:
            connection.close()


@dataclass
class TailRead:
    """What one :meth:`LogTail.read` found.

    Attributes:
        items: One per new line, as :func:`scan` yields them.
        invalid: Positions of lines that are not valid log lines, as in :class:`ScanStats`.

    """

    items: list[LineItem] = field(default_factory=list)
    invalid: list[Position] = field(default_factory=list)


class LogTail:
    """Read a growing log incrementally, from a seq on, across rotation.

    Keeps an open segment and a byte offset, so each :meth:`read` costs what
    was appended since the previous one. Call :meth:`close` when done. Not
    thread-safe.
    """

    def __init__(self, events_dir: Path, after_seq: int = 0) -> None:
        self.events_dir = events_dir
        self._file: SegmentFile | None = None
        self._path = Path()
        self._segment_seq = 0
        self.marks = Marks()
        self._pending = b""
        self._pending_offset = 0  # where _pending starts in the segment
        self._after_seq = after_seq
        self.seek(after_seq)

    def seek(self, after_seq: int) -> None:
        """Restart so that the next lines read are those with seq above ``after_seq``."""
        self.close()
        self._after_seq = after_seq
        self.marks = Marks()
        segments = list_segments(self.events_dir)
        if segments:
            self._open(segments[_start(segments, after_seq)])

    def _open(self, path: Path) -> None:
        self._file = open_segment(path)
        self._path = path
        self._segment_seq = first_seq_of(path) or 0
        self._pending = b""
        self._pending_offset = 0

    def _successor(self) -> Path | None:
        for path in list_segments(self.events_dir):
            first = first_seq_of(path)
            if first is not None and first > self._segment_seq:
                return path
        return None

    def _take(self, out: TailRead, budget: int) -> int:
        """Move up to ``budget`` complete lines from the pending bytes into ``out``; return how many."""
        cut = self._pending.rfind(b"\n") + 1
        if cut == 0 or budget <= 0:
            return 0
        raws = io.BytesIO(self._pending[:cut]).readlines()[:budget]
        used = sum(map(len, raws))
        items, invalid = line_items(
            raws,
            self._after_seq,
            segment=self._segment_seq,
            offset=self._pending_offset,
            marks=self.marks,
            path=self._path,
        )
        out.items.extend(items)
        out.invalid.extend(invalid)
        self._pending = self._pending[used:]
        self._pending_offset += used
        return len(raws)

    def read(self, max_lines: int = 10_000) -> TailRead:
        """Return the items of up to ``max_lines`` new complete lines (fewer when the log has no more yet)."""
        out = TailRead()
        if self._file is None:
            self.seek(self._after_seq)
            if self._file is None:
                return out
        budget = max_lines
        while True:
            budget -= self._take(out, budget)
            if budget <= 0:
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
                out.invalid.append((self._segment_seq, self._pending_offset))  # a closed segment's torn end
            self._file.close()
            self._open(successor)

    def close(self) -> None:
        """Close the open segment (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def log_last_seq(data_dir: Path) -> int | None:
    """Return the seq of the log's last complete line, or ``None`` for an empty log.

    Reads only the tail of the active segment (a compressed last segment is
    read whole).
    """
    for path in reversed(list_segments(events_dir(data_dir))):
        seq = _tail_seq(path)
        if seq is not None:
            return seq
    return None


def _tail_seq(path: Path) -> int | None:
    if path.suffix != ".jsonl":
        last = last_seq_of(path)
        return last if last >= (first_seq_of(path) or 1) else None
    chunk = 1 << 20
    with open_segment(path) as f:
        end = f.seek(0, os.SEEK_END)
        start = end
        while start > 0:
            start = max(0, start - chunk)
            f.seek(start)
            lines = f.read(end - start).split(b"\n")
            # lines[-1] is the bytes after the last newline (a write in progress);
            # lines[0] may be cut by the window unless the window starts the file.
            for raw in reversed(lines[:-1] if start == 0 else lines[1:-1]):
                try:
                    return decode_line(raw).seq
                except LineError:
                    continue
            chunk *= 4
    return None
