"""Reading the log for the projections: a streaming catch-up scan and a live tail.

Both hand the fold (:func:`projections.rule.fold`) one item per line:

* a :class:`~ingest.log.envelope.LogLine` for a line the rule reads (a user turn,
  an init frame, a ``connection_closed`` record, a REST body, a transcription
  webhook), fully decoded and checked (JSON, ``crc32``);
* a ``range`` of seqs for consecutive lines the rule does not read: they
  cannot give a row, so no :class:`~ingest.log.envelope.LogLine` is built for
  them. Most of a log is such lines (pings, agent text, tentative transcripts);
* from :func:`~projections.read_ahead.scan_ahead`, a
  :class:`~projections.rule.LiveTurn` in place of a line holding a live
  user turn (:func:`read_turns`: the reading process did the decoding).

A line that does not decode is not handed on; its position (segment, byte
offset) is reported so it is counted once. A line without its newline at the
very end of the log is a write in progress and is left for the next read.
Neither reader opens a segment for writing or takes a lock.

"""

from __future__ import annotations

import io
import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from ingest.log.envelope import EVENT_KEY, LineError, LogLine, decode_line
from ingest.log.reader import open_segment
from ingest.log.segments import first_seq_of, list_segments
from projections.rule import LIVE_RULE_TYPES, REST, TRANSCRIPTION_TYPE, WEBHOOK, Kind, LiveTurn, live_turn


__all__ = [
    "Chunk",
    "LineItem",
    "LogTail",
    "Position",
    "ScanStats",
    "TailRead",
    "ToDecode",
    "Undecoded",
    "classify",
    "classify_lines",
    "decode_items",
    "may_hold_rest",
    "read_chunks",
    "read_turns",
    "scan",
    "scan_size",
]

#: What the readers yield: a decoded line (or its live turn), or the seqs of consecutive lines the rule does not read.
LineItem = LogLine | LiveTurn | range

_CHUNK = 1 << 20
# The writer puts seq first and splices the frame after `,"event":`; a frame
# serialised with its type first (as the server and this client do) shows the
# type right there. Header strings are JSON-escaped, so the first match is the
# frame's own key, and the envelope's source is between the two.
_HEAD = re.compile(rb'\{"seq":(\d+),')
_TYPE_START = b'{"type":"'
_BACKSLASH = ord("\\")  # `int in bytes` is a plain byte search
# Frame types the rule may read from some source (it checks the source itself).
_RULE_TYPE_BYTES = frozenset(kind.encode() for kinds in LIVE_RULE_TYPES.values() for kind in kinds) | {
    TRANSCRIPTION_TYPE.encode()
}
# Every rule type is at least this long, so its first characters tell it apart.
_HEAD_CHARS = min(map(len, _RULE_TYPE_BYTES))
_FRAME_HEAD = len(_TYPE_START) + _HEAD_CHARS
_RULE_HEADS = frozenset(_TYPE_START + kind[:_HEAD_CHARS] for kind in _RULE_TYPE_BYTES)
# Heads classify found to name a type the rule does not read: a log has a
# handful, and one set lookup then decides a line. Bounded, for a log of
# endlessly many types.
_USUAL_HEADS: set[bytes] = set()
_MAX_USUAL_HEADS = 1024
_REST_SOURCE = b',"source":"' + REST.encode() + b'",'
# How the frame of a live user turn starts when it is typed first (as sent).
_TURN_STARTS = tuple(_TYPE_START + kind.encode() + b'"' for kind in (Kind.USER_TRANSCRIPT, Kind.USER_MESSAGE))
# Bytes without this hold no REST line (inside a JSON string a quote is escaped).
_REST_MARK = _REST_SOURCE[1:-1]


def _wanted(envelope: dict[str, Any]) -> bool:
    """Whether the rule reads a parsed line (see :func:`classify_lines`)."""
    source = envelope.get("source")
    event = envelope.get("event")
    if source == REST or source == WEBHOOK:
        if type(event) is dict:
            return source == REST or event.get("type") == TRANSCRIPTION_TYPE
        return type(envelope.get("raw")) is str  # a body not on one line: its type is inside
    kinds = LIVE_RULE_TYPES.get(source) if type(source) is str else None
    return kinds is not None and type(event) is dict and event.get("type") in kinds


