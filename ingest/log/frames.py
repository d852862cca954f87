"""Look at one WebSocket frame: is it JSON, which type, is it audio, what to answer.

Pure functions over the frame's data; no I/O. The receive path calls
:func:`inspect_frame` once per frame and passes the result on, so a frame is
parsed at most once.

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import orjson


__all__ = [
    "Frame",
    "conversation_id_of",
    "error_of",
    "inspect_frame",
    "pong_for",
]

# Audio frames are the bulk of a voice session; recognising the usual
# serialisation by its prefix saves parsing tens of kilobytes of base64.
_AUDIO_PREFIXES = ('{"type":"audio"', '{"type": "audio"')


class Frame(NamedTuple):
    """One frame as received (or sent), with what was learnt by parsing it.

    Attributes:
        data: The frame exactly as it travelled: ``str`` for a text frame,
            ``bytes`` for a binary one.
        message: The parsed JSON object, or ``None`` when the frame is not a
            JSON object (malformed text, an array, a scalar, binary data).
        type: ``message["type"]`` when it is a string, else ``None``.

    """

    data: str | bytes
    message: dict[str, Any] | None
    type: str | None

    @property
    def spliceable(self) -> bool:
        """Whether the frame's own text can be spliced into a log line verbatim.

        True for a text frame holding one JSON object written on one line.

        """
        return (
            self.message is not None
            and isinstance(self.data, str)
            and "\n" not in self.data
            and "\r" not in self.data
        )

    @property
    def is_audio(self) -> bool:
        """Whether this is an ``audio`` frame, which is counted but never stored."""
        return self.type == "audio"


# A named tuple's own constructor is a Python function; tuple.__new__ is not,
# and the receive path builds one per frame.
_new_frame: Callable[[tuple[str | bytes, dict[str, Any] | None, str | None]], Frame] = partial(
    tuple.__new__, Frame
)


def inspect_frame(data: str | bytes) -> Frame:
    """Parse a frame just enough to route it.

    Never raises: whatever cannot be parsed is a frame with ``message=None``,
    which the log keeps as ``raw``.

    """
    if isinstance(data, bytes):
        return Frame(data, None, None)
    if data.startswith(_AUDIO_PREFIXES):
        return Frame(data, None, "audio")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Frame(data, None, None)
    if type(message) is not dict:
        return Frame(data, None, None)
    kind = message.get("type")
    return _new_frame((data, message, kind if type(kind) is str else None))


def pong_for(frame: Frame) -> str | None:
    """Return the ``pong`` to send for a ``ping`` frame, or ``None`` for any other frame."""
    if frame.type != "ping" or frame.message is None:
        return None
    ping_event = frame.message.get("ping_event")
    event_id = ping_event.get("event_id") if isinstance(ping_event, dict) else None
    return orjson.dumps({"type": "pong", "event_id": event_id}).decode()


def conversation_id_of(frame: Frame) -> str | None:
    """Return the conversation id a ``conversation_initiation_metadata`` frame announces."""
    if frame.type != "conversation_initiation_metadata" or frame.message is None:
        return None
    event = frame.message.get("conversation_initiation_metadata_event")
    conversation_id = event.get("conversation_id") if isinstance(event, dict) else None
    return conversation_id if isinstance(conversation_id, str) else None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """What an ``error`` frame says; every field may be missing on the wire."""

    code: int | None
    error_type: str | None
    message: str | None

    def __str__(self) -> str:
        text = self.error_type or "error"
        if self.code is not None:
            text += f" (code {self.code})"
        if self.message:
            text += f": {self.message}"
        return text


def error_of(frame: Frame) -> ErrorEvent | None:
    """Return the content of an ``error`` frame, or ``None`` for any other frame."""
    if frame.type != "error" or frame.message is None:
        return None
    event = frame.message.get("error_event")
    if not isinstance(event, dict):
        return ErrorEvent(None, None, None)
    code = event.get("code")
    error_type = event.get("error_type")
    message = event.get("message")
    return ErrorEvent(
        code if isinstance(code, int) else None,
        error_type if isinstance(error_type, str) else None,
        message if isinstance(message, str) else None,
    )
