"""A local fake ElevenLabs Agents server: the network peer of tests, demos and benchmarks.

:class:`Simulator` listens on one loopback port and speaks the Agents WebSocket
protocol at ``/v1/convai/conversation?agent_id=…`` (see
``docs/elevenlabs-protocol.md``). The same port answers plain HTTP:

* ``GET /v1/convai/conversation/get-signed-url?agent_id=…`` (header
  ``xi-api-key``) returns ``{"signed_url": "ws://…&conversation_signature=…"}``;
* ``GET /healthz`` returns ``200 ok``.

With an ``account`` (:class:`~ingest.simulator.account.AccountSpec`) it also serves
the Conversations REST API and the monitor socket (``docs/elevenlabs-protocol.md``
§6b, §6c) over a synthetic history of conversations:

* ``GET /v1/convai/conversations`` (``agent_id``, ``cursor``, ``page_size`` ≤ 100,
  ``call_start_after_unix``, ``call_start_before_unix``) and
  ``GET /v1/convai/conversations/{id}``, each answered after ``rest_latency``;
  scripted :class:`RestFault` answers (429 ``too_many_concurrent_requests`` or
  ``system_busy``, with or without ``Retry-After``; other statuses) and a
  concurrency limit (``rest_max_concurrency``: above it, 429
  ``too_many_concurrent_requests``); every request is kept in
  :attr:`Simulator.rest_requests`, the most simultaneous in
  :attr:`Simulator.rest_max_in_flight`;
* ``/v1/convai/conversations/{id}/monitor`` (WebSocket, header ``xi-api-key``):
  for an ``in-progress`` conversation, plays its transcript as agent-socket
  events (``user_transcript``, ``agent_response``, ``audio``), then closes 1000
  and the conversation is ``processing``; refused with 403 (or closed 1008)
  when ``monitor_enabled`` is false; kept in :attr:`Simulator.monitors`.

Without an account those paths answer 404, as before.

What each connection does is a :class:`Scenario`: by default a well-formed
conversation (metadata, a first message, scripted spoken user turns, replies,
pings), optionally with a fault (refused handshake, abrupt drop, odd close
codes, malformed or huge frames, a flood). Everything the server sees is kept in
:attr:`Simulator.connections` so a test can assert on it.

Synchronous code and subprocess tests use :class:`SimulatorThread`; the
``capture simulate`` command uses :func:`run_simulator`.

"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import secrets
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ingest.simulator.account import Account, AccountSpec, BadQuery


__all__ = [
    "CONVERSATIONS_PATH",
    "CONVERSATION_PATH",
    "FAULTS",
    "HEALTH_PATH",
    "HUGE_TEXT_SIZE",
    "MALFORMED_FRAMES",
    "MAX_CLIENT_FRAME",
    "SCENARIOS",
    "SIGNED_URL_PATH",
    "AccountSpec",
    "ConnectionRecord",
    "MonitorRecord",
    "RestFault",
    "RestRecord",
    "Scenario",
    "Simulator",
    "SimulatorThread",
    "run_simulator",
    "scenario_from_name",
]

_T = TypeVar("_T")

CONVERSATION_PATH = "/v1/convai/conversation"
SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
# The underscore spelling is the same operation, documented as deprecated.
_SIGNED_URL_PATHS = frozenset({SIGNED_URL_PATH, "/v1/convai/conversation/get_signed_url"})
HEALTH_PATH = "/healthz"
CONVERSATIONS_PATH = "/v1/convai/conversations"
_MONITOR_SUFFIX = "/monitor"

#: Largest client frame the server accepts, like the official SDKs' ``max_size``.
MAX_CLIENT_FRAME = 16 * 1024 * 1024

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

_HTTP_FAULTS: dict[str, int] = {"http_503": 503, "http_401": 401, "http_403": 403, "http_404": 404}
_CLOSE_FAULTS: dict[str, tuple[int, str]] = {
    "close_1011": (1011, ""),
    "close_1002": (1002, "transport_receive_timeout"),
}

#: Every valid :attr:`Scenario.fault`.
FAULTS: tuple[str, ...] = (
    *_HTTP_FAULTS,
    *_CLOSE_FAULTS,
    "close_3000",
    "accept_close",
    "override_error",
    "drop",
    "malformed",
    "huge",
)

_OVERRIDE_ERROR_MESSAGE = "Override for field 'text_only' is not allowed by config."

# 200 ms of 16 kHz 16-bit mono; the bytes are junk, only the shape matters.
_AUDIO_B64 = base64.b64encode(bytes(range(256)) * 25).decode("ascii")
_AUDIO_FRAMES_PER_REPLY = 3


@dataclass
class Scenario:
    """What one connection does. The defaults are a well-formed spoken conversation.

    After the client's first frame (normally ``conversation_initiation_client_data``;
    anything else is handled as an ordinary frame right after the metadata) the
    server sends ``conversation_initiation_metadata``, then ``first_message`` as an agent
    reply, then the other documented event types once (``extra_events``), then
    each of ``user_turns`` as a spoken turn (``tentative_user_transcript``,
    ``user_transcript``, agent reply), ``turn_gap`` seconds apart. An agent reply
    is ``agent_chat_response_part`` start/delta/stop then ``agent_response`` when
    the client asked for text only, else ``agent_response`` then a few ``audio``
    frames. Every ``user_message`` the client sends, at any time, gets a reply
    ``"You said: <text>"``; it is never echoed as a ``user_transcript``. Turns
    share one ``event_id`` counter, starting at 1 with the first message.

    Attributes:
        name: Shown in :attr:`ConnectionRecord.scenario`.
        first_message: The agent's opening line; ``None`` for none.
        user_turns: Scripted spoken user turns.
        turn_gap: Seconds before each scripted user turn.
        end: ``"close"``: after the script (and ``linger``) and once pending
            ``user_message`` replies are sent, close 1000. ``"wait"``: stay open
            until the client closes, answering and pinging.
        linger: ``"close"`` mode: seconds to stay open after the script.
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
    idle_close_after: float | None = None
    fault: str | None = None
    flood: int = 0
    flood_ping_every: int = 1000
    extra_events: bool = True

    def __post_init__(self) -> None:
        if self.end not in ("close", "wait"):
            raise ValueError(f"Scenario.end must be 'close' or 'wait', not {self.end!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; valid: {', '.join(FAULTS)}")
        if self.turn_gap < 0 or self.linger < 0 or self.flood < 0 or self.flood_ping_every < 1:
            raise ValueError("Scenario timings and counts must not be negative")


