"""The log's line format: one envelope per frame, the frame spliced in verbatim.

A line is one JSON object on one line, fields in this order::

    {"seq":42,"received_at":"2026-11-25T12:00:00.123456Z","source":"agent_ws",
     "direction":"in","agent_id":"agent_x","connection_id":"…","conversation_id":"conv_…",
     "crc32":1234567,"event":{…the frame's own bytes…}}

The frame is the last field and is exactly one of:

* ``event``: a text frame holding one JSON object on one line, spliced in byte
  for byte (``"Ol\\u00e1"`` stays ``"Ol\\u00e1"``);
* ``raw``: any other text frame, as a JSON string;
* ``raw_b64``: a binary frame, base64.

``crc32`` is CRC-32 of the frame's bytes as received (UTF-8 for text), so bit
rot that still parses is caught, and so a reader can prove a frame is verbatim.

Pure functions: :func:`encode_line` and :func:`decode_line`.

"""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, Literal, NamedTuple

import orjson

from ingest.log.frames import Frame


__all__ = [
    "EVENT_KEY",
    "LineError",
    "LogLine",
    "Origin",
    "decode_line",
    "encode_line",
    "format_epoch_ns",
    "format_timestamp",
    "frame_bytes",
]

Direction = Literal["in", "out"]

#: What precedes the frame in a line: the frame is spliced in right after it.
EVENT_KEY = b',"event":'


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a frame came from: the envelope fields other than seq and time."""

    source: str
    direction: Direction
    agent_id: str | None
    connection_id: str | None
    conversation_id: str | None


def format_timestamp(moment: datetime) -> str:
    """Format a moment as RFC 3339 UTC with microseconds, e.g. ``2026-11-25T12:00:00.000001Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@lru_cache(maxsize=4)
def _second_prefix(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))


def format_epoch_ns(epoch_ns: int) -> str:
    """Format ``time.time_ns()`` like :func:`format_timestamp`, several times faster.

    The receive path stamps every frame; formatting only the microseconds of a
    cached second keeps that off the profile.

    """
    second, rest = divmod(epoch_ns, 1_000_000_000)
    return "%s%06dZ" % (_second_prefix(second), rest // 1000)  # noqa: UP031 - half the time of an f-string's :06d


def frame_bytes(data: str | bytes) -> bytes:
    """Return the bytes a frame's CRC is computed over."""
    return data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")


def encode_line(seq: int, received_at: str, origin: Origin, frame: Frame) -> bytes:
    """Build one log line, newline included.

    Args:
        seq: The line's position in the whole log.
        received_at: :func:`format_timestamp` of the moment the frame arrived.
        origin: The envelope fields.
        frame: The frame, from :func:`~ingest.log.frames.inspect_frame`.

    """
    raw = frame_bytes(frame.data)
    header = orjson.dumps(
        {
            "seq": seq,
            "received_at": received_at,
            "source": origin.source,
            "direction": origin.direction,
            "agent_id": origin.agent_id,
            "connection_id": origin.connection_id,
            "conversation_id": origin.conversation_id,
            "crc32": zlib.crc32(raw),
        }
    )
    if frame.spliceable:
        return b"".join((header[:-1], EVENT_KEY, raw, b"}\n"))
    if isinstance(frame.data, bytes):
        tail = orjson.dumps({"raw_b64": base64.b64encode(raw).decode("ascii")})
    else:
        tail = orjson.dumps({"raw": frame.data})
    return b"".join((header[:-1], b",", tail[1:], b"\n"))


class LogLine(NamedTuple):
    """One decoded log line.

    Attributes:
        seq: Position in the whole log (+1 per line).
        envelope: The whole line, parsed.
        event: The frame when it was spliced (a JSON object), else ``None``.
        frame: The frame's bytes exactly as received or sent.

    """

    seq: int
    envelope: dict[str, Any]
    event: dict[str, Any] | None
    frame: bytes

    @property
    def received_at(self) -> str:
        return str(self.envelope["received_at"])

    @property
    def source(self) -> str:
        return str(self.envelope["source"])

    @property
    def direction(self) -> str:
        return str(self.envelope["direction"])

    @property
    def conversation_id(self) -> str | None:
        value = self.envelope.get("conversation_id")
        return value if isinstance(value, str) else None

    @property
    def type(self) -> str | None:
        """The frame's ``type`` when it is a spliced JSON object."""
        kind = self.event.get("type") if self.event is not None else None
        return kind if isinstance(kind, str) else None


# A named tuple's own constructor is a Python function; tuple.__new__ is not,
# and every line a projection reads is built here.
_new_line: Callable[[tuple[int, dict[str, Any], dict[str, Any] | None, bytes]], LogLine] = partial(
    tuple.__new__, LogLine
)


class LineError(ValueError):
    """A line is not a valid envelope (torn, corrupt or not ours)."""


def decode_line(line: bytes) -> LogLine:
    """Parse and check one log line (with or without its newline).

    Raises:
        LineError: if the line is not valid JSON, lacks a field, or its frame
            does not match its ``crc32``.

    """
    line = line.rstrip(b"\n")
    try:
        envelope = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LineError(f"not JSON: {exc}") from None
    # type() rather than isinstance(): orjson makes exact dicts and ints, and
    # this runs for every line a projection reads.
    if type(envelope) is not dict:
        raise LineError("not a JSON object")
    seq = envelope.get("seq")
    if type(seq) is not int:  # bool is not int here
        raise LineError("no integer seq")
    event = envelope.get("event")
    if event is not None or "event" in envelope:
        start = line.find(EVENT_KEY)
        if start < 0 or type(event) is not dict:
            raise LineError("event is not a spliced JSON object")
        raw = line[start + len(EVENT_KEY) : -1]
    elif type(envelope.get("raw")) is str:
        raw = frame_bytes(envelope["raw"])
    elif type(envelope.get("raw_b64")) is str:
        try:
            raw = base64.b64decode(envelope["raw_b64"], validate=True)
        except ValueError:
            raise LineError("raw_b64 is not base64") from None
    else:
        raise LineError("no event, raw or raw_b64")
    crc = envelope.get("crc32")
    if crc is not None and crc != zlib.crc32(raw):
        raise LineError("crc32 does not match the frame")
    return _new_line((seq, envelope, event, raw))


def now() -> datetime:
    """Return the current UTC time (the one clock the log uses)."""
    return datetime.now(UTC)
