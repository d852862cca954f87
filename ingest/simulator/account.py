"""The simulator's account: a deterministic history of conversations for the REST API and monitor.

Pure data and bookkeeping, no I/O: :class:`Account` holds synthetic
conversations built from an :class:`AccountSpec` (same seed, same ids, same
transcripts, same bytes), answers the Conversations API's list and get
operations as response bodies (``bytes``, as a server sends them), and moves
conversations along their lifecycle:

* ``done`` and ``failed`` conversations never change;
* ``processing`` ones become ``done`` after :attr:`AccountSpec.done_after_polls`
  GETs or :attr:`AccountSpec.done_after_seconds`, whichever comes first;
* ``in-progress`` ones are live: the simulator's monitor socket plays their
  transcript (:meth:`Account.start_live` … :meth:`Account.finish_live`), after
  which they are ``processing``.

Bodies look like the real API's (``docs/elevenlabs-protocol.md`` §6b): compact
JSON in UTF-8 with non-ASCII text written literally, except every
:attr:`AccountSpec.escaped_every`-th conversation, serialised with ``\\uXXXX``
escapes, so a client that re-serialises instead of keeping bytes is caught.
User turns carry ``source_medium`` (``audio`` or ``text``) and
``source_event_id``.

"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


__all__ = [
    "FINISHED",
    "MAX_PAGE_SIZE",
    "Account",
    "AccountSpec",
    "BadQuery",
    "SimConversation",
    "Status",
]

Status = Literal["initiated", "in-progress", "processing", "done", "failed"]

#: Statuses after which a conversation never changes.
FINISHED: frozenset[str] = frozenset({"done", "failed"})

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 30

# Non-ASCII on purpose: accents, CJK, an emoji (a surrogate pair when escaped),
# quotes and a backslash that must survive byte for byte.
_USER_LINES = (
    "Olá, preciso de ajuda com a minha fatura.",
    "Can you check my last invoice?",
    "Grüße aus München — wo ist meine Bestellung?",
    "注文の状況を教えてください。",
    "My order number is 12345 😀",
    "¿Puedo cambiar la dirección de entrega?",
    'She said "hi" and typed C:\\temp by mistake.',
    "Thanks, that's all for today.",
    "Я хочу отменить подписку.",
    "I'd like to talk to a human, please.",
)
_AGENT_LINES = (
    "Of course! Let me look that up for you.",
    "I found your account. Anything else?",
    "Claro, um momento por favor.",
    "Your order ships tomorrow.",
    "I'm transferring you now.",
)
_FIRST_MESSAGE = "Hello! How can I help you today?"
_SOURCES = ("whatsapp", "widget", "phone", "sip_trunk")
_FAILURE_REASONS = ("Error: LLM timeout", "Client disconnected before the first message")


@dataclass(frozen=True)
class AccountSpec:
    """The synthetic history the simulator's REST API serves.

    Conversation ``i`` (0 is the oldest) starts at ``start_unix + i *
    spacing_secs``. From the newest down: the first ``in_progress`` are
    ``in-progress``, the next ``processing`` are ``processing``; of the rest,
    every ``failed_every``-th is ``failed`` and the others are ``done``.

    Attributes:
        conversations: How many conversations of ``agent_id``.
        seed: Same seed, same ids, transcripts and bytes.
        agent_id: Their agent.
        other_agent_conversations: Extra ``done`` conversations of
            ``other_agent_id``, interleaved, so the ``agent_id`` filter matters.
        other_agent_id: Their agent.
        failed_every: Every n-th finished conversation is ``failed``; 0 for none.
        processing: How many start as ``processing``.
        in_progress: How many start as ``in-progress`` (for the monitor).
        done_after_polls: A ``processing`` conversation answers ``processing``
            to this many GETs, then ``done``; ``None``: polls don't count.
        done_after_seconds: ... or becomes ``done`` this long after it started
            processing; ``None``: time doesn't count.
        start_unix: Start time of conversation 0; ``None``: chosen so that the
            newest started ``spacing_secs`` ago.
        spacing_secs: Seconds between conversation starts.
        user_turns: (min, max) user turns per conversation.
        escaped_every: Every n-th body is written with ``\\u`` escapes; 0 for none.
        pretty_every: Every n-th body is pretty-printed over several lines; 0 for none.
        live_turn_gap: Seconds between the turns the monitor socket plays.

    """

    conversations: int = 50
    seed: int = 0
    agent_id: str = "agent_demo"
    other_agent_conversations: int = 0
    other_agent_id: str = "agent_other"
    failed_every: int = 7
    processing: int = 3
    in_progress: int = 0
    done_after_polls: int | None = 2
    done_after_seconds: float | None = None
    start_unix: int | None = None
    spacing_secs: int = 600
    user_turns: tuple[int, int] = (2, 5)
    escaped_every: int = 5
    pretty_every: int = 0
    live_turn_gap: float = 0.05

    def __post_init__(self) -> None:
        counts = (
            self.conversations,
            self.other_agent_conversations,
            self.failed_every,
            self.processing,
            self.in_progress,
            self.escaped_every,
            self.pretty_every,
        )
        if min(counts) < 0 or self.spacing_secs < 1 or self.live_turn_gap < 0:
            raise ValueError("AccountSpec counts and timings must not be negative")
        if self.processing + self.in_progress > self.conversations:
            raise ValueError("processing + in_progress exceeds conversations")
        low, high = self.user_turns
        if low < 1 or high < low:
            raise ValueError("AccountSpec.user_turns must be (min, max) with 1 <= min <= max")


@dataclass
class SimConversation:
    """One synthetic conversation and where it is in its life.

    Attributes:
        conversation_id: Its id (``conv_`` + 24 hex digits).
        agent_id: Its agent.
        start_unix: When the call started.
        status: Its current status.
        transcript: The whole transcript (the GET body shows the part played
            so far while it is live).
        played: How many transcript entries the monitor has played.
        polls: GETs answered while ``processing``.
        processing_since: ``clock()`` when it became ``processing``.
        gets: GETs answered, any status.
        encoding: How its bodies are serialised.

    """

    conversation_id: str
    agent_id: str
    start_unix: int
    status: Status
    transcript: list[dict[str, Any]]
    user_id: str
    source: str
    failure_reason: str | None
    summary: str
    encoding: Literal["compact", "escaped", "pretty"]
    played: int = 0
    polls: int = 0
    processing_since: float | None = None
    gets: int = 0
    live_started: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_secs(self) -> int:
        """Length of the call: the time of its last transcript entry, plus a little."""
        return int(self.transcript[-1]["time_in_call_secs"]) + 3 if self.transcript else 0

    def user_entries(self) -> list[dict[str, Any]]:
        """The transcript's user turns."""
        return [entry for entry in self.transcript if entry["role"] == "user"]