SCENARIOS: dict[str, Scenario] = {
    "normal": Scenario(),
    "wait": Scenario(name="wait", end="wait"),
    "silent": Scenario(name="silent", first_message=None, user_turns=[], extra_events=False, end="wait"),
    "flood": Scenario(name="flood", flood=10_000),
    **{fault: Scenario(name=fault, fault=fault) for fault in FAULTS},
}
"""Named presets, for ``--fault NAME``; get one with :func:`scenario_from_name`."""


def scenario_from_name(name: str) -> Scenario:
    """Return a fresh copy of the preset called ``name`` in :data:`SCENARIOS`.

    Raises:
        ValueError: if there is no such preset; the message lists the valid names.

    """
    try:
        return copy.deepcopy(SCENARIOS[name])
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}") from None


@dataclass
class ConnectionRecord:
    """What the server saw of one WebSocket handshake attempt and its connection.

    Times are :func:`time.monotonic`. Written on the simulator's event loop; safe
    to read from another thread for polling (fields are replaced or appended).

    Attributes:
        index: 1 for the first handshake attempt, 2 for the next, … Refused
            attempts count and consume their scenario too.
        scenario: The :attr:`Scenario.name` given to this attempt.
        path: The request's path and query as sent.
        agent_id: The ``agent_id`` query parameter.
        attempted_at: When the handshake request arrived.
        http_status: The handshake's answer: 101 when accepted, else the refusal.
        opened_at: When the WebSocket opened; ``None`` if refused.
        closed_at: When it finished closing (or was refused).
        conversation_id: Announced in the metadata, if it was sent.
        init: The parsed ``conversation_initiation_client_data``, if received.
        text_only: Whether the init asked for text only (in either placement);
            ``None`` without an init frame.
        text_only_placement: ``"conversation"`` for
            ``conversation_config_override.conversation.text_only``,
            ``"top_level"`` for ``conversation_config_override.text_only``.
        pings_sent: Pings sent.
        pongs: ``(event_id, seconds from ping to pong)`` of each matching pong.
        user_messages: Text of each ``user_message`` received, in order.
        contextual_updates: Text of each ``contextual_update``.
        user_activities: Count of ``user_activity`` frames.
        audio_chunks: Count of ``user_audio_chunk`` frames.
        malformed: Client frames that were not a JSON object (first 200 characters).
        other_types: ``type`` of other client frames (unknown, or a second init).
        frames_sent: Frames the server sent (all kinds).
        frames_received: Frames the client sent, the init included.
        close_code: The code of the close frame that ended it, 1006 if none.
        close_reason: That frame's reason.
        closed_by: ``"server"`` or ``"client"``: who started the close
            (a ``drop`` is the server's; a vanished client is the client's).

    """

    index: int
    scenario: str
    path: str
    agent_id: str | None
    attempted_at: float
    http_status: int | None = None
    opened_at: float | None = None
    closed_at: float | None = None
    conversation_id: str | None = None
    init: dict[str, Any] | None = None
    text_only: bool | None = None
    text_only_placement: Literal["conversation", "top_level"] | None = None
    pings_sent: int = 0
    pongs: list[tuple[int, float]] = field(default_factory=list)
    user_messages: list[str] = field(default_factory=list)
    contextual_updates: list[str] = field(default_factory=list)
    user_activities: int = 0
    audio_chunks: int = 0
    malformed: list[str | bytes] = field(default_factory=list)
    other_types: list[str] = field(default_factory=list)
    frames_sent: int = 0
    frames_received: int = 0
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: Literal["server", "client"] | None = None

    @property
    def refused(self) -> bool:
        """Whether the handshake was answered with anything but 101."""
        return self.http_status is not None and self.http_status != 101

    @property
    def closed(self) -> bool:
        """Whether the attempt is over (refused, or the connection closed)."""
        return self.closed_at is not None


@dataclass(frozen=True)
class RestFault:
    """A scripted answer to the next REST request of kind ``on``, instead of serving it.

    Faults are used in order; each answers one request.

    Attributes:
        status: ``detail.status`` of the body: ``too_many_concurrent_requests``
            (wait for a slot) or ``system_busy`` (back off) for a 429, anything
            for another status.
        retry_after: Seconds sent as ``Retry-After`` (an integer when whole);
            ``None`` sends no header.
        http_status: The HTTP status (429 by default; 500, 503, 401, … work).
        on: Which requests it may answer: ``"list"``, ``"get"`` or ``"any"``.

    """

    status: str = "system_busy"
    retry_after: float | None = None
    http_status: int = 429
    on: Literal["any", "list", "get"] = "any"


@dataclass
class RestRecord:
    """One REST request the simulator answered. Times are :func:`time.monotonic`.

    Attributes:
        index: 1 for the first REST request, 2 for the next, …
        kind: ``"list"``, ``"get"`` or ``"other"`` (answered 404).
        path: Path and query as sent.
        conversation_id: For ``get``, the id asked for.
        arrived_at: When the request was parsed.
        in_flight: REST requests being answered when it arrived, itself included.
        answered_at: When its answer was ready.
        status: The HTTP status answered.
        detail_status: ``detail.status`` of an error body (``system_busy``, …).
        retry_after: The ``Retry-After`` header sent, if any.

    """

    index: int
    kind: Literal["list", "get", "other"]
    path: str
    conversation_id: str | None
    arrived_at: float
    in_flight: int = 0
    answered_at: float | None = None
    status: int | None = None
    detail_status: str | None = None
    retry_after: str | None = None


