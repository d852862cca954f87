"""What one agent-socket connection does: a :class:`Scenario`, its named presets, and the faults.

Pure data. The agent socket (:mod:`ingest.simulator.agent_socket`) plays a
scenario per handshake attempt; ``capture simulate --scenario NAME`` picks one
of :data:`SCENARIOS` by name (:func:`scenario_from_name`).

"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal


__all__ = [
    "CLOSE_FAULTS",
    "FAULTS",
    "HTTP_FAULTS",
    "HUGE_TEXT_SIZE",
    "MALFORMED_FRAMES",
    "SCENARIOS",
    "Scenario",
    "scenario_from_name",
]

#: Length of the transcript text in the ``huge`` fault's frame (the frame is a little longer).
HUGE_TEXT_SIZE = 5 * 1024 * 1024

#: The ``malformed`` fault's frames, sent in this order right after the metadata.
MALFORMED_FRAMES: tuple[str | bytes, ...] = (
    "this is not JSON {",
    '[{"type":"user_transcript"}]',
    '{"type":"user_transcript",\n'
    '"user_transcription_event":{"user_transcript":"split over lines","event_id":1}}',
    # The escapes are written literally: a client must keep them verbatim.
    '{"type":"user_transcript","user_transcription_event":'
    '{"user_transcript":"Ol\\u00e1 \\ud83d\\ude00","event_id":1}}',
    b"\x00\x01binary frame\xff",
    '{"type":"simulator_unknown_event","simulator_unknown_event":{"note":"a type no client knows"}}',
)

#: Faults that refuse the handshake, and with which HTTP status.
HTTP_FAULTS: dict[str, int] = {"http_503": 503, "http_401": 401, "http_403": 403, "http_404": 404}

#: Faults that close right after the metadata, and with which code and reason.
CLOSE_FAULTS: dict[str, tuple[int, str]] = {
    "close_1011": (1011, ""),
    "close_1002": (1002, "transport_receive_timeout"),
}

#: Every valid :attr:`Scenario.fault`.
FAULTS: tuple[str, ...] = (
    *HTTP_FAULTS,
    *CLOSE_FAULTS,
    "close_3000",
    "accept_close",
    "override_error",
    "drop",
    "malformed",
    "huge",
)


@dataclass
class Scenario:
    """What one connection does. The defaults are a well-formed spoken conversation.

    After the client's first frame (normally ``conversation_initiation_client_data``;
    anything else is handled as an ordinary frame right after the metadata) the
    server sends ``conversation_initiation_metadata``, then ``first_message`` as an agent
    reply, then other documented event types (``extra_events``, ``every_event``),
    then each of ``user_turns`` as a spoken turn (``tentative_user_transcript``,
    ``user_transcript``, agent reply), ``turn_gap`` seconds apart. An agent reply
    is ``agent_chat_response_part`` start/delta/stop then ``agent_response`` when
    the client asked for text only, else ``agent_response`` then a few ``audio``
    frames. Every ``user_message`` the client sends, at any time, gets a reply
    ``"You said: <text>"``; it is never echoed as a ``user_transcript``. Turns
    share one ``event_id`` counter, starting at 1 with the first message; pings
    have their own.

    Attributes:
        name: Shown in :attr:`ConnectionRecord.scenario`.
        first_message: The agent's opening line; ``None`` for none.
        user_turns: Scripted spoken user turns.
        turn_gap: Seconds before each scripted user turn.
        end: ``"close"``: after the script (and ``linger``), once pending
            ``user_message`` replies are sent and the final ping is answered,
            close 1000. ``"wait"``: stay open until the client closes,
            answering and pinging.
        linger: ``"close"`` mode: seconds to stay open after the script.
        final_ping: ``"close"`` mode: before closing, send a ``ping`` and wait
            for its ``pong`` (and any other outstanding one) up to the
            simulator's ``pong_deadline``; without it, close 1002
            "pong timeout" instead of 1000. A client that never answers pings
            does not pass a normal conversation.
        idle_close_after: ``"wait"`` mode: close 1000 "inactivity timeout" when
            the client sent nothing but pongs for this long.
        fault: One of :data:`FAULTS`, or ``None``:

            * ``http_503``/``http_401``/``http_403``/``http_404``: refuse the
              handshake with that status (before any agent or token check).
            * ``accept_close``: accept, then close 1000 before anything.
            * ``close_3000``: accept, then close 3000 "Request error" before metadata.
            * ``override_error``: after the init frame send an ``error`` event
              (code 1008, ``override_error``) and close 1008; no metadata.
            * ``close_1011``/``close_1002``: close with that code right after metadata.
            * ``drop``: after metadata, the first message and the first user
              turn's transcripts (no reply), abort TCP without a close frame.
            * ``malformed``: after metadata send :data:`MALFORMED_FRAMES`, then
              carry on normally.
            * ``huge``: after metadata send one ``user_transcript`` frame of
              about 5 MiB (:data:`HUGE_TEXT_SIZE`; a client needs ``max_size``
              above 1 MiB), then carry on normally.

        flood: If positive: after metadata, instead of the script, send this
            many ``user_transcript`` frames as fast as possible (``event_id``
            1..N, text ``f"flood {i}"``) with a ping after every
            ``flood_ping_every`` of them, then close 1000.
        flood_ping_every: See ``flood``.
        extra_events: Send ``vad_score``, ``interruption``,
            ``agent_response_correction``, ``context_usage``,
            ``agent_tool_response``, ``mcp_connection_status`` and an unknown
            type once, after the first message.
        every_event: Also send, once, every other server-to-client type of the
            platform's AsyncAPI definition (``asr_initiation_metadata``,
            reasoning parts, tool and MCP events, ``client_tool_call``,
            ``rich_content``, ``guardrail_triggered``, the internal events,
            ``agent_typing``, external-agent events): see
            :func:`ingest.simulator.events.every_event`.

    Raises:
        ValueError: on an unknown ``end`` or ``fault`` or a negative number.

    """

    name: str = "normal"
    first_message: str | None = "Hello! How can I help you today?"
    user_turns: list[str] = field(
        default_factory=lambda: ["I need help with my bill.", "Can you check my last invoice?"]
    )
    turn_gap: float = 0.05
    end: Literal["close", "wait"] = "close"
    linger: float = 0.0
    final_ping: bool = True
    idle_close_after: float | None = None
    fault: str | None = None
    flood: int = 0
    flood_ping_every: int = 1000
    extra_events: bool = True
    every_event: bool = False

    def __post_init__(self) -> None:
        if self.end not in ("close", "wait"):
            raise ValueError(f"Scenario.end must be 'close' or 'wait', not {self.end!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; valid: {', '.join(FAULTS)}")
        if self.turn_gap < 0 or self.linger < 0 or self.flood < 0 or self.flood_ping_every < 1:
            raise ValueError("Scenario timings and counts must not be negative")


SCENARIOS: dict[str, Scenario] = {
    "normal": Scenario(),
    "every_event": Scenario(name="every_event", every_event=True),
    "wait": Scenario(name="wait", end="wait"),
    "silent": Scenario(name="silent", first_message=None, user_turns=[], extra_events=False, end="wait"),
    "flood": Scenario(name="flood", flood=10_000),
    **{fault: Scenario(name=fault, fault=fault) for fault in FAULTS},
}
"""Named presets, for ``--scenario NAME``; get one with :func:`scenario_from_name`."""


def scenario_from_name(name: str) -> Scenario:
    """Return a fresh copy of the preset called ``name`` in :data:`SCENARIOS`.

    Raises:
        ValueError: if there is no such preset; the message lists the valid names.

    """
    try:
        return copy.deepcopy(SCENARIOS[name])
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}") from None
