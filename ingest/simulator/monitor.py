"""The monitor socket: ``/v1/convai/conversations/{id}/monitor``, live conversations of the account as they happen.

Enterprise plans only on the platform (``docs/elevenlabs-protocol.md`` §6c):
header ``xi-api-key``, and the conversation must be active. A session follows
the sequence of the docs' "OpenTelemetry traces" page (Monitoring WebSocket,
"Session protocol"): ``{"type":"connected"}``, then the cached history (the
last :data:`HISTORY_SIZE` events of the conversation so far, audio left out),
then ``{"type":"history_complete"}``, then live events as they happen. The
events are the agent socket's (``user_transcript``, ``agent_response``,
``audio``: :func:`ingest.simulator.events.monitor_frames`); pings, VAD scores
and turn probabilities are never monitored.

A live conversation starts playing when its first monitor attaches (after
:attr:`~ingest.simulator.account.AccountSpec.live_history` entries that had
already happened), one entry every
:attr:`~ingest.simulator.account.AccountSpec.live_turn_gap` seconds, to every
monitor attached; when it ends, each is closed 1000 and the conversation is
``processing``. Control commands a client sends are recorded, not acted on.

"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web

from ingest.simulator import events
from ingest.simulator.account import Account
from ingest.simulator.responses import api_key_ok, error_response, open_or_refuse, upgrade_required


__all__ = ["CONNECTED", "HISTORY_COMPLETE", "HISTORY_SIZE", "MonitorRecord", "MonitorSocket"]

#: How many past events a monitor attaching to a conversation is replayed.
HISTORY_SIZE = 100
CONNECTED = '{"type":"connected"}'
HISTORY_COMPLETE = '{"type":"history_complete"}'

_NOT_ENABLED = "Real-time monitoring is not enabled for this agent"


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
        frames_sent: Frames sent: ``connected``, history, ``history_complete``
            and live events, audio included.
        audio_sent: ``audio`` frames among them.
        history_sent: History events replayed before ``history_complete``.
        commands: ``type`` of each control command the client sent.
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
    history_sent: int = 0
    commands: list[str] = field(default_factory=list)
    close_code: int | None = None


class _Live:
    """One conversation being played: its cached history and the queues of its monitors."""

    def __init__(self) -> None:
        self.history: deque[str] = deque(maxlen=HISTORY_SIZE)
        self.queues: dict[asyncio.Queue[str | None], MonitorRecord] = {}

    def attach(self, record: MonitorRecord) -> asyncio.Queue[str | None]:
        """A new monitor's queue: ``connected``, the history, ``history_complete``; live events follow."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        for frame in (CONNECTED, *self.history, HISTORY_COMPLETE):
            queue.put_nowait(frame)
        record.history_sent = len(self.history)
        self.queues[queue] = record
        return queue

    def publish(self, frame: str, *, audio: bool) -> None:
        if not audio:
            self.history.append(frame)
        for queue in self.queues:
            queue.put_nowait(frame)

    def end(self) -> None:
        for queue in self.queues:
            queue.put_nowait(None)


