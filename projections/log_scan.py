"""Reading the log for the projections: a streaming catch-up scan and a live tail.

Both hand the fold (:func:`projections.user_texts.fold`) one item per line:

* a :class:`~ingest.envelope.LogLine` for a line the rule reads (a user turn,
  an init frame, a ``connection_closed`` record, a REST body, a transcription
  webhook), fully decoded and checked (JSON, ``crc32``);
* a ``range`` of seqs for consecutive lines the rule does not read: they
  cannot give a row, so no :class:`~ingest.envelope.LogLine` is built for
  them. Most of a log is such lines (pings, agent text, tentative transcripts).

A line that does not decode is not handed on; its position (segment, byte
offset) is reported so it is counted once. A line without its newline at the
very end of the log is a write in progress and is left for the next read.
Neither reader opens a segment for writing or takes a lock.

"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import IO, Any

import orjson

from ingest.envelope import LineError, LogLine, decode_line, decode_parsed_line
from ingest.reader import open_segment
from ingest.segments import first_seq_of, list_segments

from .user_texts import LIVE_RULE_TYPES, REST, TRANSCRIPTION_TYPE, WEBHOOK


__all__ = ["LineItem", "LogTail", "ScanStats", "TailRead", "classify_lines", "may_hold_rest", "scan"]

#: What the readers yield: a decoded line, or the seqs of consecutive lines the rule does not read.
LineItem = LogLine | range

_CHUNK = 1 << 20
# The writer puts seq first and splices the frame after `,"event":`; a frame
# serialised with its type first (as the server and this client do) shows the
# type right there. Header strings are JSON-escaped, so the first match is the
# frame's own key, and the envelope's source is between the two.
_HEAD = re.compile(rb'\{"seq":(\d+),')
_TYPE_AT_FRAME_START = b',"event":{"type":"'
# Frame types the rule may read from some source (it checks the source itself).
_RULE_TYPE_BYTES = frozenset(kind.encode() for kinds in LIVE_RULE_TYPES.values() for kind in kinds) | {
    TRANSCRIPTION_TYPE.encode()
}
_REST_SOURCE = b',"source":"' + REST.encode() + b'",'
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


def _parsed(raw: bytes) -> int | LogLine | None:
    """Parse a line the fast path cannot read: its seq, the line if the rule reads it, ``None`` if invalid."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    seq = envelope.get("seq") if type(envelope) is dict else None
    if type(seq) is not int:  # bool and None are not seqs either
        return None
    if "event" in envelope and type(envelope["event"]) is not dict:
        return None
    if not _wanted(envelope):
        return seq
    try:
        return decode_parsed_line(raw, envelope)
    except LineError:
        return None


def classify_lines(
    raws: Sequence[bytes], after_seq: int = 0, *, rest_possible: bool = True
) -> tuple[list[LineItem], list[int]]:
    """Turn complete lines into what the fold needs.

    The rule reads, per source: the frame types in
    :data:`~projections.user_texts.LIVE_RULE_TYPES`; every ``rest`` line; a
    ``webhook`` line holding a ``post_call_transcription`` (or a ``raw``
    frame, whose type only parsing tells). A line that starts as the writer
    writes it (``{"seq":…,``), whose frame starts with ``{"type":"…"`` (no
    escape in the type) and that the rule does not read is classified in
    place, without parsing: it gives no row either way, so it is not
    validated beyond its seq. Every other line is parsed (orjson)
    once, and one the rule reads is decoded and checked in full, ``crc32``
    included. Consecutive lines the rule does not read are handed on as one
    ``range`` of seqs. (A frame that repeats its ``type`` key has no agreed
    meaning: parsers differ on which value wins.)

    Args:
        raws: Complete lines, with or without their newline.
        after_seq: Lines with a seq at or below it are left out.
        rest_possible: ``False`` when the caller knows no line is a REST
            line (:func:`may_hold_rest` of their bytes), which saves a search per line.

    Returns:
        The items, in order, and the indexes in ``raws`` of the lines that are
        not valid log lines.

    """
    items: list[LineItem] = []
    invalid: list[int] = []
    keep = items.append
    # Locals, not globals, in the loop: at about a microsecond a line, lookups count.
    head_of = _HEAD.match
    type_key = _TYPE_AT_FRAME_START
    skip = len(type_key)
    rule_types = _RULE_TYPE_BYTES
    rest = _REST_SOURCE
    run_start = run_end = 0  # the pending run of seqs is range(run_start, run_end); empty if equal
    expected = -1  # the seq of the next line when the log goes on without a gap
    for index, raw in enumerate(raws):
        line: LogLine | None = None
        # Cheaper than the regex and int(): the usual next line starts with the next seq.
        prefix = b'{"seq":%d,' % expected
        if raw.startswith(prefix):
            seq, start = expected, len(prefix)
        else:
            head = head_of(raw)
            seq, start = (int(head[1]), head.end()) if head else (0, -1)
        if start >= 0:
            at = raw.find(type_key, start) + skip
            if at > skip:
                kind = raw[at : raw.find(b'"', at)]
                # Every REST body is read, whatever its first key.
                if (
                    kind not in rule_types
                    and b"\\" not in kind
                    and not (rest_possible and raw.find(rest, start - 1, at) >= 0)
                ):
                    expected = seq + 1
                    if seq == run_end and run_end:
                        run_end += 1  # the common case: the next line of a run
                    elif seq > after_seq:
                        if run_end > run_start:
                            keep(range(run_start, run_end))
                        run_start, run_end = seq, seq + 1
                    continue
                if b"\\" not in kind:
                    try:
                        line = decode_line(raw)
                    except LineError:
                        invalid.append(index)
                        continue
        if line is None:  # not as the writer writes lines: parse it
            found = _parsed(raw)
            if found is None:
                invalid.append(index)
                continue
            if isinstance(found, int):
                expected = found + 1
                if found == run_end and run_end:
                    run_end += 1
                elif found > after_seq:
                    if run_end > run_start:
                        keep(range(run_start, run_end))
                    run_start, run_end = found, found + 1
                continue
            line = found
        expected = line.seq + 1
        if line.seq > after_seq:
            if run_end > run_start:
                keep(range(run_start, run_end))
            run_start = run_end = 0
            keep(line)
    if run_end > run_start:
        keep(range(run_start, run_end))
    return items, invalid


