"""The agent socket: ``/v1/convai/conversation?agent_id=…``, one :class:`Scenario` per handshake attempt.

An aiohttp handler (:meth:`AgentSocket.handle`) that speaks the Agents
WebSocket protocol (``docs/elevenlabs-protocol.md`` §1–§4; event shapes in
:mod:`ingest.simulator.events`): it refuses the handshake as a scenario's fault
or the agent and signature checks say, then plays the scenario, answers every
``user_message``, pings, and enforces pong deadlines. What it sees of each
attempt is a :class:`ConnectionRecord` in :attr:`AgentSocket.records`.

"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web

from ingest.simulator import events
from ingest.simulator.responses import error_response, open_or_refuse, upgrade_required
from ingest.simulator.scenario import CLOSE_FAULTS, HTTP_FAULTS, HUGE_TEXT_SIZE, MALFORMED_FRAMES, Scenario
from ingest.simulator.signed_url import SignedUrls


__all__ = ["MAX_CLIENT_FRAME", "AgentSocket", "ConnectionRecord"]

#: Largest client frame the server accepts, like the official SDKs' ``max_size``.
MAX_CLIENT_FRAME = 16 * 1024 * 1024

_OVERRIDE_ERROR_MESSAGE = "Override for field 'text_only' is not allowed by config."

#: A close the server means to make: code and reason.
_Close = tuple[int, str]


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
        other_types: ``type`` of other client frames (``client_tool_result``,
            ``feedback``, unknown ones, a second init, …).
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


class AgentSocket:
    """The conversation WebSocket: scenarios, checks and records.

    Args:
        agent_ids: Known agents; any other ``agent_id`` is refused with 404.
        signed_urls: When agents are private, the grants a connection must
            redeem (``conversation_signature`` or ``token``; else 403);
            ``None``: agents are public.
        script: Scenarios for handshake attempts 1, 2, … in order.
        default: Scenario for every attempt after the script.
        ping_interval: Seconds between ``ping`` events; the first comes one
            interval after metadata. ``None`` sends none (but a flood's and a
            close-mode conversation's final ping) and enforces no deadline
            between them.
        pong_deadline: Seconds within which each ping's pong must arrive, else
            the server closes 1002 "pong timeout".
        init_timeout: Seconds to wait for the client's first frame, else close 1008.
        close_timeout: Seconds to wait for the client's close frame.
        compression: Whether to negotiate permessage-deflate.

    """

    def __init__(
        self,
        *,
        agent_ids: Collection[str],
        signed_urls: SignedUrls | None,
        script: Sequence[Scenario],
        default: Scenario,
        ping_interval: float | None,
        pong_deadline: float,
        init_timeout: float,
        close_timeout: float,
        compression: bool,
    ) -> None:
        self.agent_ids = frozenset(agent_ids)
        self.signed_urls = signed_urls
        self.script = list(script)
        self.default = default
        self.ping_interval = ping_interval
        self.pong_deadline = pong_deadline
        self.init_timeout = init_timeout
        self.close_timeout = close_timeout
        self.compression = compression
        self.records: list[ConnectionRecord] = []
        self._sessions: set[_Session] = set()

    def _next_scenario(self) -> Scenario:
        position = len(self.records)
        return self.script[position] if position < len(self.script) else self.default

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer a handshake: refuse it, or hold the conversation until it closes."""
        ws = web.WebSocketResponse(
            timeout=self.close_timeout,
            autoclose=False,
            max_msg_size=MAX_CLIENT_FRAME,
            compress=self.compression,
            # The JS client offers "convai" (and "bearer.<token>"); the platform picks "convai".
            protocols=("convai",),
        )
        if not ws.can_prepare(request).ok:
            return upgrade_required()
        scenario = self._next_scenario()
        agent_id = request.query.get("agent_id")
        record = ConnectionRecord(
            index=len(self.records) + 1,
            scenario=scenario.name,
            path=request.raw_path,
            agent_id=agent_id,
            attempted_at=time.monotonic(),
        )
        self.records.append(record)
        refused = await open_or_refuse(ws, request, record, self._refusal(scenario, agent_id, request))
        if refused is not None:
            return refused
        session = _Session(self, ws, request, record, scenario)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
        return ws

    def _refusal(self, scenario: Scenario, agent_id: str | None, request: web.Request) -> web.Response | None:
        # A fault acts like a proxy in front of the service: before any check,
        # so a scripted 503 does not consume a signed URL.
        if scenario.fault in HTTP_FAULTS:
            status = HTTP_FAULTS[scenario.fault]
            return error_response(status, scenario.fault, f"simulated HTTP {status}")
        if agent_id not in self.agent_ids:
            return error_response(404, "agent_not_found", f"Agent {agent_id} not found")
        if self.signed_urls is not None:
            token = request.query.get("conversation_signature") or request.query.get("token")
            if not self.signed_urls.redeem(token, agent_id):
                return error_response(
                    403, "invalid_signature", "Missing, used or expired conversation signature"
                )
        return None

    async def stop(self) -> None:
        """Close every open conversation with 1001 and wait until they are closed."""
        sessions = list(self._sessions)
        for session in sessions:
            session.stop.set()
        await asyncio.gather(*(session.done.wait() for session in sessions))


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


class _Session:
    """One accepted connection, from open to close.

    Every close goes through :meth:`_close`, called only by :meth:`run` once
    the tasks of the conversation are done: a task that wants the connection
    closed returns the code and reason (or ``None`` when it is over anyway).

    """

    def __init__(
        self,
        socket: AgentSocket,
        ws: web.WebSocketResponse,
        request: web.Request,
        record: ConnectionRecord,
        scenario: Scenario,
    ) -> None:
        self.socket = socket
        self.ws = ws
        self.request = request
        self.record = record
        self.scenario = scenario
        self.text_only = False
        self.turn = 0
        self.ping_id = 0
        self.outstanding: dict[int, float] = {}
        self.pong_arrived = asyncio.Event()
        self.last_rtt_ms: int | None = None
        self.last_activity = time.monotonic()
        self.pending_replies = 0
        # Held while emitting one turn, so the frames of two turns never interleave.
        self.speaking = asyncio.Condition()
        # Set (under speaking) once the server decided to close: later messages get no reply.
        self.closing = False
        self.stop = asyncio.Event()
        self.done = asyncio.Event()

    # -- sending ---------------------------------------------------------------------

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)
        self.record.frames_sent += 1

    async def send_all(self, frames: Sequence[dict[str, Any]]) -> None:
        for frame in frames:
            await self.send(orjson.dumps(frame).decode())

    def next_turn(self) -> int:
        self.turn += 1
        return self.turn

    async def ping(self) -> None:
        self.ping_id += 1
        self.outstanding[self.ping_id] = time.monotonic()
        self.record.pings_sent += 1
        await self.send_all([events.ping(self.ping_id, self.last_rtt_ms)])

    async def agent_reply(self, text: str, event_id: int) -> None:
        await self.send_all(events.agent_reply(text, event_id, text_only=self.text_only))

    # -- the connection's life ---------------------------------------------------------

    async def run(self) -> None:
        try:
            close = await self._first_of(self._open)
            if close is not None:
                await self._close(*close)
        finally:
            self._record_close(1006, "", "client")
            self.record.closed_at = time.monotonic()
            self.done.set()

    async def _first_of(self, *tasks: Callable[[], Awaitable[_Close | None]]) -> _Close | None:
        """Run ``tasks`` and a stop watcher until the first ends; cancel the rest; return its close.

        A connection that went away (a send on a closing transport) ends its
        task with ``None``: nothing is left to close.

        """

        async def stopped() -> _Close | None:
            await self.stop.wait()
            return 1001, ""

        running = [asyncio.ensure_future(task()) for task in (*tasks, stopped)]
        try:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in running:
                task.cancel()
            results = await asyncio.gather(*running, return_exceptions=True)
        first = next(task for task in running if task in done)
        result = results[running.index(first)]
        for other in results:
            if isinstance(other, Exception) and not isinstance(other, ConnectionError):
                raise other
        return None if isinstance(result, BaseException) else result

    async def _close(self, code: int, reason: str) -> None:
        self._record_close(code, reason, "server")
        await self.ws.close(code=code, message=reason.encode())

    def _record_close(self, code: int, reason: str, by: Literal["server", "client"]) -> None:
        """Record how the connection ended; the first to say wins."""
        if self.record.closed_by is None:
            self.record.close_code, self.record.close_reason, self.record.closed_by = code, reason, by

    async def _open(self) -> _Close | None:
        scenario = self.scenario
        if scenario.fault == "accept_close":
            return 1000, ""
        if scenario.fault == "close_3000":
            return 3000, "Request error"
        try:
            first = await asyncio.wait_for(self.ws.receive(), self.socket.init_timeout)
        except TimeoutError:
            return 1008, "no conversation_initiation_client_data"
        if first.type is WSMsgType.CLOSE:
            return await self._client_closed(first)
        if first.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            self._record_close(1006, "", "client")
            return None
        self.record.frames_received += 1
        message = _parse(first.data)
        leftover: str | bytes | None = first.data
        if message is not None and message.get("type") == "conversation_initiation_client_data":
            leftover = None
            placement = _text_only_placement(message)
            self.record.init = message
            self.record.text_only_placement = placement
            self.record.text_only = self.text_only = placement is not None
        if scenario.fault == "override_error":
            await self.send_all([events.error(1008, "override_error", _OVERRIDE_ERROR_MESSAGE)])
            return 1008, _OVERRIDE_ERROR_MESSAGE

        conversation_id = "conv_" + secrets.token_hex(12)
        self.record.conversation_id = conversation_id
        await self.send_all([events.metadata(conversation_id)])
        self.last_activity = time.monotonic()
        tasks: list[Callable[[], Awaitable[_Close | None]]] = [lambda: self._read(leftover), self._main]
        if self.socket.ping_interval:
            tasks.append(self._keepalive)
        return await self._first_of(*tasks)

    async def _client_closed(self, message: Any) -> _Close | None:
        """The client's close frame arrived: record it and echo its code and reason."""
        code = message.data if isinstance(message.data, int) and 1000 <= message.data < 5000 else 1000
        self._record_close(code, message.extra or "", "client")
        return code, message.extra or ""

    # -- the scenario --------------------------------------------------------------------

    async def _main(self) -> _Close | None:
        scenario = self.scenario
        if scenario.fault in CLOSE_FAULTS:
            return CLOSE_FAULTS[scenario.fault]
        if scenario.fault == "drop":
            await self._drop()
            return None
        if scenario.fault == "malformed":
            for frame in MALFORMED_FRAMES:
                await self.send(frame)
        elif scenario.fault == "huge":
            await self.send(events.huge_frame(self.next_turn(), HUGE_TEXT_SIZE))
        if scenario.flood:
            return await self._flood()
        await self._script()
        if scenario.end == "wait":
            if scenario.idle_close_after is None:
                await asyncio.Event().wait()  # until the client closes
            return await self._close_when_idle(scenario.idle_close_after)  # type: ignore[arg-type]
        if scenario.linger:
            await asyncio.sleep(scenario.linger)
        if scenario.final_ping:
            async with self.speaking:
                await self.ping()
            if not await self._pongs_within(self.socket.pong_deadline):
                return 1002, "pong timeout"
        return await self._closing(1000, "")

    async def _closing(self, code: int, reason: str) -> _Close:
        """Decide to close once every pending reply is sent: later messages get none."""
        async with self.speaking:
            await self.speaking.wait_for(lambda: self.pending_replies == 0)
            self.closing = True
        return code, reason

    async def _script(self) -> None:
        scenario = self.scenario
        if scenario.first_message is not None:
            async with self.speaking:
                await self.agent_reply(scenario.first_message, self.next_turn())
        if scenario.extra_events or scenario.every_event:
            async with self.speaking:
                if scenario.extra_events:
                    await self.send_all(events.extra_events(self.turn, scenario.first_message))
                if scenario.every_event:
                    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    await self.send_all(events.every_event(self.turn, timestamp=now))
        for text in scenario.user_turns:
            await asyncio.sleep(scenario.turn_gap)
            async with self.speaking:
                event_id = self.next_turn()
                await self.send_all(events.user_transcripts(text, event_id))
                await self.agent_reply(f"You said: {text}", event_id)

    async def _close_when_idle(self, idle: float) -> _Close:
        while (remaining := self.last_activity + idle - time.monotonic()) > 0:
            await asyncio.sleep(remaining)
        return await self._closing(1000, "inactivity timeout")

    async def _drop(self) -> None:
        scenario = self.scenario
        if scenario.first_message is not None:
            await self.agent_reply(scenario.first_message, self.next_turn())
        if scenario.user_turns:
            await self.send_all(events.user_transcripts(scenario.user_turns[0], self.next_turn()))
        # abort() discards unsent bytes; let the frames above reach the socket first.
        transport = self.request.transport
        assert transport is not None
        deadline = time.monotonic() + 1.0
        while transport.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        self._record_close(1006, "", "server")
        transport.abort()

    async def _flood(self) -> _Close:
        every = self.scenario.flood_ping_every
        for i in range(1, self.scenario.flood + 1):
            await self.send(events.flood_frame(i))
            if i % every == 0:
                await self.ping()
        return 1000, ""

    # -- keepalive -----------------------------------------------------------------------

    async def _pongs_within(self, deadline: float) -> bool:
        """Wait until every outstanding ping is answered; ``False`` once one is ``deadline`` late."""
        while self.outstanding:
            remaining = min(self.outstanding.values()) + deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pong_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pong_arrived.wait(), remaining)
        return True

    async def _keepalive(self) -> _Close:
        interval = self.socket.ping_interval
        assert interval is not None
        deadline = self.socket.pong_deadline
        next_ping = time.monotonic() + interval
        while True:
            now = time.monotonic()
            oldest = min(self.outstanding.values(), default=None)
            if oldest is not None and now - oldest >= deadline:
                return 1002, "pong timeout"
            if now >= next_ping:
                await self.ping()
                next_ping = max(next_ping + interval, time.monotonic())
            wake = next_ping
            oldest = min(self.outstanding.values(), default=None)
            if oldest is not None:
                wake = min(wake, oldest + deadline)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    # -- receiving -----------------------------------------------------------------------

    async def _read(self, leftover: str | bytes | None) -> _Close | None:
        if leftover is not None:
            await self._on_frame(leftover)
        while True:
            message = await self.ws.receive()
            if message.type is WSMsgType.CLOSE:
                return await self._client_closed(message)
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                self._record_close(1006, "", "client")  # gone without a close frame
                return None
            self.record.frames_received += 1
            await self._on_frame(message.data)

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
        self.pong_arrived.set()

    async def _on_user_message(self, text: object) -> None:
        # A null text is the schema's "text-only mode signal": nothing to answer.
        if not isinstance(text, str):
            return
        self.record.user_messages.append(text)
        self.pending_replies += 1
        async with self.speaking:
            try:
                if not self.closing:
                    await self.agent_reply(f"You said: {text}", self.next_turn())
            finally:
                self.pending_replies -= 1
                self.speaking.notify_all()