class BadQuery(ValueError):
    """A list query the real API would refuse with 422 (a bad cursor or page size)."""


def _conversation_id(seed: int, key: str) -> str:
    return "conv_" + hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:24]


def _transcript(rng: random.Random, turns: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    at = 0
    event_id = 1
    entries.append(_entry("agent", _FIRST_MESSAGE, at, "audio", event_id))
    for _ in range(turns):
        event_id += 1
        at += rng.randint(2, 9)
        medium = rng.choice(("audio", "text"))
        entries.append(_entry("user", rng.choice(_USER_LINES), at, medium, event_id))
        at += rng.randint(1, 4)
        entries.append(_entry("agent", rng.choice(_AGENT_LINES), at, "audio", event_id))
    return entries


def _entry(role: str, message: str, at: int, medium: str, event_id: int) -> dict[str, Any]:
    return {
        "role": role,
        "agent_metadata": {"agent_id": None, "workflow_node_id": None} if role == "agent" else None,
        "message": message,
        "multivoice_message": None,
        "tool_calls": [],
        "tool_results": [],
        "feedback": None,
        "llm_override": None,
        "time_in_call_secs": at,
        "conversation_turn_metrics": {"metrics": {"convai_llm_service_ttfb": {"elapsed_time": 0.31}}}
        if role == "agent"
        else None,
        "rag_retrieval_info": None,
        "llm_usage": None,
        "interrupted": False,
        "original_message": None,
        "source_medium": medium,
        "source_event_id": event_id,
    }


def _encode(body: Any, encoding: str) -> bytes:
    if encoding == "escaped":
        return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if encoding == "pretty":
        return json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8")
    # Starlette's JSONResponse: compact, UTF-8, non-ASCII written literally.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _cursor(conversation: SimConversation) -> str:
    text = f"{conversation.start_unix}:{conversation.conversation_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        start, _, conversation_id = base64.urlsafe_b64decode(padded).decode().partition(":")
        return int(start), conversation_id
    except (ValueError, UnicodeDecodeError):
        raise BadQuery(f"invalid cursor {cursor!r}") from None


def _sort_key(conversation: SimConversation) -> tuple[int, str]:
    return conversation.start_unix, conversation.conversation_id


class Account:
    """The conversations of a simulated account, and the list and get operations over them.

    Not thread-safe: the simulator calls it on its event loop. ``clock`` is
    :func:`time.monotonic` unless a test gives another.

    """

    def __init__(self, spec: AccountSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._by_id: dict[str, SimConversation] = {}
        self._added = 0
        total = spec.conversations + spec.other_agent_conversations
        start = spec.start_unix
        if start is None:
            start = int(time.time()) - total * spec.spacing_secs
        self._next_start = start + total * spec.spacing_secs
        others = _spread(spec.other_agent_conversations, total)
        index = 0
        for slot in range(total):
            if slot in others:
                self._make(
                    f"other:{slot}", spec.other_agent_id, start + slot * spec.spacing_secs, "done", slot
                )
                continue
            from_newest = spec.conversations - 1 - index
            status: Status
            if from_newest < spec.in_progress:
                status = "in-progress"
            elif from_newest < spec.in_progress + spec.processing:
                status = "processing"
            elif spec.failed_every and index % spec.failed_every == spec.failed_every - 1:
                status = "failed"
            else:
                status = "done"
            self._make(str(index), spec.agent_id, start + slot * spec.spacing_secs, status, slot)
            index += 1

    def _make(self, key: str, agent_id: str, start_unix: int, status: Status, slot: int) -> SimConversation:
        spec = self.spec
        rng = random.Random(f"{spec.seed}:{key}")
        turns = rng.randint(*spec.user_turns)
        transcript = _transcript(rng, turns)
        encoding: Literal["compact", "escaped", "pretty"] = "compact"
        if spec.pretty_every and slot % spec.pretty_every == spec.pretty_every - 1:
            encoding = "pretty"
        elif spec.escaped_every and slot % spec.escaped_every == spec.escaped_every - 1:
            encoding = "escaped"
        conversation = SimConversation(
            conversation_id=_conversation_id(spec.seed, key),
            agent_id=agent_id,
            start_unix=start_unix,
            status=status,
            transcript=transcript,
            user_id=f"user-{rng.randint(1000, 9999)}",
            source=rng.choice(_SOURCES),
            failure_reason=rng.choice(_FAILURE_REASONS) if status == "failed" else None,
            summary=f"The user asked about {rng.choice(('an invoice', 'an order', 'a refund'))}.",
            encoding=encoding,
        )
        if status == "processing":
            conversation.processing_since = self._clock()
        self._by_id[conversation.conversation_id] = conversation
        return conversation

    # -- inspection ------------------------------------------------------------------

    @property
    def conversations(self) -> list[SimConversation]:
        """Every conversation, newest first (the list order)."""
        return sorted(self._by_id.values(), key=_sort_key, reverse=True)

    def __getitem__(self, conversation_id: str) -> SimConversation:
        return self._by_id[conversation_id]

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self._by_id

    def of_agent(self, agent_id: str, *statuses: str) -> list[SimConversation]:
        """The conversations of ``agent_id`` (with one of ``statuses``, if given), newest first."""
        return [
            c
            for c in self.conversations
            if c.agent_id == agent_id and (not statuses or self._status(c) in statuses)
        ]

    def body(self, conversation_id: str) -> bytes:
        """The GET body of a conversation as it stands, without counting a poll."""
        conversation = self._by_id[conversation_id]
        return _encode(self._body(conversation, self._status(conversation)), conversation.encoding)

    # -- the API ---------------------------------------------------------------------

    def list_page(
        self,
        *,
        agent_id: str | None = None,
        cursor: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        after_unix: int | None = None,
        before_unix: int | None = None,
    ) -> bytes:
        """Answer ``GET /v1/convai/conversations``: newest first, keyset pagination.

        ``after_unix`` is inclusive and ``before_unix`` exclusive. A cursor
        names the last conversation of the previous page, so conversations
        added meanwhile never shift a page.

        Raises:
            BadQuery: an invalid cursor or a page size outside 1..100.

        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise BadQuery(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        position = _decode_cursor(cursor) if cursor else None
        matching = [
            c
            for c in self.conversations
            if (agent_id is None or c.agent_id == agent_id)
            and (after_unix is None or c.start_unix >= after_unix)
            and (before_unix is None or c.start_unix < before_unix)
            and (position is None or _sort_key(c) < position)
        ]
        page = matching[:page_size]
        has_more = len(matching) > page_size
        body = {
            "conversations": [self._summary(c) for c in page],
            "next_cursor": _cursor(page[-1]) if has_more else None,
            "has_more": has_more,
        }
        return _encode(body, "compact")

    def get(self, conversation_id: str) -> bytes | None:
        """Answer ``GET /v1/convai/conversations/{id}``, counting a poll; ``None`` if unknown."""
        conversation = self._by_id.get(conversation_id)
        if conversation is None:
            return None
        conversation.gets += 1
        status = self._status(conversation)
        if status == "processing":
            conversation.polls += 1
            if self.spec.done_after_polls is not None and conversation.polls > self.spec.done_after_polls:
                conversation.status = status = "done"
        return _encode(self._body(conversation, status), conversation.encoding)

    # -- lifecycle -------------------------------------------------------------------

    def add(self, *, status: Status = "done", agent_id: str | None = None) -> SimConversation:
        """Add a conversation that started just now (newer than every other)."""
        self._added += 1
        start = max(self._next_start, int(time.time()))
        self._next_start = start + 1
        return self._make(f"added:{self._added}", agent_id or self.spec.agent_id, start, status, self._added)

    def is_live(self, conversation_id: str) -> bool:
        """Whether the conversation is active (a monitor may attach)."""
        conversation = self._by_id.get(conversation_id)
        return conversation is not None and self._status(conversation) in ("initiated", "in-progress")

    def start_live(self, conversation_id: str) -> list[dict[str, Any]]:
        """Mark the live conversation as being played; return the entries to play.

        Returns an empty list when it is already being played.

        """
        conversation = self._by_id[conversation_id]
        if conversation.live_started:
            return []
        conversation.live_started = True
        return list(conversation.transcript)

    def played(self, conversation_id: str) -> None:
        """Count one more transcript entry as played (it shows in the GET body from now on)."""
        self._by_id[conversation_id].played += 1

    def finish_live(self, conversation_id: str) -> None:
        """End a live conversation: it is ``processing`` from now on."""
        conversation = self._by_id[conversation_id]
        conversation.played = len(conversation.transcript)
        conversation.status = "processing"
        conversation.processing_since = self._clock()

    def _status(self, conversation: SimConversation) -> Status:
        after = self.spec.done_after_seconds
        if (
            conversation.status == "processing"
            and after is not None
            and conversation.processing_since is not None
            and self._clock() - conversation.processing_since >= after
        ):
            conversation.status = "done"
        return conversation.status

    # -- bodies ----------------------------------------------------------------------

    def _summary(self, c: SimConversation) -> dict[str, Any]:
        status = self._status(c)
        finished = status in FINISHED
        return {
            "agent_id": c.agent_id,
            "agent_name": "Support" if c.agent_id == self.spec.agent_id else "Other",
            "conversation_id": c.conversation_id,
            "start_time_unix_secs": c.start_unix,
            "call_duration_secs": c.duration_secs if finished or status == "processing" else 0,
            "message_count": len(c.transcript) if finished else c.played,
            "status": status,
            "call_successful": ("failure" if status == "failed" else "success") if finished else "unknown",
            "transcript_summary": None,
            "call_summary_title": None,
            "direction": "inbound",
            "termination_reason": c.failure_reason,
            "conversation_initiation_source": c.source,
            "tag_ids": [],
        }

    def _body(self, c: SimConversation, status: Status) -> dict[str, Any]:
        live = status in ("initiated", "in-progress")
        transcript = c.transcript[: c.played] if live else c.transcript
        if status == "failed":
            transcript = transcript[:1]
        analysis: dict[str, Any] | None = None
        if status in FINISHED:
            analysis = {
                "evaluation_criteria_results": {},
                "data_collection_results": {},
                "call_successful": "failure" if status == "failed" else "success",
                "transcript_summary": c.summary,
                "call_summary_title": "Support request",
            }
        return {
            "agent_id": c.agent_id,
            "conversation_id": c.conversation_id,
            "status": status,
            "user_id": c.user_id,
            "branch_id": None,
            "transcript": transcript,
            "metadata": {
                "start_time_unix_secs": c.start_unix,
                "accepted_time_unix_secs": c.start_unix,
                "call_duration_secs": 0 if live else c.duration_secs,
                "cost": 0 if live else 40 * len(c.transcript),
                "termination_reason": c.failure_reason or ("" if live else "end_call tool was called."),
                "error": {"code": 1011, "reason": c.failure_reason} if status == "failed" else None,
                "main_language": "en",
                "conversation_initiation_source": c.source,
                "timezone": "Europe/Lisbon",
                "phone_call": None,
                "features_usage": {"is_livekit": False},
            },
            "analysis": analysis,
            "conversation_initiation_client_data": {
                "conversation_config_override": {"conversation": {"text_only": False}},
                "custom_llm_extra_body": {},
                "user_id": c.user_id,
                "source_info": {"source": c.source, "version": None},
                "dynamic_variables": {"system__conversation_id": c.conversation_id, "user_name": "Zoë"},
            },
            "has_audio": not live,
            "has_user_audio": not live,
            "has_response_audio": not live,
            **c.extra,
        }


def _spread(count: int, total: int) -> set[int]:
    """Pick ``count`` slots of ``total`` spread evenly (deterministic)."""
    if count <= 0:
        return set()
    step = total / count
    return {int(i * step + step / 2) for i in range(count)}
