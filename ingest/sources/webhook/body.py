"""What a webhook delivery's body says: its type and ids. Pure.

A receiver needs three fields of a delivery: the top-level ``type`` and
``data.agent_id`` / ``data.conversation_id`` (for the log's envelope). A body
that fits in memory is parsed whole (:func:`delivery_info`). A body too big to
keep is a ``post_call_audio`` (megabytes of base64 MP3, sent as chunked HTTP)
or junk: :class:`BodyScanner` reads it piece by piece, keeping only those three
fields, so the receiver can answer the audio without storing it and refuse
anything else with 413. :class:`DeliveryBody` applies that policy to a body
as it arrives.

"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import orjson


__all__ = ["AUDIO_TYPE", "SNIFF_AFTER", "BodyScanner", "DeliveryBody", "DeliveryInfo", "delivery_info"]

#: The delivery type whose body (the conversation's audio) is never stored.
AUDIO_TYPE: Final = "post_call_audio"

_WANTED: Final = {
    ("type",): "type",
    ("data", "agent_id"): "agent_id",
    ("data", "conversation_id"): "conversation_id",
}

#: A body past this size is scanned for its type as it streams, so that an
#: audio delivery stops being buffered early.
SNIFF_AFTER: Final = 1024 * 1024

# Longest key or wanted value kept; longer ones are treated as unknown.
_MAX_TOKEN = 1024

_STRUCTURE = re.compile(rb'[{}\[\]:,"]')
_STRING_END = re.compile(rb'["\\]')


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """The fields of a delivery the receiver uses; each is ``None`` when absent or not a string.

    Attributes:
        type: The top-level ``type`` (``post_call_transcription``, …).
        agent_id: ``data.agent_id``.
        conversation_id: ``data.conversation_id``.

    """

    type: str | None
    agent_id: str | None
    conversation_id: str | None

    @property
    def is_audio(self) -> bool:
        """Whether this is a ``post_call_audio`` delivery, whose body is never stored."""
        return self.type == AUDIO_TYPE


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def delivery_info(message: dict[str, Any] | None) -> DeliveryInfo:
    """Return the fields of a parsed body (``None`` when it is not a JSON object)."""
    if message is None:
        return DeliveryInfo(None, None, None)
    data = message.get("data")
    data = data if isinstance(data, dict) else {}
    return DeliveryInfo(
        _string(message.get("type")), _string(data.get("agent_id")), _string(data.get("conversation_id"))
    )


class _Object:
    __slots__ = ("expect_key", "key")

    def __init__(self) -> None:
        self.expect_key = True
        self.key: str | None = None


class _Array:
    __slots__ = ()


class BodyScanner:
    """Find ``type``, ``data.agent_id`` and ``data.conversation_id`` in a JSON body fed in pieces.

    Memory stays bounded whatever the body's size: only object keys and the
    three wanted values (up to 1 KiB each) are kept. The scanner follows the
    JSON structure (nesting, strings, escapes split across pieces) without
    validating scalars, so a key nested elsewhere is never taken for a
    top-level one.

    Call :meth:`feed` with each piece in order, then read :attr:`info` and
    :attr:`complete`.

    """

    def __init__(self) -> None:
        self._stack: list[_Object | _Array] = []
        self._in_string = False
        self._escape = False  # a backslash ended the previous piece
        self._is_key = False
        self._wanted: str | None = None  # which wanted field the current string is
        self._token: bytearray | None = None  # the current string's bytes, when kept
        self._found: dict[str, str] = {}
        self._closed = False  # the top-level value has ended
        self._broken = False  # not one JSON object: see malformed

    @property
    def info(self) -> DeliveryInfo:
        """The fields found so far (a later duplicate key overrides, as in a JSON parser)."""
        return DeliveryInfo(
            self._found.get("type"), self._found.get("agent_id"), self._found.get("conversation_id")
        )

    @property
    def malformed(self) -> bool:
        """Whether the body is already known not to be one JSON object (brackets, extra values)."""
        return self._broken

    @property
    def complete(self) -> bool:
        """Whether one top-level JSON object was seen whole, with balanced brackets."""
        return self._closed and not self._broken and not self._in_string

    def feed(self, piece: bytes | bytearray) -> None:
        """Scan the next piece of the body."""
        pos = 0
        end = len(piece)
        while pos < end and not self._broken:
            if self._in_string:
                pos = self._scan_string(piece, pos)
                continue
            match = _STRUCTURE.search(piece, pos)
            if match is None:
                return
            pos = match.end()
            self._structure(piece[match.start()])

    def _scan_string(self, piece: bytes | bytearray, pos: int) -> int:
        start = pos
        if self._escape:
            self._escape = False
            pos += 1
        while True:
            match = _STRING_END.search(piece, pos)
            if match is None:
                self._keep(piece[start:])
                return len(piece)
            if match.group() == b"\\":
                if match.end() == len(piece):
                    self._escape = True
                    self._keep(piece[start:])
                    return len(piece)
                pos = match.end() + 1
                continue
            self._keep(piece[start : match.start()])
            self._end_string()
            return match.end()

    def _keep(self, part: bytes | bytearray) -> None:
        token = self._token
        if token is None:
            return
        if len(token) + len(part) > _MAX_TOKEN:
            self._token = None
            self._wanted = None
            if self._is_key:
                self._set_key(None)
            return
        token += part

    def _set_key(self, key: str | None) -> None:
        top = self._stack[-1]
        assert isinstance(top, _Object)
        top.key = key

    def _path(self) -> tuple[str, ...] | None:
        keys: list[str] = []
        for container in self._stack:
            if not isinstance(container, _Object) or container.key is None:
                return None
            keys.append(container.key)
        return tuple(keys)

    def _start_string(self) -> None:
        self._in_string = True
        top = self._stack[-1]
        self._is_key = isinstance(top, _Object) and top.expect_key
        if self._is_key:
            self._set_key(None)
            self._token = bytearray()
            return
        path = self._path()
        self._wanted = _WANTED.get(path) if path is not None else None
        self._token = bytearray() if self._wanted is not None else None

    def _end_string(self) -> None:
        self._in_string = False
        token, self._token = self._token, None
        text: str | None = None
        if token is not None:
            try:
                decoded = orjson.loads(b'"' + bytes(token) + b'"')
            except orjson.JSONDecodeError:
                decoded = None
            text = decoded if isinstance(decoded, str) else None
        if self._is_key:
            self._set_key(text)
        elif self._wanted is not None and text is not None:
            self._found[self._wanted] = text
        self._wanted = None

    def _structure(self, char: int) -> None:
        top = self._stack[-1] if self._stack else None
        if top is None and (self._closed or char != ord("{")):
            self._broken = True  # a second top-level value, or one that is not an object
            return
        if char == ord('"'):
            self._start_string()
        elif char in (ord("{"), ord("[")):
            self._stack.append(_Object() if char == ord("{") else _Array())
        elif char in (ord("}"), ord("]")):
            expected = _Object if char == ord("}") else _Array
            if not isinstance(top, expected):
                self._broken = True
                return
            self._stack.pop()
            self._closed = not self._stack
        elif char == ord(":"):
            if isinstance(top, _Object):
                top.expect_key = False
        elif isinstance(top, _Object):  # ","
            top.expect_key = True
            top.key = None


class DeliveryBody:
    """Collect a delivery's body as it arrives: keep it, scan it, or refuse it.

    * A body up to ``max_body`` bytes is kept whole, unless it is a
      ``post_call_audio``: past :data:`SNIFF_AFTER` bytes (or ``max_body`` if
      smaller) the body is also scanned, and an audio body is dropped as soon
      as its type is known.
    * A body over ``max_body`` (declared or counted) is no longer kept; it is
      read on only while it may still be an audio delivery, up to
      ``max_audio_body``.

    Call :meth:`feed` with each piece; stop reading and refuse (413) when it
    returns False. After the last piece call :meth:`finish`.

    Args:
        declared_size: The request's Content-Length, if any.

    """

    def __init__(self, *, max_body: int, max_audio_body: int, declared_size: int | None = None) -> None:
        self.max_body = max_body
        self.max_audio_body = max_audio_body
        self.size = 0
        too_big = declared_size is not None and declared_size > max_body
        self._kept: bytearray | None = None if too_big else bytearray()
        self._scanner: BodyScanner | None = BodyScanner() if too_big else None
        self._sniff_after = min(SNIFF_AFTER, max_body)

    def feed(self, piece: bytes) -> bool:
        """Take the next piece; return False once the body must be refused as too large."""
        self.size += len(piece)
        kept, scanner = self._kept, self._scanner
        if kept is not None:
            kept += piece
            if scanner is None and self.size > self._sniff_after:
                scanner = self._scanner = BodyScanner()
                scanner.feed(kept)
            elif scanner is not None:
                scanner.feed(piece)
            if scanner is not None and (scanner.info.is_audio or self.size > self.max_body):
                kept = self._kept = None  # audio is never kept; an oversized body cannot be
        elif scanner is not None:
            scanner.feed(piece)
        if kept is not None:
            return True
        assert scanner is not None
        # Read on only while the body may still be an audio delivery.
        kind = scanner.info.type
        return not (
            scanner.malformed or self.size > self.max_audio_body or (kind is not None and kind != AUDIO_TYPE)
        )

    def finish(self) -> bytes | DeliveryInfo | None:
        """Say what the whole body turned out to be.

        Returns:
            The body's bytes when it was kept (it may still be an audio
            delivery of at most ``max_body`` bytes); the fields of an audio
            delivery that was not kept; or ``None`` when the body is too
            large (answer 413).

        """
        if self._kept is not None:
            return bytes(self._kept)
        scanner = self._scanner
        assert scanner is not None
        if scanner.complete and scanner.info.is_audio:
            return scanner.info
        return None
