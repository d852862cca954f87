"""A webhook delivery's body: received and authenticated before anyone looks at it. Pure.

:class:`DeliveryBody` takes the body as it arrives: it feeds the HMAC, counts,
keeps what must be kept, and hands the content out only once the signature is
verified (:meth:`DeliveryBody.verify`). Before that, nothing parses a byte:
the one look at unverified bytes is :func:`names_audio` on the first few
hundred, which decides how far an unverified body may be read (a
``post_call_audio`` — megabytes of base64 MP3, sent as chunked HTTP — may be
larger than any body that is stored).

Once verified, a receiver needs three fields: the top-level ``type`` and
``data.agent_id`` / ``data.conversation_id`` (for the log's envelope). A kept
body is parsed whole (:func:`delivery_info` of the parsed object); an audio
body, not kept, keeps its first bytes, which :class:`BodyScanner` reads.

"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ingest.sources.webhook.signature import SignatureHeader, check_digest


__all__ = [
    "AUDIO_HEAD",
    "AUDIO_TYPE",
    "SNIFF_AFTER",
    "AudioBody",
    "BodyScanner",
    "DeliveryBody",
    "DeliveryInfo",
    "delivery_info",
    "names_audio",
]

#: The delivery type whose body (the conversation's audio) is never stored.
AUDIO_TYPE: Final = "post_call_audio"

_WANTED: Final = {
    ("type",): "type",
    ("data", "agent_id"): "agent_id",
    ("data", "conversation_id"): "conversation_id",
}

#: Past this size (or ``max_body``, if smaller) a body whose first bytes name
#: ``post_call_audio`` stops being kept: audio is never stored.
SNIFF_AFTER: Final = 1024 * 1024

#: The first bytes of an audio body kept (to name its ids once verified).
AUDIO_HEAD: Final = 4096

# How a post_call_audio body begins, as ElevenLabs writes it (``type`` is the
# envelope's first key), blanks allowed. Bounded quantifiers over a bounded
# window: constant time, whatever the bytes.
_AUDIO_START = re.compile(
    rb'[ \t\r\n]{0,64}\{[ \t\r\n]{0,64}"type"[ \t\r\n]{0,64}:[ \t\r\n]{0,64}"post_call_audio"'
)
_AUDIO_WINDOW: Final = 300

_WANTED_DEPTH: Final = max(len(path) for path in _WANTED)

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


def names_audio(head: bytes | bytearray) -> bool:
    """Say whether a body's first bytes are those of a ``post_call_audio``: ``{"type":"post_call_audio"``.

    Blanks are allowed around each token. Looks at no more than the first 300
    bytes, in constant time: this is not parsing, and is safe on unverified
    bytes. A body whose ``type`` is not its first key is not recognised.

    """
    return _AUDIO_START.match(head, 0, _AUDIO_WINDOW) is not None


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

    Linear in the input: each byte is looked at a bounded number of times,
    however deep the nesting. Memory holds the open containers (a few bytes
    each), object keys and the three wanted values (up to 1 KiB each). The
    scanner follows the JSON structure (nesting, strings, escapes split across
    pieces) without validating scalars, so a key nested elsewhere is never
    taken for a top-level one. Feed it verified bytes only, and a bounded
    amount of them (the receiver gives it an audio body's first
    :data:`AUDIO_HEAD` bytes).

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
        if len(self._stack) > _WANTED_DEPTH:
            return None  # nothing wanted lies that deep; and no walk down a deep stack
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


@dataclass(frozen=True, slots=True)
class AudioBody:
    """A verified ``post_call_audio`` body that was read but not kept.

    Attributes:
        head: Its first :data:`AUDIO_HEAD` bytes (or fewer).
        size: Its size in bytes.

    """

    head: bytes
    size: int

    @property
    def info(self) -> DeliveryInfo:
        """The fields its first bytes show (the ids, when they come before the audio)."""
        scanner = BodyScanner()
        scanner.feed(self.head)
        found = scanner.info
        return DeliveryInfo(AUDIO_TYPE, found.agent_id, found.conversation_id)


class DeliveryBody:
    """Take a delivery's body as it arrives: hash it, count it, keep it or not; look only once verified.

    How far an unverified body is read, and what is kept of it:

    * up to ``max_body`` bytes are kept, to be stored once verified;
    * a body whose first bytes name ``post_call_audio`` (:func:`names_audio`)
      stops being kept past :data:`SNIFF_AFTER` bytes (or ``max_body``, if
      smaller): only its first :data:`AUDIO_HEAD` bytes are; it is read on,
      hashed, up to ``max_audio_body``;
    * any other body over ``max_body`` is refused as soon as that is known:
      at ``max_body`` bytes, or after its first bytes when its declared size
      is already over.

    Memory is bounded by ``max_body`` whatever the body; time is linear (the
    HMAC, one copy of a kept body).

    Call :meth:`feed` with each piece in order, and stop reading and refuse
    (413) when it returns False. After the last piece, :meth:`verify` checks
    the signature and only then gives the content.

    Args:
        mac: The HMAC from :func:`~ingest.sources.webhook.signature.signer`,
            for the signature's timestamp; nothing else must feed it.
        declared_size: The request's Content-Length, if any.

    """

    def __init__(
        self, mac: hmac.HMAC, *, max_body: int, max_audio_body: int, declared_size: int | None = None
    ) -> None:
        self.max_body = max_body
        self.max_audio_body = max_audio_body
        self.size = 0
        self._mac = mac
        self._pieces: list[bytes] = []
        self._head = bytearray()  # the first AUDIO_HEAD bytes
        self._audio = False  # the first bytes name post_call_audio; nothing more is kept
        self._decided = False  # names_audio has been asked
        self._declared_over = declared_size is not None and declared_size > max_body
        self._sniff_after = min(SNIFF_AFTER, max_body)

    @property
    def held(self) -> int:
        """Bytes of the body held in memory now."""
        return len(self._head) if self._audio else self.size

    def feed(self, piece: bytes) -> bool:
        """Take the next piece; return False once the body must be refused as too large."""
        self._mac.update(piece)
        self.size += len(piece)
        if len(self._head) < AUDIO_HEAD:
            self._head += piece[: AUDIO_HEAD - len(self._head)]
        if self._audio:
            return self.size <= self.max_audio_body
        self._pieces.append(piece)
        if not self._decided and (
            self.size > self._sniff_after or (self._declared_over and len(self._head) >= _AUDIO_WINDOW)
        ):
            self._decided = True
            if names_audio(self._head):
                self._audio = True
                self._pieces = []
                return self.size <= self.max_audio_body
            if self._declared_over:
                return False
        return self.size <= self.max_body

    def verify(self, header: SignatureHeader) -> bytes | AudioBody:
        """Check the signature over the whole body, then give what was kept.

        Returns:
            The body's bytes when it was kept (at most ``max_body``; it may
            still be a small ``post_call_audio``), else the :class:`AudioBody`
            of an audio delivery that was read but not kept.

        Raises:
            SignatureError: ``mismatch``; nothing of the body was looked at.

        """
        check_digest(header, self._mac.hexdigest())
        if self._audio:
            return AudioBody(bytes(self._head), self.size)
        return b"".join(self._pieces)
