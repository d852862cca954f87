"""The simulated account: a deterministic history of conversations for the REST API and the monitor.

Pure data and bookkeeping, no I/O: :class:`Account` holds synthetic
conversations (:mod:`ingest.simulator.conversation`) built from an
:class:`AccountSpec` (same seed, same ids, same transcripts, same bytes),
answers the Conversations API's list and get operations as response bodies
(``bytes``, as a server sends them), and moves conversations along their
lifecycle:

* ``done`` and ``failed`` conversations never change;
* ``processing`` ones become ``done`` after :attr:`AccountSpec.done_after_polls`
  GETs or :attr:`AccountSpec.done_after_seconds`, whichever comes first;
* ``in-progress`` ones are live: the simulator's monitor socket plays their
  transcript (:meth:`Account.start_live` … :meth:`Account.finish_live`), after
  which they are ``processing``.

Bodies are compact JSON in UTF-8 with non-ASCII text written literally, except
every :attr:`AccountSpec.escaped_every`-th conversation, serialised with
``\\uXXXX`` escapes (and every :attr:`AccountSpec.pretty_every`-th
pretty-printed), so a client that re-serialises instead of keeping bytes is
caught. The default account is web and SDK conversations whose user entries
carry ``source_medium`` (``audio`` or ``text``) and ``source_event_id``; the
other :class:`AccountSpec` options add channels and entry variants.

"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingest.simulator.conversation import (
    CHANNELS,
    FINISHED,
    Channel,
    Encoding,
    SimConversation,
    Status,
    conversation_body,
    conversation_id_for,
    conversation_summary,
    encode_body,
    synthesize,
)
from ingest.simulator.otel import otlp_traces


__all__ = [
    "FINISHED",
    "MAX_PAGE_SIZE",
    "Account",
    "AccountSpec",
    "BadQuery",
    "SimConversation",
    "Status",
]

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 30


@dataclass(frozen=True)
class AccountSpec:
    """The synthetic history the simulator's REST API serves.

    Conversation ``i`` (0 is the oldest) starts at ``start_unix + i *
    spacing_secs``. From the newest down: the first ``in_progress`` are
    ``in-progress``, the next ``processing`` are ``processing``; of the rest,
    every ``failed_every``-th is ``failed`` and the others are ``done``.
    "Every n-th" counts the conversations of ``agent_id``, oldest first: the
    n-th, 2n-th, … (0 turns the option off).

    Attributes:
        conversations: How many conversations of ``agent_id``.
        seed: Same seed, same ids, transcripts and bytes.
        agent_id: Their agent.
        other_agent_conversations: Extra ``done`` conversations of
            ``other_agent_id``, interleaved, so the ``agent_id`` filter matters.
        other_agent_id: Their agent.
        failed_every: Every n-th finished conversation is ``failed``.
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
        escaped_every: Every n-th body is written with ``\\u`` escapes.
        pretty_every: Every n-th body is pretty-printed over several lines.
        live_turn_gap: Seconds between the turns the monitor socket plays.
        live_history: Transcript entries a live conversation has already
            played when its first monitor attaches (the monitor replays them as
            history before ``history_complete``).
        channels: Conversation ``i`` of ``agent_id`` happens on ``channels[i %
            len(channels)]`` (WhatsApp, phone, SMS, …: see
            :data:`~ingest.simulator.conversation.CHANNELS`); empty: web and
            SDK conversations.
        multi_party_every: Every n-th conversation's user entries carry a
            ``user_identifier``, alternating between two participants.
        media_every: Every n-th conversation ends with ``dtmf`` and ``image``
            entries and interrupted entries with ``original_message``.
        minimal_every: Every n-th conversation's entries carry only the keys
            of the docs' webhook example (no ``source_medium``, no
            ``source_event_id``).
        failed_with_turns: Failed conversations keep their user turns (else
            their body holds only the agent's first message).
        analysis_results: Analyses carry evaluation-criteria and
            data-collection results, and languages and termination reasons vary.

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
    live_history: int = 0
    channels: tuple[Channel, ...] = ()
    multi_party_every: int = 0
    media_every: int = 0
    minimal_every: int = 0
    failed_with_turns: bool = False
    analysis_results: bool = False

    def __post_init__(self) -> None:
        counts = (
            self.conversations,
            self.other_agent_conversations,
            self.failed_every,
            self.processing,
            self.in_progress,
            self.escaped_every,
            self.pretty_every,
            self.live_history,
            self.multi_party_every,
            self.media_every,
            self.minimal_every,
        )
        if min(counts) < 0 or self.spacing_secs < 1 or self.live_turn_gap < 0:
            raise ValueError("AccountSpec counts and timings must not be negative")
        if self.processing + self.in_progress > self.conversations:
            raise ValueError("processing + in_progress exceeds conversations")
        low, high = self.user_turns
        if low < 1 or high < low:
            raise ValueError("AccountSpec.user_turns must be (min, max) with 1 <= min <= max")
        unknown = [channel for channel in self.channels if channel not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown channel {unknown[0]!r}; valid: {', '.join(CHANNELS)}")


class BadQuery(ValueError):
    """A list query the real API would refuse with 422 (a bad cursor or page size)."""


def _every(n: int, index: int) -> bool:
    return n > 0 and index % n == n - 1


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
                    f"other:{slot}", spec.other_agent_id, start + slot * spec.spacing_secs, "done", slot, None
                )
                continue
            from_newest = spec.conversations - 1 - index
            status: Status
            if from_newest < spec.in_progress:
                status = "in-progress"
            elif from_newest < spec.in_progress + spec.processing:
                status = "processing"
            elif _every(spec.failed_every, index):
                status = "failed"
            else:
                status = "done"
            self._make(str(index), spec.agent_id, start + slot * spec.spacing_secs, status, slot, index)
            index += 1

    def _make(
        self, key: str, agent_id: str, start_unix: int, status: Status, slot: int, index: int | None
    ) -> SimConversation:
        spec = self.spec
        encoding: Encoding = "compact"
        if _every(spec.pretty_every, slot):
            encoding = "pretty"
        elif _every(spec.escaped_every, slot):
            encoding = "escaped"
        variant = index is not None  # the options shape the conversations of agent_id only
        at = index or 0
        conversation = synthesize(
            seed=spec.seed,
            key=key,
            agent_id=agent_id,
            start_unix=start_unix,
            status=status,
            conversation_id=conversation_id_for(spec.seed, key),
            user_turns=spec.user_turns,
            encoding=encoding,
            channel=spec.channels[at % len(spec.channels)] if variant and spec.channels else None,
            multi_party=variant and _every(spec.multi_party_every, at),
            media_entries=variant and _every(spec.media_every, at),
            minimal_entries=variant and _every(spec.minimal_every, at),
            keeps_turns_when_failed=spec.failed_with_turns,
            analysis_results=variant and spec.analysis_results,
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

    def body(self, conversation_id: str, *, otel: bool = False) -> bytes:
        """The GET body of a conversation as it stands, without counting a poll.

        Args:
            otel: Add ``otlp_traces``, as the API does for ``format=opentelemetry``.

        """
        conversation = self._by_id[conversation_id]
        return self._encoded(conversation, self._status(conversation), otel)

    def _encoded(self, c: SimConversation, status: Status, otel: bool) -> bytes:
        body = conversation_body(c, status)
        if otel:
            body["otlp_traces"] = otlp_traces(c, status, source="get_conversation")
        return encode_body(body, c.encoding)

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
            "conversations": [
                conversation_summary(
                    c, self._status(c), agent_name="Support" if c.agent_id == self.spec.agent_id else "Other"
                )
                for c in page
            ],
            "next_cursor": _cursor(page[-1]) if has_more else None,
            "has_more": has_more,
        }
        return encode_body(body)

    def get(self, conversation_id: str, *, otel: bool = False) -> bytes | None:
        """Answer ``GET /v1/convai/conversations/{id}``, counting a poll; ``None`` if unknown.

        Args:
            otel: ``format=opentelemetry``: add ``otlp_traces``.

        """
        conversation = self._by_id.get(conversation_id)
        if conversation is None:
            return None
        conversation.gets += 1
        status = self._status(conversation)
        if status == "processing":
            conversation.polls += 1
            if self.spec.done_after_polls is not None and conversation.polls > self.spec.done_after_polls:
                conversation.status = status = "done"
        return self._encoded(conversation, status, otel)

    # -- lifecycle -------------------------------------------------------------------

    def add(self, *, status: Status = "done", agent_id: str | None = None) -> SimConversation:
        """Add a conversation that started just now (newer than every other)."""
        self._added += 1
        start = max(self._next_start, int(time.time()))
        self._next_start = start + 1
        agent = agent_id or self.spec.agent_id
        index = self.spec.conversations + self._added - 1 if agent == self.spec.agent_id else None
        return self._make(f"added:{self._added}", agent, start, status, self._added, index)

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


def _spread(count: int, total: int) -> set[int]:
    """Pick ``count`` slots of ``total`` spread evenly (deterministic)."""
    if count <= 0:
        return set()
    step = total / count
    return {int(i * step + step / 2) for i in range(count)}