def _parsed(raw: bytes) -> tuple[int, bool] | None:
    """Parse a line the usual path cannot read: its seq and whether the rule reads it; ``None`` if invalid."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    seq = envelope.get("seq") if type(envelope) is dict else None
    if type(seq) is not int:  # bool and None are not seqs either
        return None
    if "event" in envelope and type(envelope["event"]) is not dict:
        return None
    return seq, _wanted(envelope)


def _read_by_rule(raw: bytes, at: int, rest_possible: bool) -> bool | None:
    """Whether the rule reads a line whose frame starts at ``at``; ``None`` if only parsing tells.

    ``at`` must follow the line's first ``,"event":`` (header strings are
    JSON-escaped, so that is the envelope's own key).
    """
    if at <= len(EVENT_KEY) or not raw.startswith(_TYPE_START, at):
        return None  # no frame, or not typed first
    start = at + len(_TYPE_START)
    kind = raw[start : raw.find(b'"', start)]
    if _BACKSLASH in kind:
        return None  # an escape: only a parser knows the type
    return kind in _RULE_TYPE_BYTES or (rest_possible and raw.find(_REST_SOURCE, 0, at) >= 0)


def _numbered(raws: Sequence[bytes]) -> int | None:
    """The seq of the first line if each line starts ``{"seq":N,`` with N one more than the line before."""
    head = _HEAD.match(raws[0]) if raws else None
    if head is None:
        return None
    first, count = int(head[1]), len(raws)
    width = len(head[1])
    if len(str(first + count - 1)) != width:
        return None  # the seqs change width (or start with a zero): checked line by line
    # All prefixes at once, as one string: one cut short makes the two differ in length.
    cut = itemgetter(slice(0, len('{"seq":,') + width))
    return (
        first
        if b"".join(map(cut, raws)) == (b'{"seq":%d,' * count) % tuple(range(first, first + count))
        else None
    )


def _looked_at(raw: bytes, rest_possible: bool) -> tuple[int, bool] | None:
    """A line off the usual path: its seq and whether the rule reads it; ``None`` if invalid."""
    head = _HEAD.match(raw)
    if head is not None:
        wanted = _read_by_rule(raw, raw.find(EVENT_KEY) + len(EVENT_KEY), rest_possible)
        if wanted is not None:
            return int(head[1]), wanted
    return _parsed(raw)


#: A line :func:`classify` leaves to decode: (its index in the lines given, its seq).
ToDecode = tuple[int, int]
#: Where a line is: (first seq of its segment, byte offset in it).
Position = tuple[int, int]
P = TypeVar("P")
#: A line the rule reads, not decoded yet: (its seq as :func:`classify` read it, its bytes, where it is).
Undecoded = tuple[int, bytes, P]


def classify(
    raws: Sequence[bytes], after_seq: int = 0, *, rest_possible: bool = True
) -> tuple[list[range | ToDecode], list[int]]:
    """Sort complete lines into runs the rule does not read and lines it does, without decoding those.

    The rule reads, per source: the frame types in
    :data:`~projections.rule.LIVE_RULE_TYPES`; every ``rest`` line; a
    ``webhook`` line holding a ``post_call_transcription`` (or a ``raw``
    frame, whose type only parsing tells). A line that starts as the writer
    writes it (``{"seq":…,``), whose frame starts with ``{"type":"…"`` (no
    escape in the type) is classified in place, without parsing; if the
    rule does not read it, it gives no row either way, so it is not
    validated beyond its seq. Every other line is parsed (orjson).
    Consecutive lines the rule does not read are handed on as one ``range``
    of seqs. (A frame that repeats its ``type`` key has no agreed meaning:
    parsers differ on which value wins.)

    Args:
        raws: Complete lines, with or without their newline.
        after_seq: Lines with a seq at or below it are left out.
        rest_possible: ``False`` when the caller knows no line is a REST
            line (:func:`may_hold_rest` of their bytes), which saves a search per line.

    Returns:
        The items in order, each a ``range`` or a line to decode and check
        (:func:`decode_items`); and the indexes in ``raws`` of the lines found
        not to be valid log lines.

    """
    items: list[range | ToDecode] = []
    invalid: list[int] = []
    keep = items.append
    floor = after_seq + 1  # the lowest seq handed on
    # Locals, not globals, in the loop: it runs for every line of a rebuild.
    event_key, type_start, skip_key, frame_head = EVENT_KEY, _TYPE_START, len(EVENT_KEY), _FRAME_HEAD
    rule_heads, usual_heads, rest = _RULE_HEADS, _USUAL_HEADS, _REST_SOURCE
    # Usually every line is numbered on from the first: then line `index` has
    # seq `numbered + index`, so no line's seq needs formatting to be checked.
    numbered = _numbered(raws)
    # The pending run of lines the rule does not read is range(run_start, expected);
    # `expected` is the seq the next line has when the log goes on without a gap.
    run_start = expected = -1
    for index, raw in enumerate(raws):
        wanted: bool | None = None
        # The usual line: the next seq, a frame whose type sits right after
        # the envelope's first `,"event":`.
        if expected - index == numbered or raw.startswith(b'{"seq":%d,' % expected):
            at = raw.find(event_key) + skip_key
            # The frame's first bytes: `{"type":"` and the type's first
            # _HEAD_CHARS characters (or all of it and what follows). Without
            # a backslash they are the decoded type's own first characters:
            # if no rule type starts with them, the rule does not read the line.
            # (Without an `,"event":`, `head` starts inside the seq, so it is
            # not one of usual_heads.)
            head = raw[at : at + frame_head]
            usual = head in usual_heads
            if (
                not usual
                and at > skip_key
                and head.startswith(type_start)
                and _BACKSLASH not in head
                and head not in rule_heads
            ):
                usual = True
                if len(usual_heads) < _MAX_USUAL_HEADS:
                    usual_heads.add(head)  # one set lookup decides the next such line
            if usual and not (rest_possible and raw.find(rest, 0, at) >= 0):
                expected += 1  # the most common line of all
                continue
            wanted, seq = _read_by_rule(raw, at, rest_possible), expected
        if wanted is None:
            found = _looked_at(raw, rest_possible)
            if found is None:
                invalid.append(index)
                continue
            seq, wanted = found
        if not wanted and seq == expected:
            expected += 1
            continue
        if expected > run_start and expected > floor:
            keep(range(max(run_start, floor), expected))
        if wanted:
            if seq >= floor:
                keep((index, seq))
            run_start = expected = seq + 1
        else:
            run_start, expected = seq, seq + 1
    if expected > run_start and expected > floor:
        keep(range(max(run_start, floor), expected))
    return items, invalid


def _checked(seq: int, raw: bytes) -> LogLine | None:
    """``raw`` decoded and checked (JSON, ``crc32``), or ``None`` if it fails or is not line ``seq``.

    A JSON with another seq than the one :func:`classify` read has a repeated ``seq`` key.
    """
    try:
        line = decode_line(raw)
    except LineError:
        return None
    return line if line.seq == seq else None


def decode_items(items: Iterable[range | LiveTurn | Undecoded[P]], invalid: list[P]) -> Iterator[LineItem]:
    """Yield ``items`` with each undecoded line decoded and checked (:func:`_checked`), one at a time.

    The position of a line that fails goes to ``invalid``. Decoding as the
    caller folds keeps few decoded lines alive, which is much faster than
    holding thousands.
    """
    for item in items:
        if isinstance(item, (range, LiveTurn)):
            yield item
            continue
        seq, raw, where = item
        line = _checked(seq, raw)
        if line is None:
            invalid.append(where)
        else:
            yield line


def read_turns(
    items: Iterable[range | Undecoded[P]], invalid: list[P]
) -> list[range | LiveTurn | Undecoded[P]]:
    """``items`` with each line that holds a live user turn replaced by its :func:`~projections.rule.live_turn`.

    Only lines whose frame starts as a user turn's are decoded here (and
    checked: one that fails is left out, its position added to ``invalid``);
    the other lines the rule reads stay undecoded, for :func:`decode_items`.
    """
    out: list[range | LiveTurn | Undecoded[P]] = []
    keep = out.append
    for item in items:
        if type(item) is not range and item[1].startswith(
            _TURN_STARTS, item[1].find(EVENT_KEY) + len(EVENT_KEY)
        ):
            seq, raw, where = item
            line = _checked(seq, raw)
            if line is None:
                invalid.append(where)
                continue
            turn = live_turn(line)
            if turn is not None:
                keep(turn)
                continue
        keep(item)
    return out


def classify_lines(
    raws: Sequence[bytes], after_seq: int = 0, *, rest_possible: bool = True
) -> tuple[list[LineItem], list[int]]:
    """:func:`classify`, with the lines the rule reads decoded and checked (:func:`decode_items`).

    Returns:
        The items, in order, and the indexes in ``raws`` of the lines that are
        not valid log lines, in order.

    """
    found, invalid = classify(raws, after_seq, rest_possible=rest_possible)
    undecoded = (item if type(item) is range else (item[1], raws[item[0]], item[0]) for item in found)
    items = list(decode_items(undecoded, invalid))
    invalid.sort()
    return items, invalid


def may_hold_rest(data: bytes) -> bool:
    """Whether ``data`` (one or more lines) may hold a REST line."""
    return _REST_MARK in data


@dataclass
class ScanStats:
    """What a :func:`scan` saw besides lines.

    Attributes:
        invalid: (first seq of the segment, byte offset) of each line that
            did not decode, and of a torn end of a closed segment.
        partial_tail: The log ended inside a line (a write in progress, or a
            torn tail the next ``capture ingest`` moves aside).

    """

    invalid: list[Position] = field(default_factory=list)
    partial_tail: bool = False


def _start(segments: list[Path], after_seq: int) -> int:
    start = 0
    for i, path in enumerate(segments):
        first = first_seq_of(path)
        if first is not None and first <= after_seq + 1:
            start = i
    return start


@dataclass(frozen=True, slots=True)
class Chunk:
    """Complete lines read from one segment.

    Attributes:
        segment_seq: The segment's first seq (how positions name it).
        offset: Byte offset of the first line in the segment.
        raws: The lines, each with its newline.
        rest_possible: Whether any of them may be a REST line (:func:`may_hold_rest`).

    """

    segment_seq: int
    offset: int
    raws: list[bytes]
    rest_possible: bool

    def lines(self, after_seq: int) -> tuple[list[range | Undecoded[Position]], list[Position]]:
        """:func:`classify` these lines: the items, the lines the rule reads undecoded; invalid positions."""
        raws, segment = self.raws, self.segment_seq
        found, invalid = classify(raws, after_seq, rest_possible=self.rest_possible)
        wanted = [item[0] for item in found if type(item) is not range]
        offsets = _offsets(raws, self.offset, sorted(wanted + invalid) if invalid else wanted)
        items = [
            item if type(item) is range else (item[1], raws[item[0]], (segment, offsets[item[0]]))
            for item in found
        ]
        return items, [(segment, offsets[i]) for i in invalid]


def _offsets(raws: list[bytes], base: int, indexes: Iterable[int]) -> dict[int, int]:
    """Byte offsets of the lines at ``indexes`` (ascending), the first line being at ``base``."""
    offsets = {}
    done = 0  # lines counted so far
    for index in indexes:
        base += sum(map(len, raws[done:index]))
        offsets[index] = base
        done = index
    return offsets


def _lines_of(data: bytes) -> list[bytes]:
    """``data`` cut after each newline (kept); the last piece lacks it if ``data`` ends inside a line.

    BytesIO finds each newline with memchr: several times cheaper per line
    than ``bytes.split``, which tests every byte in turn.
    """
    return io.BytesIO(data).readlines()


def read_chunks(events_dir: Path, after_seq: int, stats: ScanStats) -> Iterator[Chunk]:
    """The complete lines of the segments that may hold seqs above ``after_seq``, about 1 MiB at a time.

    The end of the log inside a line sets ``stats.partial_tail``; a closed
    segment's torn end is added to ``stats.invalid``.

    Raises:
        LogError: a segment cannot be read.

    """
    segments = list_segments(events_dir)
    for index in range(_start(segments, after_seq), len(segments)):
        path = segments[index]
        segment_seq = first_seq_of(path) or 0
        offset = 0  # of the first byte of `pending` in the segment
        pending = b""
        with open_segment(path) as f:
            while chunk := f.read(_CHUNK):
                raws = _lines_of(chunk)
                rest_possible = may_hold_rest(chunk)
                carried = len(pending)
                if pending:  # the line the previous chunk ended inside
                    raws[0] = pending + raws[0]
                    rest_possible = rest_possible or may_hold_rest(raws[0])
                pending = b"" if raws[-1].endswith(b"\n") else raws.pop()
                if raws:
                    yield Chunk(segment_seq, offset, raws, rest_possible)
                offset += carried + len(chunk) - len(pending)
        if pending:
            if index == len(segments) - 1:
                stats.partial_tail = True
            else:
                stats.invalid.append((segment_seq, offset))


def scan_size(events_dir: Path, after_seq: int = 0) -> int:
    """How many bytes :func:`scan` from ``after_seq`` reads (compressed segments count as stored)."""
    segments = list_segments(events_dir)
    total = 0
    for path in segments[_start(segments, after_seq) :]:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass  # compressed or removed meanwhile
    return total


def scan(
    events_dir: Path, after_seq: int = 0, stats: ScanStats | None = None
) -> Generator[LineItem, None, None]:
    """Yield one item per line with seq above ``after_seq``, in log order, streaming.

    Each line the rule reads is decoded as it is yielded (:func:`decode_items`).
    Segments created after the call started are not read; call again to continue.
    """
    stats = stats if stats is not None else ScanStats()
    for chunk in read_chunks(events_dir, after_seq, stats):
        items, invalid = chunk.lines(after_seq)
        stats.invalid.extend(invalid)
        yield from decode_items(items, stats.invalid)


@dataclass
class TailRead:
    """What one :meth:`LogTail.read` found.

    Attributes:
        items: One per new line, as :func:`scan` yields them.
        invalid: Positions of lines that did not decode, as in :class:`ScanStats`.

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
        self._file: IO[bytes] | None = None
        self._segment: Path | None = None
        self._segment_seq = 0
        self._pending = b""
        self._pending_offset = 0  # where _pending starts in the segment
        self._after_seq = after_seq
        self.seek(after_seq)

    def seek(self, after_seq: int) -> None:
        """Restart so that the next lines read are those with seq above ``after_seq``."""
        self.close()
        self._after_seq = after_seq
        segments = list_segments(self.events_dir)
        if segments:
            self._open(segments[_start(segments, after_seq)])

    def _open(self, path: Path) -> None:
        self._file = open_segment(path)
        self._segment = path
        self._segment_seq = first_seq_of(path) or 0
        self._pending = b""
        self._pending_offset = 0

    def _successor(self) -> Path | None:
        for path in list_segments(self.events_dir):
            first = first_seq_of(path)
            if first is not None and first > self._segment_seq:
                return path
        return None

    def _take(self, out: TailRead, max_lines: int) -> None:
        """Move complete lines from the pending bytes into ``out``, up to ``max_lines`` items."""
        while len(out.items) < max_lines:
            cut = self._pending.rfind(b"\n") + 1
            if cut == 0:
                return
            complete = self._pending[:cut]
            raws = _lines_of(complete)[: max_lines - len(out.items)]
            used = sum(map(len, raws))
            chunk = Chunk(self._segment_seq, self._pending_offset, raws, may_hold_rest(complete))
            items, invalid = chunk.lines(self._after_seq)
            out.invalid.extend(invalid)
            out.items.extend(decode_items(items, out.invalid))
            self._pending = self._pending[used:]
            self._pending_offset += used

    def read(self, max_lines: int = 10_000) -> TailRead:
        """Return up to ``max_lines`` new complete lines (fewer when the log has no more yet)."""
        out = TailRead()
        if self._file is None:
            self.seek(self._after_seq)
            if self._file is None:
                return out
        while True:
            self._take(out, max_lines)
            if len(out.items) >= max_lines:
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