def may_hold_rest(data: bytes) -> bool:
    """Whether ``data`` (one or more lines) may hold a REST line."""
    return _REST_MARK in data


def _offset(raws: Sequence[bytes], base: int, index: int) -> int:
    return base + sum(len(raw) + 1 for raw in raws[:index])


@dataclass
class ScanStats:
    """What a :func:`scan` saw besides lines.

    Attributes:
        invalid: (first seq of the segment, byte offset) of each line that
            did not decode, and of a torn end of a closed segment.
        partial_tail: The log ended inside a line (a write in progress, or a
            torn tail the next ``capture ingest`` moves aside).

    """

    invalid: list[tuple[int, int]] = field(default_factory=list)
    partial_tail: bool = False


def _start(segments: list[Path], after_seq: int) -> int:
    start = 0
    for i, path in enumerate(segments):
        first = first_seq_of(path)
        if first is not None and first <= after_seq + 1:
            start = i
    return start


def _scan_chunks(events_dir: Path, after_seq: int, stats: ScanStats) -> Iterator[list[LineItem]]:
    segments = list_segments(events_dir)
    for index in range(_start(segments, after_seq), len(segments)):
        path = segments[index]
        segment_seq = first_seq_of(path) or 0
        offset = 0  # of the first byte of `pending` in the segment
        pending = b""
        with open_segment(path) as f:
            # Whole chunks split in C: much cheaper per line than readline.
            while chunk := f.read(_CHUNK):
                data = pending + chunk if pending else chunk
                raws = data.split(b"\n")
                pending = raws.pop()
                items, invalid = classify_lines(raws, after_seq, rest_possible=may_hold_rest(data))
                stats.invalid.extend((segment_seq, _offset(raws, offset, i)) for i in invalid)
                offset += sum(map(len, raws)) + len(raws)
                yield items
        if pending:
            if index == len(segments) - 1:
                stats.partial_tail = True
            else:
                stats.invalid.append((segment_seq, offset))


def scan(events_dir: Path, after_seq: int = 0, stats: ScanStats | None = None) -> Iterator[LineItem]:
    """Yield one item per line with seq above ``after_seq``, in log order, streaming.

    Segments created after the call started are not read; call again to continue.
    """
    return chain.from_iterable(
        _scan_chunks(events_dir, after_seq, stats if stats is not None else ScanStats())
    )


@dataclass
class TailRead:
    """What one :meth:`LogTail.read` found.

    Attributes:
        items: One per new line, as :func:`scan` yields them.
        invalid: Positions of lines that did not decode, as in :class:`ScanStats`.

    """

    items: list[LineItem] = field(default_factory=list)
    invalid: list[tuple[int, int]] = field(default_factory=list)


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
            raws = complete.split(b"\n")[:-1][: max_lines - len(out.items)]
            used = sum(map(len, raws)) + len(raws)
            items, invalid = classify_lines(raws, self._after_seq, rest_possible=may_hold_rest(complete))
            out.items.extend(items)
            out.invalid.extend((self._segment_seq, _offset(raws, self._pending_offset, i)) for i in invalid)
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