@dataclass
class MonitorRecord:
    """One handshake attempt on a monitor socket, and its connection. Times are :func:`time.monotonic`.

    Attributes:
        index: 1 for the first attempt, 2 for the next, …
        conversation_id: The conversation in the path.
        path: Path as sent.
        attempted_at: When the handshake request arrived.
        http_status: 101 when accepted, else the refusal.
        opened_at: When the WebSocket opened.
        closed_at: When it closed (or was refused).
        frames_sent: Frames sent, audio included.
        audio_sent: ``audio`` frames among them.
        close_code: The close code sent or received.

    """

    index: int
    conversation_id: str
    path: str
    attempted_at: float
    http_status: int | None = None
    opened_at: float | None = None
    closed_at: float | None = None
    frames_sent: int = 0
    audio_sent: int = 0
    close_code: int | None = None


@dataclass(frozen=True, slots=True)
class _Grant:
    agent_id: str
    expires_at: float


class Simulator:
    """A fake ElevenLabs Agents server on one local port.

    Use ``async with Simulator(...) as sim:`` or :meth:`start`/:meth:`stop`;
    from synchronous code use :class:`SimulatorThread`.

    Args:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one (read :attr:`port`).
        agent_ids: Known agents; any other ``agent_id`` is refused with 404.
        api_key: If set, the signed-URL endpoint requires header ``xi-api-key``
            equal to it (else 401) and the WebSocket requires a valid, unused,
            unexpired ``conversation_signature`` (or ``token``) from it (else
            403). If ``None``, agents are public and the endpoint takes any key.
        script: Scenarios for handshake attempts 1, 2, … in order.
        default: Scenario for every attempt after the script; ``Scenario()`` if ``None``.
        ping_interval: Seconds between ``ping`` events; the first comes one
            interval after metadata. ``None`` sends none (except a flood's) and
            enforces no pong deadline.
        pong_deadline: Seconds within which each ping's pong must arrive, else
            the server closes 1002 "pong timeout".
        init_timeout: Seconds to wait for the client's first frame, else close
            1008.
        signed_url_ttl: Seconds a signed URL stays usable (15 minutes, as documented).
        close_timeout: Seconds to wait for the client's close frame before
            aborting TCP.
        compression: Whether to negotiate permessage-deflate (off: cheaper floods).
        account: The conversation history served by the REST API and the
            monitor socket; ``None`` serves neither (their paths answer 404).
        rest_latency: Seconds every served REST request takes (after the
            fault, limit and key checks), so concurrency shows.
        rest_max_concurrency: Above this many REST requests in flight, answer
            429 ``too_many_concurrent_requests``; ``None`` for no limit.
        rest_faults: Scripted answers, see :class:`RestFault`; more can be
            appended to :attr:`rest_faults` later (on the simulator's loop).
        monitor_enabled: Whether monitor sockets are accepted.
        monitor_refusal: How a disabled monitor refuses: ``"http_403"`` (the
            handshake) or ``"close_1008"`` (accept, then close 1008).

    With ``api_key`` set, REST requests and monitor handshakes need header
    ``xi-api-key`` equal to it (else 401); without, the monitor still needs the
    header (any value) and REST takes any key.

    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        agent_ids: Collection[str] = ("agent_demo",),
        api_key: str | None = None,
        script: Sequence[Scenario] = (),
        default: Scenario | None = None,
        ping_interval: float | None = 1.0,
        pong_deadline: float = 5.0,
        init_timeout: float = 10.0,
        signed_url_ttl: float = 15 * 60,
        close_timeout: float = 10.0,
        compression: bool = False,
        account: AccountSpec | None = None,
        rest_latency: float = 0.0,
        rest_max_concurrency: int | None = None,
        rest_faults: Sequence[RestFault] = (),
        monitor_enabled: bool = True,
        monitor_refusal: Literal["http_403", "close_1008"] = "http_403",
    ) -> None:
        self.host = host
        self.agent_ids = frozenset(agent_ids)
        self.api_key = api_key
        self.script = list(script)
        self.default = default if default is not None else Scenario()
        self.ping_interval = ping_interval
        self.pong_deadline = pong_deadline
        self.init_timeout = init_timeout
        self.signed_url_ttl = signed_url_ttl
        self.close_timeout = close_timeout
        self.compression = compression
        self.connections: list[ConnectionRecord] = []
        self.signed_url_requests = 0
        self._requested_port = port
        self._port: int | None = None
        self._server: Server | None = None
        self._grants: dict[str, _Grant] = {}
        self._handshakes: dict[ServerConnection, tuple[ConnectionRecord, Scenario]] = {}
        self.account = Account(account) if account is not None else None
        self.rest_latency = rest_latency
        self.rest_max_concurrency = rest_max_concurrency
        self.rest_faults: list[RestFault] = list(rest_faults)
        self.rest_requests: list[RestRecord] = []
        self.rest_in_flight = 0
        self.rest_max_in_flight = 0
        self.rest_throttled = 0
        self.monitor_enabled = monitor_enabled
        self.monitor_refusal = monitor_refusal
        self.monitors: list[MonitorRecord] = []
        self._monitor_handshakes: dict[ServerConnection, MonitorRecord] = {}
        self._live: dict[str, dict[ServerConnection, MonitorRecord]] = {}
        self._players: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; :attr:`port` is known when this returns."""
        if self._server is not None:
            return
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            process_response=self._process_response,
            compression="deflate" if self.compression else None,
            # Keepalive is the protocol's own ping/pong events, not WebSocket pings.
            ping_interval=None,
            close_timeout=self.close_timeout,
            max_size=MAX_CLIENT_FRAME,
            create_connection=_Connection,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close every open connection with 1001, stop listening, and wait for both."""
        server, self._server = self._server, None
        if server is None:
            return
        for player in list(self._players):
            player.cancel()
        server.close()
        await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` is true, checking every 10 ms.

        Raises:
            TimeoutError: if it is still false after ``timeout`` seconds.

        """
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"simulator condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    # -- addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (valid once started)."""
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def _netloc(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def http_url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:PORT`` (an SDK's ``base_url``)."""
        return f"http://{self._netloc}"

    @property
    def ws_url(self) -> str:
        """The same base URL with the ``ws`` scheme, e.g. ``ws://127.0.0.1:PORT``."""
        return f"ws://{self._netloc}"

    def conversation_url(self, agent_id: str = "agent_demo", **params: str) -> str:
        """Return the public conversation URL for ``agent_id``, plus any extra query parameters."""
        query = urlencode({"agent_id": agent_id, **params})
        return f"{self.ws_url}{CONVERSATION_PATH}?{query}"

    # -- HTTP ------------------------------------------------------------------------

    def _next_scenario(self) -> Scenario:
        position = len(self.connections)
        return self.script[position] if position < len(self.script) else self.default

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        if self.account is not None and (
            url.path == CONVERSATIONS_PATH or url.path.startswith(CONVERSATIONS_PATH + "/")
        ):
            tail = url.path[len(CONVERSATIONS_PATH) :].strip("/")
            head, _, rest = tail.partition("/")
            if head and "/" + rest == _MONITOR_SUFFIX:
                return self._monitor_handshake(connection, request, head)
            if not rest:
                return await self._rest(connection, request, head or None, query)
        return self._agent_request(connection, request, url.path, query)

    def _agent_request(
        self, connection: ServerConnection, request: Request, path: str, query: dict[str, str]
    ) -> Response | None:
        if path in _SIGNED_URL_PATHS:
            return self._signed_url(connection, request, query)
        if path == HEALTH_PATH:
            return connection.respond(200, "ok\n")
        if path.rstrip("/") != CONVERSATION_PATH:
            return _json_response(connection, 404, {"detail": "Not Found"})
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None  # websockets answers 426 Upgrade Required

        scenario = self._next_scenario()
        agent_id = query.get("agent_id")
        record = ConnectionRecord(
            index=len(self.connections) + 1,
            scenario=scenario.name,
            path=request.path,
            agent_id=agent_id,
            attempted_at=time.monotonic(),
        )
        self.connections.append(record)
        self._handshakes[connection] = (record, scenario)

        # A fault acts like a proxy in front of the service: before any check,
        # so a scripted 503 does not consume a signed URL.
        if scenario.fault in _HTTP_FAULTS:
            status = _HTTP_FAULTS[scenario.fault]
            return _json_response(
                connection, status, _error_detail(scenario.fault, f"simulated HTTP {status}")
            )
        if agent_id not in self.agent_ids:
            return _json_response(
                connection, 404, _error_detail("agent_not_found", f"Agent {agent_id} not found")
            )
        if self.api_key is not None:
            token = query.get("conversation_signature") or query.get("token")
            grant = self._grants.pop(token, None) if token else None
            if grant is None or grant.agent_id != agent_id or grant.expires_at < time.monotonic():
                return _json_response(
                    connection,
                    403,
                    _error_detail("invalid_signature", "Missing, used or expired conversation signature"),
                )
        return None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        entry = self._handshakes.get(connection)
        if entry is not None:
            record = entry[0]
            record.http_status = response.status_code
            if response.status_code != 101:
                record.closed_at = time.monotonic()
                del self._handshakes[connection]
        monitor = self._monitor_handshakes.get(connection)
        if monitor is not None:
            monitor.http_status = response.status_code
            if response.status_code != 101:
                monitor.closed_at = time.monotonic()
                del self._monitor_handshakes[connection]
        return None

    def _signed_url(self, connection: ServerConnection, request: Request, query: dict[str, str]) -> Response:
        self.signed_url_requests += 1
        if self.api_key is not None and request.headers.get("xi-api-key") != self.api_key:
            return _json_response(connection, 401, _error_detail("invalid_api_key", "Invalid API key"))
        agent_id = query.get("agent_id")
        if not agent_id:
            return _json_response(
                connection,
                422,
                {"detail": [{"loc": ["query", "agent_id"], "msg": "Field required", "type": "missing"}]},
            )
        if agent_id not in self.agent_ids:
            return _json_response(
                connection, 404, _error_detail("agent_not_found", f"Agent {agent_id} not found")
            )
        token = secrets.token_urlsafe(24)
        self._grants[token] = _Grant(agent_id, time.monotonic() + self.signed_url_ttl)
        netloc = request.headers.get("Host") or self._netloc
        query_string = urlencode({"agent_id": agent_id, "conversation_signature": token})
        return _json_response(
            connection, 200, {"signed_url": f"ws://{netloc}{CONVERSATION_PATH}?{query_string}"}
        )

    # -- REST: the Conversations API ---------------------------------------------------

    def _key_ok(self, request: Request, *, required: bool) -> bool:
        key = request.headers.get("xi-api-key")
        if self.api_key is not None:
            return key == self.api_key
        return key is not None or not required

    def _next_fault(self, kind: str) -> RestFault | None:
        for position, fault in enumerate(self.rest_faults):
            if fault.on in ("any", kind):
                del self.rest_faults[position]
                return fault
        return None

    async def _rest(
        self,
        connection: ServerConnection,
        request: Request,
        conversation_id: str | None,
        query: dict[str, str],
    ) -> Response:
        kind: Literal["list", "get", "other"] = "list" if conversation_id is None else "get"
        self.rest_in_flight += 1
        self.rest_max_in_flight = max(self.rest_max_in_flight, self.rest_in_flight)
        record = RestRecord(
            index=len(self.rest_requests) + 1,
            kind=kind,
            path=request.path,
            conversation_id=conversation_id,
            arrived_at=time.monotonic(),
            in_flight=self.rest_in_flight,
        )
        self.rest_requests.append(record)
        try:
            response = await self._rest_answer(connection, request, record, query)
        finally:
            self.rest_in_flight -= 1
        record.answered_at = time.monotonic()
        record.status = response.status_code
        record.retry_after = response.headers.get("Retry-After")
        if response.status_code == 429:
            self.rest_throttled += 1
        return response

    async def _rest_answer(
        self, connection: ServerConnection, request: Request, record: RestRecord, query: dict[str, str]
    ) -> Response:
        assert self.account is not None
        fault = self._next_fault(record.kind)
        if fault is not None:
            record.detail_status = fault.status
            return _fault_response(connection, fault)
        limit = self.rest_max_concurrency
        if limit is not None and self.rest_in_flight > limit:
            record.detail_status = "too_many_concurrent_requests"
            return _json_response(
                connection,
                429,
                _error_detail(
                    "too_many_concurrent_requests",
                    f"Too many concurrent requests: your plan allows {limit}.",
                ),
            )
        if not self._key_ok(request, required=False):
            record.detail_status = "invalid_api_key"
            return _json_response(connection, 401, _error_detail("invalid_api_key", "Invalid API key"))
        if self.rest_latency:
            await asyncio.sleep(self.rest_latency)
        if record.conversation_id is not None:
            body = self.account.get(record.conversation_id)
            if body is None:
                record.detail_status = "conversation_not_found"
                return _json_response(
                    connection, 404, _error_detail("conversation_not_found", "Conversation not found")
                )
            return _bytes_response(connection, 200, body)
        try:
            body = self.account.list_page(
                agent_id=query.get("agent_id") or None,
                cursor=query.get("cursor") or None,
                page_size=int(query.get("page_size") or 30),
                after_unix=_int_or_none(query.get("call_start_after_unix")),
                before_unix=_int_or_none(query.get("call_start_before_unix")),
            )
        except (BadQuery, ValueError) as exc:
            return _json_response(
                connection, 422, {"detail": [{"loc": ["query"], "msg": str(exc), "type": "value_error"}]}
            )
        return _bytes_response(connection, 200, body)

    # -- the monitor socket --------------------------------------------------------------

    def _monitor_handshake(
        self, connection: ServerConnection, request: Request, conversation_id: str
    ) -> Response | None:
        assert self.account is not None
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None  # websockets answers 426 Upgrade Required
        record = MonitorRecord(
            index=len(self.monitors) + 1,
            conversation_id=conversation_id,
            path=request.path,
            attempted_at=time.monotonic(),
        )
        self.monitors.append(record)
        self._monitor_handshakes[connection] = record
        if not self._key_ok(request, required=True):
            return _json_response(connection, 401, _error_detail("invalid_api_key", "Invalid API key"))
        if not self.monitor_enabled and self.monitor_refusal == "http_403":
            return _json_response(
                connection,
                403,
                _error_detail(
                    "monitoring_not_enabled",
                    "Real-time monitoring is not enabled for this agent or workspace",
                ),
            )
        if self.monitor_enabled and not self.account.is_live(conversation_id):
            return _json_response(
                connection, 404, _error_detail("conversation_not_active", "The conversation is not active")
            )
        return None

    async def _monitor_session(self, ws: ServerConnection, record: MonitorRecord) -> None:
        record.opened_at = time.monotonic()
        conversation_id = record.conversation_id
        try:
            if not self.monitor_enabled:
                await ws.close(1008, "Real-time monitoring is not enabled for this agent")
                return
            subscribers = self._live.setdefault(conversation_id, {})
            subscribers[ws] = record
            if len(subscribers) == 1:
                assert self.account is not None
                entries = self.account.start_live(conversation_id)
                if entries:
                    player = asyncio.create_task(self._play(conversation_id, entries))
                    self._players.add(player)
                    player.add_done_callback(self._players.discard)
            await ws.wait_closed()
        finally:
            self._live.get(conversation_id, {}).pop(ws, None)
            await ws.close()
            await ws.wait_closed()
            record.closed_at = time.monotonic()
            if record.close_code is None:
                frame = ws.protocol.close_sent or ws.protocol.close_rcvd
                record.close_code = frame.code if frame is not None else 1006

    async def _play(self, conversation_id: str, entries: list[dict[str, Any]]) -> None:
        """Play a live conversation to its monitors, then end it (close 1000)."""
        assert self.account is not None
        gap = self.account.spec.live_turn_gap
        for entry in entries:
            await asyncio.sleep(gap)
            self.account.played(conversation_id)
            for frame in _monitor_frames(entry):
                audio = frame.startswith('{"type":"audio"')
                for ws, record in list(self._live.get(conversation_id, {}).items()):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(frame)
                        record.frames_sent += 1
                        record.audio_sent += audio
        self.account.finish_live(conversation_id)
        subscribers = self._live.pop(conversation_id, {})
        for record in subscribers.values():
            record.close_code = 1000
        await asyncio.gather(*(ws.close(1000) for ws in subscribers), return_exceptions=True)

    # -- WebSocket -------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        monitor = self._monitor_handshakes.pop(connection, None)
        if monitor is not None:
            await self._monitor_session(connection, monitor)
            return
        entry = self._handshakes.pop(connection, None)
        # Cannot happen: every accepted handshake went through _process_request.
        if entry is None or not isinstance(connection, _Connection):
            return
        record, scenario = entry
        record.opened_at = time.monotonic()
        await _Session(self, connection, record, scenario).run()


class _Connection(ServerConnection):
    """A server connection that says as soon as its closing handshake is over.

    A client's ``close()`` returns once the server closed TCP, which can be
    before the server's handler resumes; recording the close here means a test
    that has just closed its client already sees the close recorded.

    """

    on_closed: Callable[[], None] | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.protocol.close_rcvd is not None:
            self._closed()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._closed()

    def _closed(self) -> None:
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback()


def _error_detail(status: str, message: str) -> dict[str, Any]:
    return {"detail": {"status": status, "message": message}}


def _json_response(connection: ServerConnection, status: int, body: Any) -> Response:
    response = connection.respond(status, orjson.dumps(body).decode())
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


def _bytes_response(connection: ServerConnection, status: int, body: bytes) -> Response:
    response = connection.respond(status, "")
    response.body = body
    # websockets' Headers is a multidict: assigning adds a second header.
    del response.headers["Content-Length"]
    response.headers["Content-Length"] = str(len(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


def _fault_response(connection: ServerConnection, fault: RestFault) -> Response:
    message = {
        "too_many_concurrent_requests": "Too many concurrent requests.",
        "system_busy": "The system is experiencing heavy traffic, please try again later.",
    }.get(fault.status, f"simulated HTTP {fault.http_status}")
    response = _json_response(connection, fault.http_status, _error_detail(fault.status, message))
    if fault.retry_after is not None:
        seconds = fault.retry_after
        response.headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"
    return response


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


def _monitor_frames(entry: dict[str, Any]) -> list[str]:
    """The agent-socket events a monitor sees for one transcript entry."""
    event_id = entry.get("source_event_id")
    text = entry["message"]
    if entry["role"] == "user":
        return [
            orjson.dumps(
                {
                    "type": "user_transcript",
                    "user_transcription_event": {"user_transcript": text, "event_id": event_id},
                }
            ).decode()
        ]
    frames = [
        orjson.dumps(
            {"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}
        ).decode()
    ]
    frames += [
        orjson.dumps(
            {"type": "audio", "audio_event": {"audio_base_64": _AUDIO_B64[:64], "event_id": event_id}}
        ).decode()
    ] * 2
    return frames


def _parse(data: str | bytes) -> dict[str, Any] | None:
    if isinstance(data, bytes):
        return None
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _text_only_placement(init: dict[str, Any]) -> Literal["conversation", "top_level"] | None:
    override = init.get("conversation_config_override")
    if not isinstance(override, dict):
        return None
    conversation = override.get("conversation")
    if isinstance(conversation, dict) and conversation.get("text_only") is True:
        return "conversation"
    # The official Python SDK puts the flag here, outside the schema.
    if override.get("text_only") is True:
        return "top_level"
    return None


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word + " " for word in words[:-1]] + words[-1:]


class _Session:
    """One accepted connection, from open to close."""

    def __init__(self, sim: Simulator, ws: _Connection, record: ConnectionRecord, scenario: Scenario) -> None:
        self.sim = sim
        self.ws = ws
        self.record = record
        self.scenario = scenario
        self.text_only = False
        self.turn = 0
        self.ping_id = 0
        self.outstanding: dict[int, float] = {}
        self.last_rtt_ms: int | None = None
        self.last_activity = time.monotonic()
        self.pending_replies = 0
        # Held while emitting one turn, so the frames of two turns never interleave.
        self.speaking = asyncio.Condition()
        self.dropped = False
        self.close_recorded = False
        ws.on_closed = self._record_close

    # -- sending ---------------------------------------------------------------------

    async def send(self, data: str | bytes) -> None:
        await self.ws.send(data)
        self.record.frames_sent += 1

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(orjson.dumps(message).decode())

    def next_turn(self) -> int:
        self.turn += 1
        return self.turn

    async def ping(self) -> None:
        self.ping_id += 1
        event_id = self.ping_id
        self.outstanding[event_id] = time.monotonic()
        self.record.pings_sent += 1
        await self.send_json(
            {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": self.last_rtt_ms}}
        )

    async def agent_reply(self, text: str, event_id: int) -> None:
        if self.text_only:
            await self.send_json(
                {
                    "type": "agent_chat_response_part",
                    "text_response_part": {"text": "", "type": "start", "event_id": event_id},
                }
            )
            for word in _words(text):
                await self.send_json(
                    {
                        "type": "agent_chat_response_part",
                        "text_response_part": {"text": word, "type": "delta", "event_id": event_id},
                    }
                )
            await self.send_json(
                {
                    "type": "agent_chat_response_part",
                    "text_response_part": {"text": "", "type": "stop", "event_id": event_id},
                }
            )
        await self.send_json(
            {"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}
        )
        if not self.text_only:
            chunk = max(1, -(-len(text) // _AUDIO_FRAMES_PER_REPLY))
            for start in range(0, _AUDIO_FRAMES_PER_REPLY * chunk, chunk):
                chars = list(text[start : start + chunk])
                await self.send_json(
                    {
                        "type": "audio",
                        "audio_event": {
                            "audio_base_64": _AUDIO_B64,
                            "event_id": event_id,
                            "alignment": {
                                "chars": chars,
                                "char_start_times_ms": [60 * (start + i) for i in range(len(chars))],
                                "char_durations_ms": [60] * len(chars),
                            },
                        },
                    }
                )

    async def user_transcripts(self, text: str, event_id: int) -> None:
        await self.send_json(
            {
                "type": "tentative_user_transcript",
                "tentative_user_transcription_event": {
                    "user_transcript": text[: len(text) // 2],
                    "event_id": event_id,
                },
            }
        )
        await self.send_json(
            {
                "type": "user_transcript",
                "user_transcription_event": {"user_transcript": text, "event_id": event_id},
            }
        )

    async def extra_events(self) -> None:
        event_id = self.turn
        original = self.scenario.first_message or "Let me tell you about our plans."
        events: list[dict[str, Any]] = [
            {"type": "vad_score", "vad_score_event": {"vad_score": 0.42}},
            {"type": "interruption", "interruption_event": {"event_id": event_id}},
            {
                "type": "agent_response_correction",
                "agent_response_correction_event": {
                    "original_agent_response": original,
                    "corrected_agent_response": original[: max(1, len(original) // 2)],
                    "event_id": event_id,
                },
            },
            {
                "type": "context_usage",
                "context_usage_event": {
                    "event_id": event_id,
                    "model": "simulated",
                    "context_tokens": 1234,
                    "context_limit_tokens": 128000,
                },
            },
            {
                # Not "end_call": the JS client tears the session down on that one.
                "type": "agent_tool_response",
                "agent_tool_response": {
                    "tool_name": "lookup_invoice",
                    "tool_call_id": "tool_1",
                    "tool_type": "webhook",
                    "is_error": False,
                    "is_called": True,
                    "event_id": event_id,
                },
            },
            {
                "type": "mcp_connection_status",
                "mcp_connection_status": {
                    "integrations": [
                        {
                            "integration_id": "i1",
                            "integration_type": "mcp_server",
                            "is_connected": True,
                            "tool_count": 3,
                        }
                    ]
                },
            },
            {"type": "simulator_future_event", "simulator_future_event": {"note": "a type from the future"}},
        ]
        for event in events:
            await self.send_json(event)

    # -- the connection's life ---------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except ConnectionClosed:
            pass
        finally:
            await self.ws.close()
            await self.ws.wait_closed()
            self._record_close()

    async def _run(self) -> None:
        scenario = self.scenario
        if scenario.fault == "accept_close":
            await self.ws.close(1000)
            return
        if scenario.fault == "close_3000":
            await self.ws.close(3000, "Request error")
            return
        try:
            first = await asyncio.wait_for(self.ws.recv(), self.sim.init_timeout)
        except TimeoutError:
            await self.ws.close(1008, "no conversation_initiation_client_data")
            return
        self.record.frames_received += 1
        message = _parse(first)
        leftover: str | bytes | None = first
        if message is not None and message.get("type") == "conversation_initiation_client_data":
            leftover = None
            placement = _text_only_placement(message)
            self.record.init = message
            self.record.text_only_placement = placement
            self.record.text_only = self.text_only = placement is not None
        if scenario.fault == "override_error":
            await self.send_json(
                {
                    "type": "error",
                    "error_event": {
                        "code": 1008,
                        "error_type": "override_error",
                        "message": _OVERRIDE_ERROR_MESSAGE,
                        "reason": None,
                        "debug_message": None,
                        "details": None,
                    },
                }
            )
            await self.ws.close(1008, _OVERRIDE_ERROR_MESSAGE)
            return

        conversation_id = "conv_" + secrets.token_hex(12)
        self.record.conversation_id = conversation_id
        await self.send_json(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": conversation_id,
                    "agent_output_audio_format": "pcm_16000",
                    "user_input_audio_format": "pcm_16000",
                },
            }
        )
        self.last_activity = time.monotonic()

        tasks = {asyncio.create_task(self._read(leftover)), asyncio.create_task(self._main())}
        keepalive = asyncio.create_task(self._keepalive()) if self.sim.ping_interval else None
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if keepalive is not None:
                tasks.add(keepalive)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, ConnectionClosed):
                raise result

    async def _main(self) -> None:
        scenario = self.scenario
        if scenario.fault in _CLOSE_FAULTS:
            await self.ws.close(*_CLOSE_FAULTS[scenario.fault])
            return
        if scenario.fault == "drop":
            await self._drop()
            return
        if scenario.fault == "malformed":
            for frame in MALFORMED_FRAMES:
                await self.send(frame)
        elif scenario.fault == "huge":
            await self._huge()
        if scenario.flood:
            await self._flood()
            return
        await self._script()
        if scenario.end == "close":
            if scenario.linger:
                await asyncio.sleep(scenario.linger)
            async with self.speaking:
                await self.speaking.wait_for(lambda: self.pending_replies == 0)
                await self.ws.close(1000)
        elif scenario.idle_close_after is None:
            await self.ws.wait_closed()
        else:
            await self._close_when_idle(scenario.idle_close_after)

    async def _script(self) -> None:
        scenario = self.scenario
        if scenario.first_message is not None:
            async with self.speaking:
                await self.agent_reply(scenario.first_message, self.next_turn())
        if scenario.extra_events:
            async with self.speaking:
                await self.extra_events()
        for text in scenario.user_turns:
            await asyncio.sleep(scenario.turn_gap)
            async with self.speaking:
                event_id = self.next_turn()
                await self.user_transcripts(text, event_id)
                await self.agent_reply(f"You said: {text}", event_id)

    async def _close_when_idle(self, idle: float) -> None:
        while True:
            remaining = self.last_activity + idle - time.monotonic()
            if remaining <= 0:
                async with self.speaking:
                    await self.speaking.wait_for(lambda: self.pending_replies == 0)
                    await self.ws.close(1000, "inactivity timeout")
                return
            await asyncio.sleep(remaining)

    async def _drop(self) -> None:
        scenario = self.scenario
        if scenario.first_message is not None:
            await self.agent_reply(scenario.first_message, self.next_turn())
        if scenario.user_turns:
            await self.user_transcripts(scenario.user_turns[0], self.next_turn())
        # abort() discards unsent bytes; let the frames above reach the socket first.
        transport = self.ws.transport
        deadline = time.monotonic() + 1.0
        while transport.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        self.dropped = True
        transport.abort()

    async def _huge(self) -> None:
        event_id = self.next_turn()
        text = "huge " + "x" * (HUGE_TEXT_SIZE - 5)
        await self.send(
            '{"type":"user_transcript","user_transcription_event":{"user_transcript":"'
            + text
            + f'","event_id":{event_id}}}}}'
        )

    async def _flood(self) -> None:
        every = self.scenario.flood_ping_every
        for i in range(1, self.scenario.flood + 1):
            await self.send(
                '{"type":"user_transcript","user_transcription_event":'
                f'{{"user_transcript":"flood {i}","event_id":{i}}}}}'
            )
            if i % every == 0:
                await self.ping()
        await self.ws.close(1000)

    async def _keepalive(self) -> None:
        interval = self.sim.ping_interval
        assert interval is not None
        deadline = self.sim.pong_deadline
        next_ping = time.monotonic() + interval
        while True:
            now = time.monotonic()
            oldest = min(self.outstanding.values(), default=None)
            if oldest is not None and now - oldest >= deadline:
                await self.ws.close(1002, "pong timeout")
                return
            if now >= next_ping:
                await self.ping()
                next_ping = max(next_ping + interval, time.monotonic())
            wake = next_ping
            oldest = min(self.outstanding.values(), default=None)
            if oldest is not None:
                wake = min(wake, oldest + deadline)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    async def _read(self, leftover: str | bytes | None) -> None:
        if leftover is not None:
            await self._on_frame(leftover)
        async for data in self.ws:
            self.record.frames_received += 1
            await self._on_frame(data)

    async def _on_frame(self, data: str | bytes) -> None:
        record = self.record
        message = _parse(data)
        if message is None:
            record.malformed.append(data[:200])
            return
        kind = message.get("type")
        if kind == "pong":
            self._on_pong(message.get("event_id"))
            return
        self.last_activity = time.monotonic()
        if kind is None and "user_audio_chunk" in message:
            record.audio_chunks += 1
        elif kind == "user_message":
            await self._on_user_message(message.get("text"))
        elif kind == "multimodal_message":
            inner = message.get("text")
            if isinstance(inner, dict):
                await self._on_user_message(inner.get("text"))
        elif kind == "user_activity":
            record.user_activities += 1
        elif kind == "contextual_update":
            text = message.get("text")
            record.contextual_updates.append(text if isinstance(text, str) else "")
        else:
            record.other_types.append(str(kind))

    def _on_pong(self, event_id: object) -> None:
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            return
        sent = self.outstanding.pop(event_id, None)
        if sent is None:
            return
        rtt = time.monotonic() - sent
        self.record.pongs.append((event_id, rtt))
        self.last_rtt_ms = round(rtt * 1000)

    async def _on_user_message(self, text: object) -> None:
        # A null text is the schema's "text-only mode signal": nothing to answer.
        if not isinstance(text, str):
            return
        self.record.user_messages.append(text)
        self.pending_replies += 1
        async with self.speaking:
            try:
                await self.agent_reply(f"You said: {text}", self.next_turn())
            finally:
                self.pending_replies -= 1
                self.speaking.notify_all()

    def _record_close(self) -> None:
        if self.close_recorded:
            return
        self.close_recorded = True
        record = self.record
        protocol = self.ws.protocol
        record.closed_at = time.monotonic()
        if self.dropped:
            record.close_code, record.close_reason, record.closed_by = 1006, "", "server"
            return
        if protocol.close_rcvd_then_sent or (protocol.close_rcvd is not None and protocol.close_sent is None):
            frame, record.closed_by = protocol.close_rcvd, "client"
        elif protocol.close_sent is not None:
            frame, record.closed_by = protocol.close_sent, "server"
        else:
            frame, record.closed_by = None, "client"
        record.close_code = frame.code if frame is not None else 1006
        record.close_reason = frame.reason if frame is not None else ""


class SimulatorThread:
    """Run a :class:`Simulator` on its own event loop in a daemon thread.

    For synchronous callers (the official SDK's blocking ``Conversation``) and
    for tests that run ``capture`` in a subprocess::

        with SimulatorThread(script=[scenario_from_name("drop")]) as st:
            run_client(st.http_url)
            st.wait_for(lambda sim: len(sim.connections) == 2, timeout=5)

    Args:
        sim: The simulator to run; built from ``options`` if omitted. Do not
            start it yourself.
        **options: :class:`Simulator` keyword arguments, when ``sim`` is omitted.

    """

    def __init__(self, sim: Simulator | None = None, /, **options: Any) -> None:
        if sim is not None and options:
            raise TypeError("pass either a Simulator or its options, not both")
        self.sim = sim if sim is not None else Simulator(**options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the thread and the simulator; returns once it listens.

        Raises:
            OSError: if the simulator cannot listen (re-raised from its thread).

        """
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), daemon=True, name="simulator"
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the simulator (closing connections with 1001) and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.sim.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.sim.stop()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coroutine`` on the simulator's loop and return its result.

        Raises:
            RuntimeError: if the thread is not running.
            TimeoutError: if it takes longer than ``timeout`` seconds.

        """
        if self._loop is None or self._thread is None:
            coroutine.close()
            raise RuntimeError("the simulator thread is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float) -> None:
        """Block until ``predicate(sim)`` is true; it is evaluated on the simulator's loop.

        Raises:
            TimeoutError: if it is still false after ``timeout`` seconds.

        """
        self.run(self.sim.wait_for(predicate, timeout), timeout + 5.0)

    @property
    def port(self) -> int:
        """The simulator's port."""
        return self.sim.port

    @property
    def http_url(self) -> str:
        """The simulator's :attr:`Simulator.http_url`."""
        return self.sim.http_url

    @property
    def ws_url(self) -> str:
        """The simulator's :attr:`Simulator.ws_url`."""
        return self.sim.ws_url


async def run_simulator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    agent_ids: Collection[str] = ("agent_demo",),
    api_key: str | None = None,
    script: Sequence[Scenario] = (),
    default: Scenario | None = None,
    ping_interval: float | None = 1.0,
    pong_deadline: float = 5.0,
    account: AccountSpec | None = None,
    rest_latency: float = 0.0,
    monitor_enabled: bool = True,
    on_ready: Callable[[Simulator], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or the task is cancelled (Ctrl-C under ``asyncio.run``).

    The arguments other than ``on_ready`` and ``stop`` are :class:`Simulator`'s.

    Args:
        on_ready: Called once listening, e.g. to print :attr:`Simulator.http_url`.
        stop: Set it to stop; ``None`` serves until cancelled.

    """
    sim = Simulator(
        host=host,
        port=port,
        agent_ids=agent_ids,
        api_key=api_key,
        script=script,
        default=default,
        ping_interval=ping_interval,
        pong_deadline=pong_deadline,
        account=account,
        rest_latency=rest_latency,
        monitor_enabled=monitor_enabled,
    )
    async with sim:
        if on_ready is not None:
            on_ready(sim)
        await (stop if stop is not None else asyncio.Event()).wait()
