"""The user-texts rule: which log lines hold user turns, and how sightings of one turn become one row.

A pure fold over the log (no I/O): :func:`fold` takes lines in log order, finds
the user turns in them (*sightings*), and merges each sighting into the row of
its turn, asking a :class:`TableView` only for the rows and aliases the batch
touches. The SQLite store applies the changed rows; the DuckDB ``user_texts``
view (:mod:`projections.duckdb_views`) states the same rule in SQL, built from
the constants here. Tests check that both agree row for row.

**Sightings.** One per user turn a source logged:

* ``agent_ws``: a ``user_transcript`` received (direction ``in``, text at
  ``user_transcription_event.user_transcript``, spoken) and a ``user_message``
  sent (direction ``out``, text at ``text``, typed);
* ``relay``: the same as ``agent_ws``, in both directions of a conversation
  the relay stood in (:data:`SPOKEN_LIVE_SOURCES`);
* ``monitor``: a ``user_transcript`` received (medium unknown: the monitor
  socket may show typed text this way too);
* ``rest``: each ``role: "user"`` entry of the GET-conversation body's
  ``transcript``; ``webhook``: the same in ``data.transcript`` of a
  ``post_call_transcription`` delivery. The body is the spliced frame, or the
  ``raw`` frame parsed as JSON (a pretty-printed body). ``source_medium``
  ``audio`` / ``text`` says spoken / typed; other values are unknown.

Nothing else is projected (tentative transcripts, agent text, other webhook
types); ``capture``'s ``connection_closed`` record only ends the state kept for
its connection. A turn whose text is missing or not a string is skipped as
``no_text``; empty or only :data:`WHITESPACE`, as ``empty_text``.

**Matching.** Texts are compared normalised (runs of :data:`WHITESPACE`
collapsed to one space, ends trimmed). Each sighting has a key:

* *spoken* ``(conversation, event id, text)``: a live transcript's
  ``event_id``, or the ``source_event_id`` of a REST/webhook entry that is not
  typed (the API ties one to the other);
* *typed* ``(conversation, text, n)``: n-th typed user turn with that text in
  the conversation, counted in the source's own order: ``agent_ws`` or ``relay``
  ``user_message`` lines of the connection, or ``source_medium: "text"``
  entries of the one transcript (so every copy of a body gives the same keys);
* *entry* ``(conversation, source_medium, text, n)``: a REST/webhook entry
  that is neither typed nor carries an id, n counted in its transcript;
* *line*: a sighting without a conversation id, or a live transcript without
  an ``event_id``, is its own row (keyed by seq and entry index).

A typed REST/webhook entry that also has a ``source_event_id`` makes its spoken
key an *alias* of its typed key (the first such entry in the log wins), so a
monitor transcript of that turn lands in the typed row too. A row holds every
sighting with the same key, through aliases: ``sources`` is the sorted set of
their sources; ``timestamp`` the earliest of their times (a live line's
``received_at``; for REST/webhook ``metadata.start_time_unix_secs +
time_in_call_secs`` when both are numbers, else the line's ``received_at``);
``kind`` follows the medium of the first sighting that knows it (``text`` →
``user_message``, else ``user_transcript``); ``user_id`` is the first one a
sighting knows, else :data:`DEFAULT_USER_ID`; ``id``, ``text``, ``session_id``,
``seq`` and the head of ``metadata`` come from the first sighting in log order.

**user_id of a sighting**: live, the ``user_id`` of the latest
``conversation_initiation_client_data`` sent on the same connection (since its
last ``connection_closed`` record), else the frame's own ``user_id``; REST and
webhook, the body's ``user_id``, else its
``conversation_initiation_client_data.user_id``.

Idempotent: a line whose seq is not above the last applied one is skipped as
``duplicate_line`` (a jump in seq is reported as a :class:`Gap`), and a second
copy of a body (a replayed webhook, a refetch) gives the same keys, so it only
adds a sighting to the rows of its turns (counted as ``duplicate_turn``).

"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from ingest.log.envelope import LogLine


__all__ = [
    "AGENT_WS",
    "BODY_SOURCES",
    "CAPTURE",
    "CLOSED_TYPE",
    "COLUMNS",
    "DEFAULT_USER_ID",
    "ENTRY_SLOTS",
    "INIT_TYPE",
    "LIVE_RULE_TYPES",
    "MAX_EPOCH_US",
    "MAX_OFFSET_SECS",
    "MAX_START_SECS",
    "MONITOR",
    "RELAY",
    "REST",
    "SPOKEN_LIVE_SOURCES",
    "TRANSCRIPTION_TYPE",
    "WEBHOOK",
    "WHITESPACE",
    "FoldResult",
    "FoldState",
    "Gap",
    "Kind",
    "Medium",
    "SkipReason",
    "TableView",
    "TypedCounts",
    "UserTextRow",
    "entry_key",
    "fold",
    "line_key",
    "normalize",
    "reads",
    "spoken_key",
    "turn_time",
    "typed_key",
]

DEFAULT_USER_ID = "eleven_user"
INIT_TYPE = "conversation_initiation_client_data"
CLOSED_TYPE = "connection_closed"
TRANSCRIPTION_TYPE = "post_call_transcription"

AGENT_WS = "agent_ws"
MONITOR = "monitor"
RELAY = "relay"
REST = "rest"
WEBHOOK = "webhook"
CAPTURE = "capture"

# Python's str.isspace() set plus the invisible zero-width characters, spelled
# out so that SQL (DuckDB's trim and regexp_replace) can be given exactly the same set.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
    "\u200b\u200c\u200d\u2060\ufeff"
)

#: A sighting's place in the log is ``seq * ENTRY_SLOTS + entry index`` (0 for
#: a live frame); a row's ``id`` is the place of its first sighting. Entries
#: past this index are not projected.
ENTRY_SLOTS = 1_000_000

#: The columns of a row, in table order.
COLUMNS = (
    "id",
    "dedup_key",
    "kind",
    "session_id",
    "user_id",
    "text",
    "timestamp",
    "metadata",
    "sources",
    "seq",
)

_CONVERSATION_TYPES: Mapping[str, str] = {INIT_TYPE: "out", "user_transcript": "in", "user_message": "out"}

#: Per live source, the frame types the rule reads (with the direction it needs).
LIVE_RULE_TYPES: Mapping[str, Mapping[str, str]] = {
    AGENT_WS: _CONVERSATION_TYPES,
    RELAY: _CONVERSATION_TYPES,
    MONITOR: {"user_transcript": "in"},
    CAPTURE: {CLOSED_TYPE: "in"},
}
#: The sources whose lines hold a whole conversation (a GET-conversation body).
BODY_SOURCES = (REST, WEBHOOK)

#: Live sources whose ``user_transcript`` is the platform's transcript of the user's own audio.
SPOKEN_LIVE_SOURCES = (AGENT_WS, RELAY)

_SPACES = re.compile("[" + "".join(re.escape(c) for c in WHITESPACE) + "]+")
_SIGHTINGS_KEY = ',"sightings":'
#: Bounds of a usable REST/webhook turn time (:func:`turn_time`): a call start
#: up to 9999-12-31T23:59:59Z, an offset up to about 31 years, their sum in microseconds.
MAX_START_SECS = 253_402_300_799
MAX_OFFSET_SECS = 1e9
MAX_EPOCH_US = 253_402_300_799_999_999


class Kind(enum.StrEnum):
    """The two kinds of user turn."""

    USER_TRANSCRIPT = "user_transcript"  # spoken (or medium unknown)
    USER_MESSAGE = "user_message"  # typed


class Medium(enum.StrEnum):
    """The media a sighting can know its turn had (REST's ``source_medium``)."""

    AUDIO = "audio"
    TEXT = "text"


class SkipReason(enum.StrEnum):
    """Why a line or sighting that could have given a row does not give a new one."""

    INVALID_LINE = "invalid_line"  # a complete line that is not a valid envelope (counted by the reader)
    DUPLICATE_LINE = "duplicate_line"  # seq at or below the last applied line
    NO_TEXT = "no_text"  # a user turn whose text is missing or not a string
    EMPTY_TEXT = "empty_text"  # a user turn whose text is empty or whitespace
    DUPLICATE_TURN = "duplicate_turn"  # another sighting of a turn already in the table (merged into its row)


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
        id: Place of the first sighting in the log (``seq * ENTRY_SLOTS + entry``).
        dedup_key: The turn's key (see the module docstring); unique.
        kind: A :class:`Kind` value.
        session_id: The conversation id (``None`` if the first sighting had none).
        user_id: Who spoke, see the module docstring.
        text: The first sighting's text exactly as logged (not normalised).
        timestamp: The earliest sighting time (UTC, RFC 3339 with microseconds).
        metadata: JSON text: ``raw_event`` (the first sighting's live frame
            exactly as logged; ``null`` when it was a REST/webhook entry,
            which ``seq`` and ``entry`` locate), ``seq``, ``source``,
            ``event_id``, ``entry``, and ``sightings``: ``[source, seq,
            entry, medium, user_id]`` per sighting, in log order.
        sources: JSON array text of the sources that saw the turn, sorted.
        seq: The seq of the first sighting's line.

    """

    id: int
    dedup_key: str
    kind: str
    session_id: str | None
    user_id: str
    text: str
    timestamp: str
    metadata: str
    sources: str
    seq: int


class TableView(Protocol):
    """What the fold reads from the table: the current rows and aliases for some keys."""

    def aliases(self, keys: Collection[str]) -> Mapping[str, str]:
        """Return ``{spoken key: typed key}`` for those of ``keys`` that are aliases."""
        ...

    def rows(self, keys: Collection[str]) -> Mapping[str, UserTextRow]:
        """Return the rows whose ``dedup_key`` is one of ``keys``."""
        ...


# Connection id -> (conversation id, normalised text) -> typed turns counted so far.
TypedCounts = dict[str | None, dict[tuple[str, str], int]]


@dataclass
class FoldState:
    """What the fold remembers between lines; persist it with the rows.

    Per connection, until its ``connection_closed`` record (so it stays as
    small as the number of open connections).

    Attributes:
        last_seq: The seq of the last applied line (0 before the first).
        user_ids: ``user_id`` of the latest init frame per connection id.
        typed: Typed ``agent_ws`` turns counted per connection, conversation and text.

    """

    last_seq: int = 0
    user_ids: dict[str, str] = field(default_factory=dict)
    typed: TypedCounts = field(default_factory=dict)


@dataclass
class FoldResult:
    """What one :func:`fold` call produced.

    Attributes:
        rows: Every row created, with its final values.
        updated: Every stored row changed, with its new values (same ``id``).
        deleted: Ids of stored rows merged into another row (an alias arrived).
        aliases: New aliases, spoken key -> typed key.
        user_ids: Connection ids whose ``user_id`` changed; ``None``: forgotten.
        typed: Per connection, the typed counts that changed.
        closed: Connections whose state was forgotten (before ``typed`` applies).
        inserted: Rows created (some may be in ``deleted``'s count too).
        merged: Rows merged away.
        skipped: Count per :class:`SkipReason` value.
        gaps: Jumps in seq seen.
        lines: Lines applied (valid and not duplicated).
        last_seq: The state's ``last_seq`` after the call.

    """

    rows: list[UserTextRow] = field(default_factory=list)
    updated: list[UserTextRow] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str | None] = field(default_factory=dict)
    typed: TypedCounts = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    inserted: int = 0
    merged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    gaps: list[Gap] = field(default_factory=list)
    lines: int = 0
    last_seq: int = 0


def normalize(text: str) -> str:
    """Return ``text`` as compared: :data:`WHITESPACE` runs become one space, ends trimmed.

    A text made only of :data:`WHITESPACE` (a blank one) becomes ``""``.
    """
    if text.isascii():
        # Most texts are already normal: printable ASCII has no WHITESPACE but " ".
        if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
            return text
        return " ".join(text.split())  # str.split() splits on exactly the ASCII part of WHITESPACE
    return _SPACES.sub(" ", text.strip(WHITESPACE))


def _digest(*parts: str) -> str:
    """The hash part of a key: sha256 of the parts written as a JSON array, 32 hex digits.

    No choice of values can make two different lists collide, and DuckDB's
    ``to_json`` writes the same bytes (:func:`projections.duckdb_views._digest`).
    """
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]


def spoken_key(conversation_id: str, event_id: str, text: str) -> str:
    """Key of a turn known by its event id (``text`` normalised)."""
    return "spoken:" + _digest(conversation_id, event_id, text)


def typed_key(conversation_id: str, text: str, occurrence: int) -> str:
    """Key of the ``occurrence``-th typed turn with ``text`` (normalised) in a conversation."""
    return "typed:" + _digest(conversation_id, text, str(occurrence))


def entry_key(conversation_id: str, medium: str, text: str, occurrence: int) -> str:
    """Key of a REST/webhook entry without an id or a typed medium."""
    return "entry:" + _digest(conversation_id, medium, text, str(occurrence))


def line_key(seq: int, entry: int | None = None) -> str:
    """Key of a sighting that is its own row."""
    return f"seq:{seq}" if entry is None else f"seq:{seq}:{entry}"


def turn_time(start: Any, offset: Any) -> str | None:
    """Return ``start + offset`` seconds as a timestamp, or ``None`` if either is not a usable number.

    Both are rounded to microseconds on their own (half up), so SQL can do the
    same arithmetic in doubles.
    """
    if type(start) not in (int, float) or type(offset) not in (int, float):
        return None
    if not (0 <= start <= MAX_START_SECS and 0 <= offset <= MAX_OFFSET_SECS):
        return None  # NaN fails too
    micros = math.floor(float(start) * 1e6 + 0.5) + math.floor(float(offset) * 1e6 + 0.5)
    if micros > MAX_EPOCH_US:
        return None
    second, fraction = divmod(micros, 1_000_000)
    return f"{_second(second)}{fraction:06d}Z"


@functools.lru_cache(maxsize=1024)  # a body and its webhook copy share their seconds
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _nonempty(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


_ID_TYPES = (int, str)


def _event_id(value: Any) -> int | str | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, _ID_TYPES) else None


# Plain strings for the hot path (an enum member's .value is a descriptor call).
_AUDIO, _TEXT = Medium.AUDIO.value, Medium.TEXT.value
_MESSAGE, _TRANSCRIPT = Kind.USER_MESSAGE.value, Kind.USER_TRANSCRIPT.value


@functools.lru_cache(maxsize=64)  # a log has a handful of sources
def _source_json(source: str) -> tuple[bytes, str]:
    """Return ``source`` as JSON and the one-source ``sources`` array text."""
    return orjson.dumps(source), orjson.dumps([source]).decode()


class Sighting(NamedTuple):
    """One user turn as one source logged it.

    Attributes:
        row: The row it would be on its own: ``id`` is its place in the log
            (``seq * ENTRY_SLOTS + entry``), ``dedup_key`` its own key, and
            ``metadata`` lists it as the only sighting.
        spoken: ``dedup_key`` is a spoken key, to look up through the aliases.
        alias: For a typed REST/webhook entry with an id: its spoken key.
        record: Its entry in ``metadata``'s sightings: ``[source, seq, entry, medium, user_id]``.

    """

    row: UserTextRow
    spoken: bool
    alias: str | None
    record: list[Any]


_MEDIUM_JSON = {None: b"null", _AUDIO: b'"audio"', _TEXT: b'"text"'}

# A named tuple's own constructor is a Python function; tuple.__new__ (what
# its _make uses) is not, and the fold builds two per user turn.
_new_row: Callable[[tuple[Any, ...]], UserTextRow] = functools.partial(tuple.__new__, UserTextRow)
_new_sighting: Callable[[tuple[UserTextRow, bool, str | None, list[Any]]], Sighting] = functools.partial(
    tuple.__new__, Sighting
)


@functools.lru_cache(maxsize=256)
def _metadata_template(source: str, medium: str | None, live: bool) -> bytes:
    """The metadata of a one-sighting row, but the raw event, seq, event id, entry and user id.

    Spliced by hand so that raw_event keeps the frame's bytes. Live:
    ``% (raw_event, seq, event_id, seq, user_id)``; REST/webhook:
    ``% (seq, event_id, entry, seq, entry, user_id)``.
    """
    name = _source_json(source)[0].replace(b"%", b"%%")
    raw, entry = (b"%b", b"null") if live else (b"null", b"%d")
    return (
        b'{"raw_event":' + raw + b',"seq":%d,"source":' + name + b',"event_id":%b,"entry":' + entry
        + b',"sightings":[[' + name + b",%d," + entry + b"," + _MEDIUM_JSON[medium] + b",%b]]}"
    )  # fmt: skip


def _place(record: list[Any]) -> tuple[int, int]:
    return record[1], record[2] or 0


class _Row:
    """A row holding several sightings: the first one's fields, the earliest time, every sighting."""

    __slots__ = ("head", "id", "key", "records", "seq", "session_id", "text", "timestamp")

    def __init__(self, row: UserTextRow | Sighting) -> None:
        records: list[list[Any]] | None = None
        if isinstance(row, Sighting):
            records, row = [row.record], row.row
        cut = row.metadata.rindex(_SIGHTINGS_KEY) + len(_SIGHTINGS_KEY)
        # A stored row's sightings are read back from its metadata.
        self.records = records if records is not None else orjson.loads(row.metadata[cut:-1])
        self.head = row.metadata[:cut]
        self.id = row.id
        self.key = row.dedup_key
        self.session_id = row.session_id
        self.text = row.text
        self.timestamp = row.timestamp
        self.seq = row.seq

    def add(self, later: _Row | Sighting) -> None:
        """Take in the sightings of a row whose first sighting comes after this row's."""
        if isinstance(later, Sighting):
            records, timestamp = [later.record], later.row.timestamp
        else:
            records, timestamp = later.records, later.timestamp
        if records[0][1] > self.records[-1][1]:
            self.records.extend(records)  # the usual case: a new line's sighting
        else:
            self.records = sorted(self.records + records, key=_place)
        self.timestamp = min(self.timestamp, timestamp)

    def value(self) -> UserTextRow:
        records = self.records
        medium = next((r[3] for r in records if r[3] is not None), None)
        return UserTextRow(
            self.id,
            self.key,
            _MESSAGE if medium == _TEXT else _TRANSCRIPT,
            self.session_id,
            next((r[4] for r in records if r[4] is not None), DEFAULT_USER_ID),
            self.text,
            self.timestamp,
            self.head + orjson.dumps(records).decode() + "}",
            orjson.dumps(sorted({r[0] for r in records})).decode(),
            self.seq,
        )


def reads(envelope: Mapping[str, Any]) -> bool:
    """Whether the rule reads a line, from its parsed envelope (what the fold checks first).

    A live source's line is read for the frame types of :data:`LIVE_RULE_TYPES`
    in their direction; a REST line always; a webhook line when it holds a
    ``post_call_transcription`` or a frame under ``raw`` (its type is inside).
    """
    source = envelope.get("source")
    if type(source) is not str:
        return False
    event = envelope.get("event")
    if source in BODY_SOURCES:
        if type(event) is dict:
            return source == REST or event.get("type") == TRANSCRIPTION_TYPE
        return type(envelope.get("raw")) is str
    kinds = LIVE_RULE_TYPES.get(source)
    if kinds is None or type(event) is not dict:
        return False
    kind = event.get("type")
    direction = kinds.get(kind) if type(kind) is str else None
    return direction is not None and direction == envelope.get("direction")


class _Extractor:
    """Phase one of a fold: lines to sightings, advancing the per-connection state."""

    __slots__ = ("result", "sightings", "state")

    def __init__(self, state: FoldState, result: FoldResult) -> None:
        self.state = state
        self.result = result
        self.sightings: list[Sighting] = []

    def text_of(self, value: Any) -> str | None:
        """The text of a candidate turn, or ``None`` after counting why it has none."""
        if not isinstance(value, str):
            self.result.skipped[SkipReason.NO_TEXT] += 1
            return None
        if not value.strip(WHITESPACE):
            self.result.skipped[SkipReason.EMPTY_TEXT] += 1
            return None
        return value

    def close(self, connection_id: Any) -> None:
        if not isinstance(connection_id, str):
            return
        state, result = self.state, self.result
        if state.user_ids.pop(connection_id, None) is not None:
            result.user_ids[connection_id] = None
        if state.typed.pop(connection_id, None) is not None:
            result.typed.pop(connection_id, None)
            result.closed.add(connection_id)

    def init(self, envelope: dict[str, Any], event: dict[str, Any]) -> None:
        connection_id = _string(envelope.get("connection_id"))
        user_id = _nonempty(event.get("user_id"))
        if connection_id is not None and user_id is not None:
            self.state.user_ids[connection_id] = user_id
            self.result.user_ids[connection_id] = user_id

    def turn(self, line: LogLine, event: dict[str, Any], source: str, typed: bool) -> None:
        """A live turn's sighting (a ``user_message`` sent if ``typed``, else a ``user_transcript``), as a row."""
        # The hot path of a rebuild: helpers are inlined (orjson makes exact types).
        event_id: Any = None
        if typed:
            text = event.get("text")
        else:
            inner = event.get("user_transcription_event")
            if type(inner) is not dict:
                self.result.skipped[SkipReason.NO_TEXT] += 1
                return
            text = inner.get("user_transcript")
            event_id = inner.get("event_id")
            if type(event_id) is not int and type(event_id) is not str:
                event_id = None
        if type(text) is not str:
            self.result.skipped[SkipReason.NO_TEXT] += 1
            return
        normal = normalize(text)
        if not normal:
            self.result.skipped[SkipReason.EMPTY_TEXT] += 1
            return
        envelope = line.envelope
        seq = line.seq
        conversation_id = envelope.get("conversation_id")
        connection_id = envelope.get("connection_id")
        if type(connection_id) is not str:
            connection_id = None
        if type(conversation_id) is not str:
            conversation_id = None
            key = line_key(seq)
        elif typed:
            # A typed turn in a conversation: its key counts the connection's typed turns.
            scope = (conversation_id, normal)
            counts = self.state.typed.setdefault(connection_id, {})
            counts[scope] = occurrence = counts.get(scope, 0) + 1
            self.result.typed.setdefault(connection_id, {})[scope] = occurrence
            key = typed_key(conversation_id, normal, occurrence)
        else:
            key = line_key(seq) if event_id is None else spoken_key(conversation_id, str(event_id), normal)
        user_id = event.get("user_id")
        if type(user_id) is not str or not user_id:
            user_id = None
        if connection_id is not None:
            user_id = self.state.user_ids.get(connection_id, user_id)  # the init frame's, else the turn's own
        medium = _TEXT if typed else _AUDIO if source in SPOKEN_LIVE_SOURCES else None
        row = _new_row(
            (
                seq * ENTRY_SLOTS,
                key,
                _MESSAGE if typed else _TRANSCRIPT,
                conversation_id,
                user_id or DEFAULT_USER_ID,
                text,
                str(envelope.get("received_at")),
                (
                    _metadata_template(source, medium, True)
                    % (line.frame, seq, orjson.dumps(event_id), seq, orjson.dumps(user_id))
                ).decode("utf-8"),
                _source_json(source)[1],
                seq,
            )
        )
        spoken = not typed and conversation_id is not None and event_id is not None
        self.sightings.append(_new_sighting((row, spoken, None, [source, seq, None, medium, user_id])))

    def body(self, line: LogLine, body: dict[str, Any], source: str) -> None:
        """The user entries of a GET-conversation body (REST, or a webhook's ``data``)."""
        transcript = body.get("transcript")
        if not isinstance(transcript, list):
            return
        seq = line.seq
        conversation_id = _string(body.get("conversation_id"))
        if conversation_id is None:
            conversation_id = line.conversation_id
        metadata = body.get("metadata")
        start = metadata.get("start_time_unix_secs") if isinstance(metadata, dict) else None
        init = body.get("conversation_initiation_client_data")
        user_id = _nonempty(body.get("user_id")) or (
            _nonempty(init.get("user_id")) if isinstance(init, dict) else None
        )
        sources = _source_json(source)[1]
        received_at = str(line.envelope.get("received_at"))
        typed: Counter[str] = Counter()  # per normalised text
        other: Counter[tuple[str, str]] = Counter()  # per (medium, normalised text)
        for index, entry in enumerate(transcript[:ENTRY_SLOTS]):
            if not isinstance(entry, dict) or entry.get("role") != "user":
                continue
            text = self.text_of(entry.get("message"))
            if text is None:
                continue
            raw_medium = _string(entry.get("source_medium"))
            medium = raw_medium if raw_medium in (_AUDIO, _TEXT) else None
            event_id = _event_id(entry.get("source_event_id"))
            spoken, alias = False, None
            if conversation_id is None:
                key = line_key(seq, index)
            else:
                normal = normalize(text)
                if medium == _TEXT:
                    typed[normal] += 1
                    key = typed_key(conversation_id, normal, typed[normal])
                    if event_id is not None:
                        alias = spoken_key(conversation_id, str(event_id), normal)
                elif event_id is not None:
                    key, spoken = spoken_key(conversation_id, str(event_id), normal), True
                else:
                    scope = (raw_medium or "", normal)
                    other[scope] += 1
                    key = entry_key(conversation_id, scope[0], normal, other[scope])
            row = _new_row(
                (
                    seq * ENTRY_SLOTS + index,
                    key,
                    _MESSAGE if medium == _TEXT else _TRANSCRIPT,
                    conversation_id,
                    user_id or DEFAULT_USER_ID,
                    text,
                    turn_time(start, entry.get("time_in_call_secs")) or received_at,
                    (
                        _metadata_template(source, medium, False)
                        % (seq, orjson.dumps(event_id), index, seq, index, orjson.dumps(user_id))
                    ).decode("utf-8"),
                    sources,
                    seq,
                )
            )
            self.sightings.append(_new_sighting((row, spoken, alias, [source, seq, index, medium, user_id])))

    def line(self, line: LogLine) -> None:
        envelope = line.envelope
        source = envelope.get("source")
        if type(source) is not str:
            return
        wanted = LIVE_RULE_TYPES.get(source)
        if wanted is not None:
            event = line.event
            if event is None:
                return
            kind = event.get("type")
            if type(kind) is not str or (direction := wanted.get(kind)) is None:
                return
            if direction != envelope.get("direction"):
                return
            if kind == _TRANSCRIPT or kind == _MESSAGE:
                self.turn(line, event, source, kind == _MESSAGE)
            elif kind == INIT_TYPE:
                self.init(envelope, event)
            elif kind == CLOSED_TYPE:
                self.close(envelope.get("connection_id"))
        elif source in BODY_SOURCES:
            body = line.event
            if body is None and isinstance(envelope.get("raw"), str):
                body = _parsed_frame(line.frame)  # not on one line, e.g. pretty-printed
            if body is None:
                return
            if source == WEBHOOK:
                if body.get("type") != TRANSCRIPTION_TYPE:
                    return
                data = body.get("data")
                if isinstance(data, dict):
                    self.body(line, data, source)
            else:
                self.body(line, body, source)


def _parsed_frame(frame: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _merge(sightings: list[Sighting], table: TableView, result: FoldResult) -> None:
    """Phase two of a fold: each sighting into its row, in log order."""
    spoken: set[str] = set()
    wanted: set[str] = set()  # the keys whose stored rows the batch may touch
    for row, is_spoken, alias, _ in sightings:
        key = row.dedup_key
        if is_spoken:
            spoken.add(key)
        elif alias is not None:
            spoken.add(alias)
            wanted.add(alias)
        if not key.startswith("seq:"):  # a line key's line is applied once
            wanted.add(key)
    aliases = dict(table.aliases(spoken)) if spoken else {}
    wanted.update(aliases.values())
    stored = table.rows(wanted) if wanted else {}
    # Per key the batch touched: the row so far (first seen, or merged with
    # others or a stored row), or None once moved to another key.
    rows: dict[str, Sighting | UserTextRow | _Row | None] = {}
    deleted: set[int] = set()
    inserted = duplicates = 0

    def merged_at(key: str) -> _Row | None:
        row = rows[key] if key in rows else stored.get(key)
        if row is not None and not isinstance(row, _Row):
            row = _Row(row)
        rows[key] = row
        return row

    for sighting in sightings:
        row, is_spoken, alias, _ = sighting
        key = row.dedup_key
        if alias is not None and alias not in aliases:
            aliases[alias] = result.aliases[alias] = key
            orphan = merged_at(alias)
            if orphan is not None:
                # Sightings of this turn made before its alias was known: move them in.
                rows[alias] = None
                target = merged_at(key)
                if target is not None:
                    keep, drop = (target, orphan) if target.id < orphan.id else (orphan, target)
                    keep.add(drop)
                    deleted.add(drop.id)
                    result.merged += 1
                    orphan = keep
                orphan.key = key
                rows[key] = orphan
        if is_spoken:
            key = aliases.get(key, key)
        current = rows.get(key)
        if current is None and key not in rows:
            current = stored.get(key)
        if current is None:
            if key != row.dedup_key:
                sighting = sighting._replace(row=row._replace(dedup_key=key))
            rows[key] = sighting
            inserted += 1
            continue
        if not isinstance(current, _Row):
            current = rows[key] = _Row(current)
        current.add(sighting)
        duplicates += 1
    result.inserted += inserted
    if duplicates:
        result.skipped[SkipReason.DUPLICATE_TURN] += duplicates
    # A row's id is its first sighting's place: those of earlier batches are smaller.
    first_new = sightings[0].row.id
    for merged in rows.values():
        if isinstance(merged, Sighting):
            result.rows.append(merged.row)
        elif isinstance(merged, _Row):
            (result.rows if merged.id >= first_new else result.updated).append(merged.value())
    result.deleted.extend(sorted(deleted))


def fold(state: FoldState, lines: Iterable[LogLine | range], table: TableView) -> FoldResult:
    """Apply ``lines`` (in log order) to ``state`` and return the rows they create or change.

    Consecutive lines whose frame the caller knows the rule does not read (see
    :func:`reads`) may be given as the ``range`` of their seqs: they give no
    row but move the position and show gaps. ``state`` is advanced in place
    (reload it if the result is not stored). ``table`` must hold what every
    earlier batch produced. Folding a log in one call or in
    any number of batches gives the same table.
    """
    result = FoldResult(last_seq=state.last_seq)
    extractor = _Extractor(state, result)
    read = extractor.line
    last_seq = state.last_seq
    applied = 0
    for line in lines:
        if type(line) is range:
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
        read(line)
    state.last_seq = result.last_seq = last_seq
    result.lines = applied
    if extractor.sightings:
        _merge(extractor.sightings, table, result)
    return result