class MonitorSocket:
    """The monitor socket over an account's live conversations.

    Args:
        account: The account whose ``in-progress`` conversations can be monitored.
        api_key: With it set, the handshake's ``xi-api-key`` must equal it
            (else 401); without, the header is still required (any value).
        enabled: Whether monitoring is enabled; if not, it is refused as ``refusal`` says.
        refusal: ``"http_403"`` (refuse the handshake) or ``"close_1008"``
            (accept, then close 1008).
        close_timeout: Seconds to wait for the client's close frame.

    Attributes:
        records: Every handshake attempt, in order.

    """

    def __init__(
        self,
        account: Account,
        *,
        api_key: str | None,
        enabled: bool,
        refusal: Literal["http_403", "close_1008"],
        close_timeout: float,
    ) -> None:
        self.account = account
        self.api_key = api_key
        self.enabled = enabled
        self.refusal = refusal
        self.close_timeout = close_timeout
        self.records: list[MonitorRecord] = []
        self._live: dict[str, _Live] = {}
        self._players: set[asyncio.Task[None]] = set()
        self._sockets: dict[web.WebSocketResponse, MonitorRecord] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer a monitor handshake: refuse it, or stream the conversation until it ends."""
        ws = web.WebSocketResponse(timeout=self.close_timeout, autoclose=False)
        if not ws.can_prepare(request).ok:
            return upgrade_required()
        conversation_id = request.match_info["conversation_id"]
        record = MonitorRecord(
            index=len(self.records) + 1,
            conversation_id=conversation_id,
            path=request.raw_path,
            attempted_at=time.monotonic(),
        )
        self.records.append(record)
        refused = await open_or_refuse(ws, request, record, self._refusal(request, conversation_id))
        if refused is not None:
            return refused
        self._sockets[ws] = record
        try:
            if not self.enabled:
                record.close_code = 1008
                await ws.close(code=1008, message=_NOT_ENABLED.encode())
            else:
                await self._session(ws, record)
        finally:
            self._sockets.pop(ws, None)
            record.closed_at = time.monotonic()
        return ws

    def _refusal(self, request: web.Request, conversation_id: str) -> web.Response | None:
        if not api_key_ok(request, self.api_key, required=True):
            return error_response(401, "invalid_api_key", "Invalid API key")
        if not self.enabled and self.refusal == "http_403":
            return error_response(
                403,
                "monitoring_not_enabled",
                "Real-time monitoring is not enabled for this agent or workspace",
            )
        if self.enabled and not self.account.is_live(conversation_id):
            return error_response(404, "conversation_not_active", "The conversation is not active")
        return None

    async def _session(self, ws: web.WebSocketResponse, record: MonitorRecord) -> None:
        live = self._live.get(record.conversation_id)
        if live is None:
            live = self._live[record.conversation_id] = _Live()
            self._start(record.conversation_id, live)
        queue = live.attach(record)
        sender = asyncio.ensure_future(self._send(ws, record, queue))
        reader = asyncio.ensure_future(self._read(ws, record))
        try:
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.queues.pop(queue, None)
            for task in (sender, reader):
                task.cancel()
            results = await asyncio.gather(sender, reader, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, ConnectionError):
                raise result
        if record.close_code is None:
            record.close_code = 1006  # the client went away without a close frame
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.close(code=record.close_code if record.close_code != 1006 else 1000)

    def _start(self, conversation_id: str, live: _Live) -> None:
        """Start playing a conversation: its first ``live_history`` entries have already happened."""
        entries = self.account.start_live(conversation_id)
        already = min(self.account.spec.live_history, len(entries))
        for position, entry in enumerate(entries[:already], start=1):
            self.account.played(conversation_id)
            for frame in events.monitor_frames(entry, position):
                live.publish(frame, audio=frame.startswith('{"type":"audio"'))
        player = asyncio.create_task(self._play(conversation_id, live, entries, already))
        self._players.add(player)
        player.add_done_callback(self._players.discard)

    async def _play(
        self, conversation_id: str, live: _Live, entries: list[dict[str, Any]], start: int
    ) -> None:
        """Play the rest of a live conversation to its monitors, then end it."""
        gap = self.account.spec.live_turn_gap
        for position, entry in enumerate(entries[start:], start=start + 1):
            await asyncio.sleep(gap)
            self.account.played(conversation_id)
            for frame in events.monitor_frames(entry, position):
                live.publish(frame, audio=frame.startswith('{"type":"audio"'))
        self.account.finish_live(conversation_id)
        self._live.pop(conversation_id, None)
        live.end()

    async def _send(
        self, ws: web.WebSocketResponse, record: MonitorRecord, queue: asyncio.Queue[str | None]
    ) -> None:
        while (frame := await queue.get()) is not None:
            await ws.send_str(frame)
            record.frames_sent += 1
            record.audio_sent += frame.startswith('{"type":"audio"')
        record.close_code = 1000

    async def _read(self, ws: web.WebSocketResponse, record: MonitorRecord) -> None:
        while True:
            message = await ws.receive()
            if message.type is WSMsgType.CLOSE:
                record.close_code = message.data if isinstance(message.data, int) else 1000
                return
            if message.type is not WSMsgType.TEXT:
                return
            with contextlib.suppress(orjson.JSONDecodeError):
                command = orjson.loads(message.data)
                record.commands.append(str(command.get("type") if isinstance(command, dict) else command))

    async def stop(self) -> None:
        """Stop the players and close every monitor with 1001."""
        for player in list(self._players):
            player.cancel()
        for ws, record in list(self._sockets.items()):
            if record.close_code is None:
                record.close_code = 1001
            with contextlib.suppress(ConnectionError):
                await ws.close(code=1001)
