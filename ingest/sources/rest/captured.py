"""Which conversations the log already holds in full: the backfill's only state.

A conversation is captured when the log has a line with its whole record,
transcript included (``transcript`` is a list, possibly empty):

* a ``rest`` line (a fetched ``done`` or ``failed`` conversation) with one, or
* a ``webhook`` line holding a ``post_call_transcription`` delivery with one.

A ``post_call_transcription`` sent with the agent's "exclude transcript"
option has no ``data.transcript``, and a ``post_call_transcription_otel``
delivery carries the conversation as OpenTelemetry spans: both are logged like
any delivery, and neither hides a conversation from the backfill, which fetches
its transcript.

:func:`captured_conversation_id` is the pure rule for one line, and
:func:`holds_transcript` its test of a body;
:func:`scan_captured` applies it to the log from any seq. The scan is
streaming and skips, by a byte test on the envelope's head, every line of
another source before decoding it, so a log of mostly agent-socket frames is
read at disk speed and memory holds only the set of ids.

"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ingest.log.envelope import LineError, LogLine, decode_line
from ingest.log.reader import open_segment
from ingest.log.segments import first_seq_of, list_segments


__all__ = ["Captured", "captured_conversation_id", "holds_transcript", "scan_captured"]

_SEQ_PREFIX = b'{"seq":'
# The envelope's fields come in a fixed order (seq, received_at, source, …), so
# the source is always within the first bytes of a line.
_HEAD = 128
_SOURCE_KEY = b'"source":"'
_SOURCES = (b'rest"', b'webhook"')
TRANSCRIPTION = "post_call_transcription"


def holds_transcript(record: object) -> bool:
    """Whether a conversation record (a GET body, a delivery's ``data``) holds its transcript."""
    return isinstance(record, dict) and isinstance(record.get("transcript"), list)


def captured_conversation_id(line: LogLine) -> str | None:
    """Return the conversation a line captures in full, or ``None``."""
    if line.source == "rest":
        message = _message(line)
        if not holds_transcript(message):
            return None
        return line.conversation_id or _field(message, "conversation_id")
    if line.source == "webhook":
        message = _message(line)
        if message is None or message.get("type") != TRANSCRIPTION:
            return None
        data = message.get("data")
        if not holds_transcript(data):
            return None
        return _field(data, "conversation_id") or line.conversation_id
    return None


def _message(line: LogLine) -> dict[str, Any] | None:
    if line.event is not None:
        return line.event
    try:
        message = orjson.loads(line.frame)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _field(data: object, name: str) -> str | None:
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


@dataclass
class Captured:
    """The conversations captured in a log, and how far the log was read.

    Attributes:
        conversation_ids: The captured conversations.
        last_seq: The last complete line read; scan again from here.
        corrupt: Complete lines of a candidate source that did not decode.

    """

    conversation_ids: set[str] = field(default_factory=set)
    last_seq: int = 0
    corrupt: int = 0


def _quick_seq(raw: bytes) -> int | None:
    if not raw.startswith(_SEQ_PREFIX):
        return None
    end = raw.find(b",", len(_SEQ_PREFIX))
    try:
        return int(raw[len(_SEQ_PREFIX) : end])
    except ValueError:
        return None


def scan_captured(events_dir: Path, into: Captured | None = None) -> Captured:
    """Add to ``into`` what the log holds after ``into.last_seq`` (everything if ``into`` is None).

    Blocking file I/O: call it with ``asyncio.to_thread`` from a loop. A line
    being written at the very end (no newline yet) is left for the next scan.

    Raises:
        LogError: a segment cannot be read.

    """
    captured = into if into is not None else Captured()
    after = captured.last_seq
    segments = list_segments(events_dir)
    start = 0
    for i, path in enumerate(segments):
        first = first_seq_of(path)
        if first is not None and first <= after + 1:
            start = i
    skipping = after > 0
    last: bytes | None = None
    for path in segments[start:]:
        with open_segment(path) as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                last = raw
                if skipping:
                    seq = _quick_seq(raw)
                    if seq is None or seq <= after:
                        continue
                    skipping = False  # seqs only grow from here
                at = raw.find(_SOURCE_KEY, 0, _HEAD)
                if at < 0 or not raw.startswith(_SOURCES, at + len(_SOURCE_KEY)):
                    continue
                try:
                    line = decode_line(raw)
                except LineError:
                    captured.corrupt += 1
                    continue
                conversation_id = captured_conversation_id(line)
                if conversation_id is not None:
                    captured.conversation_ids.add(conversation_id)
    if last is not None:
        captured.last_seq = max(captured.last_seq, _quick_seq(last) or 0)
    return captured
