"""The user-texts rule: which log lines are user turns, and the row each one gives.

A pure fold over the log (no I/O): :func:`fold` takes lines in log order and
returns the rows they produce. The SQLite store applies those rows; the DuckDB
``user_texts`` view (:mod:`projections.duckdb_views`) states the same rule in
SQL, built from the constants here. Tests check that both agree row for row.

The rule:

* A **user turn** is a ``user_transcript`` frame received (direction ``in``),
  text at ``user_transcription_event.user_transcript``, or a ``user_message``
  frame sent (direction ``out``), text at ``text``. Nothing else is projected:
  tentative transcripts, agent text and every other frame stay in the log.
* A turn whose text is missing or not a string is skipped as ``no_text``; one
  whose text is empty or only :data:`WHITESPACE` is skipped as ``empty_text``.
* **Dedup key** (``dedup_key`` is unique in the table; the first line wins):

  - a transcript: ``(conversation_id, "user_transcript", event_id, text)``, so
    the same transcript received twice (a resent frame) is one row. A
    transcript without a conversation id or without an integer or string
    ``event_id`` cannot be proven to be a resend; it is keyed by its seq.
  - a typed message: its seq. A user who types "yes" twice said it twice; the
    same line applied twice is still one row.

* **user_id**: the ``user_id`` of the latest ``conversation_initiation_client_data``
  frame sent (direction ``out``) on the same connection before the turn; else
  the frame's own top-level ``user_id``; else :data:`DEFAULT_USER_ID`. The
  connection, not the conversation, links the two because the client sends its
  init frame before the server announces the conversation id.
* A line whose seq is not above the last applied one is a duplicated line and
  is skipped as ``duplicate_line``; a jump in seq is reported as a :class:`Gap`.

"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from ingest.envelope import LogLine


__all__ = [
    "COLUMNS",
    "DEFAULT_USER_ID",
    "INIT_TYPE",
    "RULE_TYPES",
    "WHITESPACE",
    "FoldResult",
    "FoldState",
    "Gap",
    "Kind",
    "SkipReason",
    "UserTextRow",
    "fold",
    "is_blank",
    "message_key",
    "transcript_key",
]

DEFAULT_USER_ID = "eleven_user"
INIT_TYPE = "conversation_initiation_client_data"

# Python's str.isspace() set plus the invisible zero-width characters, spelled
# out so that SQL (DuckDB's trim) can be given exactly the same set.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
    "\u200b\u200c\u200d\u2060\ufeff"
)

#: The columns of a row, in table order (the SQLite table adds ``id`` first).
COLUMNS = ("dedup_key", "kind", "session_id", "user_id", "text", "timestamp", "metadata", "sources", "seq")


class Kind(enum.StrEnum):
    """The two kinds of user turn."""

    USER_TRANSCRIPT = "user_transcript"  # final speech-to-text, received
    USER_MESSAGE = "user_message"  # typed text, sent by this client


#: The frame types the rule reads; a line of any other type gives no row and changes no state.
RULE_TYPES = frozenset({INIT_TYPE, Kind.USER_TRANSCRIPT.value, Kind.USER_MESSAGE.value})


class SkipReason(enum.StrEnum):
    """Why a line that could have been a row is not one."""

    INVALID_LINE = "invalid_line"  # a complete line that is not a valid envelope (counted by the reader)
    DUPLICATE_LINE = "duplicate_line"  # seq at or below the last applied line
    NO_TEXT = "no_text"  # a user turn whose text is missing or not a string
    EMPTY_TEXT = "empty_text"  # a user turn whose text is empty or whitespace
    DUPLICATE_TURN = "duplicate_turn"  # its dedup key is already in the table (counted by the store)


@dataclass(frozen=True, slots=True)
class Gap:
    """Lines missing from the log: seqs ``after_seq + 1`` to ``next_seq - 1``."""

    after_seq: int
    next_seq: int

    @property
    def missing(self) -> int:
        return self.next_seq - self.after_seq - 1

    def __str__(self) -> str:
        return f"seq {self.after_seq + 1}..{self.next_seq - 1} missing"


class UserTextRow(NamedTuple):
    """One user turn, shaped as a table row: its values in :data:`COLUMNS` order.

    Attributes:
        dedup_key: Unique per user turn, see the module docstring.
        kind: A :class:`Kind` value.
        session_id: The conversation id (``None`` if the line had none).
        user_id: Who spoke, see the module docstring.
        text: The text exactly as in the frame (not stripped).
        timestamp: The line's ``received_at`` (UTC, RFC 3339 with microseconds).
        metadata: JSON text: ``raw_event`` (the frame exactly as logged), ``seq``,
            ``source`` and ``event_id`` (``null`` for typed messages).
        sources: JSON array text of the sources that saw the turn, e.g. ``["agent_ws"]``.
        seq: The seq of the line the row comes from.

    """

    dedup_key: str
    kind: str
    session_id: str | None
    user_id: str
    text: str
    timestamp: str
    metadata: str
    sources: str
    seq: int


@dataclass
class FoldState:
    """What the fold remembers between lines; persist it with the rows.

    Attributes:
        last_seq: The seq of the last applied line (0 before the first).
        user_ids: ``user_id`` of the init frame seen per connection id.

    """

    last_seq: int = 0
    user_ids: dict[str, str] = field(default_factory=dict)

    def copy(self) -> FoldState:
        return FoldState(self.last_seq, dict(self.user_ids))


@dataclass
class FoldResult:
    """What one :func:`fold` call produced.

    Attributes:
        rows: The rows, in log order; duplicates by ``dedup_key`` are kept
            (the table keeps the first, so a key may already be stored).
        user_ids: Connection ids whose ``user_id`` was learnt in this call.
        skipped: Count per :class:`SkipReason` value.
        gaps: Jumps in seq seen.
        lines: Lines applied (valid and not duplicated).
        last_seq: The state's ``last_seq`` after the call.

    """

    rows: list[UserTextRow] = field(default_factory=list)
    user_ids: dict[str, str] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    gaps: list[Gap] = field(default_factory=list)
    lines: int = 0
    last_seq: int = 0


def is_blank(text: str) -> bool:
    """Whether ``text`` is empty or made only of :data:`WHITESPACE`."""
    return not text.strip(WHITESPACE)


def transcript_key(conversation_id: str, event_id: str, text: str) -> str:
    """Return the dedup key of a transcript that carries a conversation and an event id.

    The parts are length-prefixed (in UTF-8 bytes) before hashing, so no choice
    of ids and text can make two different triples collide by concatenation.
    """
    material = f"{_utf8_len(conversation_id)}:{conversation_id}{_utf8_len(event_id)}:{event_id}{text}"
    return "user_transcript:sha256:" + hashlib.sha256(material.encode("utf-8")).hexdigest()


def message_key(kind: str, seq: int) -> str:
    """Return the dedup key of a turn that is its own row (a typed message, an unkeyable transcript)."""
    return f"{kind}:seq:{seq}"


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _event_id(value: Any) -> int | str | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int | str) else None


@functools.lru_cache(maxsize=64)  # a log has a handful of sources
def _source_json(source: str | None) -> tuple[bytes, str]:
    """Return ``source`` as JSON and the ``sources`` array text."""
    return orjson.dumps(source), orjson.dumps([source]).decode()


def _turn(
    line: LogLine, event: dict[str, Any], kind: str, user_ids: dict[str, str]
) -> UserTextRow | SkipReason:
    envelope = line.envelope
    event_id: int | str | None = None
    if kind == Kind.USER_TRANSCRIPT:
        inner = event.get("user_transcription_event")
        if not isinstance(inner, dict):
            return SkipReason.NO_TEXT
        text = inner.get("user_transcript")
        event_id = _event_id(inner.get("event_id"))
    else:
        text = event.get("text")
    if not isinstance(text, str):
        return SkipReason.NO_TEXT
    if is_blank(text):
        return SkipReason.EMPTY_TEXT
    conversation_id = _string(envelope.get("conversation_id"))
    connection_id = envelope.get("connection_id")
    source_json, sources = _source_json(_string(envelope.get("source")))
    if kind == Kind.USER_TRANSCRIPT and conversation_id is not None and event_id is not None:
        key = transcript_key(conversation_id, str(event_id), text)
    else:
        key = message_key(kind, line.seq)
    user_id = (
        (user_ids.get(connection_id) if isinstance(connection_id, str) else None)
        or _string(event.get("user_id"))
        or DEFAULT_USER_ID
    )
    # Spliced by hand so that raw_event keeps the frame's bytes exactly.
    metadata = b'{"raw_event":%b,"seq":%d,"source":%b,"event_id":%b}' % (
        line.frame,
        line.seq,
        source_json,
        orjson.dumps(event_id),
    )
    return UserTextRow(
        key,
        kind,
        conversation_id,
        user_id,
        text,
        str(envelope.get("received_at")),
        metadata.decode("utf-8"),
        sources,
        line.seq,
    )


def fold(state: FoldState, lines: Iterable[LogLine | range]) -> FoldResult:
    """Apply ``lines`` (in log order) to ``state`` and return the rows they give.

    Consecutive lines whose frame type the caller knows is not one of
    :data:`RULE_TYPES` may be given as the ``range`` of their seqs: they give
    no row but move the position and show gaps. ``state`` is advanced in
    place; keep a :meth:`FoldState.copy` if the result may not be stored.
    Folding a log in one call or in any number of batches gives the same rows.
    """
    result = FoldResult(last_seq=state.last_seq)
    user_ids = state.user_ids
    rows = result.rows
    last_seq = state.last_seq
    applied = 0
    for line in lines:
        if isinstance(line, range):
            first, stop = line.start, line.stop
            if first <= last_seq:
                duplicates = min(stop, last_seq + 1) - first
                result.skipped[SkipReason.DUPLICATE_LINE] += duplicates
                first += duplicates
            elif first != last_seq + 1:
                result.gaps.append(Gap(last_seq, first))
            if first < stop:
                applied += stop - first
                last_seq = stop - 1
            continue
        seq = line.seq
        if seq <= last_seq:
            result.skipped[SkipReason.DUPLICATE_LINE] += 1
            continue
        if seq != last_seq + 1:
            result.gaps.append(Gap(last_seq, seq))
        last_seq = seq
        applied += 1
        event = line.event
        if event is None:
            continue
        kind = event.get("type")
        direction = line.envelope.get("direction")
        if kind == INIT_TYPE and direction == "out":
            connection_id = _string(line.envelope.get("connection_id"))
            user_id = _string(event.get("user_id"))
            if connection_id is not None and user_id:
                user_ids[connection_id] = user_id
                result.user_ids[connection_id] = user_id
            continue
        if (kind == Kind.USER_TRANSCRIPT and direction == "in") or (
            kind == Kind.USER_MESSAGE and direction == "out"
        ):
            outcome = _turn(line, event, kind, user_ids)
            if isinstance(outcome, SkipReason):
                result.skipped[outcome] += 1
            else:
                rows.append(outcome)
    state.last_seq = result.last_seq = last_seq
    result.lines = applied
    return result
