"""The Agents WebSocket client: one conversation per connection, logged frame by frame.

An asyncio shell around pure pieces: :mod:`ingest.log.frames` (what a frame is,
what to answer), :mod:`ingest.log.envelope` (the line), :mod:`ingest.sources.reconnect`
(what an end means, how long to wait). Per received frame, in order:

1. audio frames are counted and dropped;
2. the line is appended to the log: the lines of a burst (the frames one
   read from the socket gave) are written together, in one ``write``
   syscall, before the loop waits for the network again; no await;
3. a ``ping`` is answered with its ``pong`` at once, after a ``write`` of
   every line so far.

So when a pong leaves, every frame received before its ping is already in the
OS. Nothing slow (projection, fsync under ``interval``) runs on this path.

"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from ingest.errors import AuthError, ConfigError, LogWriteError
from ingest.log.envelope import Origin
from ingest.log.frames import ErrorEvent, Frame, conversation_id_of, error_of, inspect_frame, pong_for
from ingest.log.writer import LogWriter
from ingest.observe.histogram import Histogram
from ingest.sources.reconnect import Backoff, Ended, ReconnectPolicy, Verdict, cause_of, classify
from ingest.sources.urls import initiation_frame, public_ws_url, signed_url_endpoint


__all__ = ["CAPTURE_SOURCE", "SOURCE", "AgentClient", "AgentConfig", "IngestSummary", "run_agent"]

log = logging.getLogger("capture.ingest")

SOURCE = "agent_ws"
# Lines capture writes about its own sessions (how a connection ended).
CAPTURE_SOURCE = "capture"
MAX_FRAME_BYTES = 16 * 1024 * 1024

# After the last typed line was sent, how long to wait for the agent's reply
# before ending the conversation.
_REPLY_TIMEOUT = 15.0


@dataclass(frozen=True)
class AgentConfig:
    """What to connect to and how to open each conversation.

    Attributes:
        agent_id: The agent to talk to.
        base_url: The API host (``https://api.elevenlabs.io``, a residency host,
            or the simulator); http→ws and https→wss for the socket.
        api_key: With a key, each connection uses a fresh signed URL; without
            one, the public conversation URL. Never logged or printed.
        text_only: Ask for a text-only conversation (no audio both ways).
        user_id: Sent in the first frame.
        dynamic_variables: Sent in the first frame.
        max_frame_bytes: The largest frame accepted (websockets' default is 1 MiB).
        open_timeout: Seconds allowed for the signed-URL call and the handshake.

    """

    agent_id: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    text_only: bool = True
    user_id: str | None = None
    dynamic_variables: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    max_frame_bytes: int = MAX_FRAME_BYTES
    open_timeout: float = 10.0


@dataclass
class IngestSummary:
    """Counters over the life of one :meth:`AgentClient.run`.

    The metrics endpoint reads them while the client runs. ``connected`` is
    whether a conversation's socket is open, since ``state_since``
    (:func:`time.monotonic`); ``reconnects`` counts the ends of connections
    that led to another, by :func:`~ingest.sources.reconnect.cause_of`;
    ``pong_seconds`` times each pong, from its ping's arrival to its sending.

    """

    conversations: int = 0
    connections: int = 0
    frames_logged: int = 0
    audio_skipped: int = 0
    pongs_sent: int = 0
    user_messages_sent: int = 0
    connected: bool = False
    state_since: float = field(default_factory=time.monotonic)
    reconnects: dict[str, int] = field(default_factory=dict)
    pong_seconds: Histogram = field(default_factory=Histogram)

    def set_connected(self, connected: bool) -> None:
        """Record that the socket opened or closed."""
        self.connected = connected
        self.state_since = time.monotonic()


async def run_agent(
    writer: LogWriter,
    config: AgentConfig,
    stop: asyncio.Event,
    *,
    policy: ReconnectPolicy | None = None,
    user_lines: AsyncIterator[str] | None = None,
    max_conversations: int | None = None,
    summary: IngestSummary | None = None,
) -> IngestSummary:
    """Hold conversations with the agent into ``writer``'s log until stopped or done.

    A source for :func:`ingest.sources.run.run_sources`: it returns after
    ``max_conversations``, at the end of ``user_lines``, or soon after
    ``stop`` is set (the connection closed with 1000). See :class:`AgentClient`
    for the arguments; ``summary`` is the counters to update (a fresh one if
    omitted), for a caller that reads them while it runs.

    Raises:
        AuthError: the server refused the key, the agent or an override.
        ConfigError: the base URL is not usable.
        LogWriteError: the log could not be written; nothing is retried.

    """
    client = AgentClient(
        config,
        writer,
        policy=policy,
        user_lines=user_lines,
        max_conversations=max_conversations,
        stop=stop,
        summary=summary,
    )
    return await client.run()


@dataclass
class _Connection:
    """Per-connection state of the receive loop."""

    connection_id: str
    origin_in: Origin
    frames: int = 0
    audio: int = 0
    last_error: ErrorEvent | None = None
    replies: int = 0
    user_turns: int = 0
    reply_seen: asyncio.Event = field(default_factory=asyncio.Event)
    conversation_started: asyncio.Event = field(default_factory=asyncio.Event)


class _Refused(Exception):
    def __init__(self, status: int, stage: str) -> None:
        self.status = status
        self.stage = stage


class AgentClient:
    """Holds conversations with one agent and appends what flows to a log.

    Args:
        config: What to connect to.
        writer: The open log; the client only appends.
        policy: Reconnect timing.
        user_lines: Typed user text to send (``--input``); each line is logged
            (direction ``out``) and then sent as a ``user_message``. When it is
            exhausted, the conversation ends and :meth:`run` returns.
        max_conversations: Return after this many conversations.
        stop: Set it to close the current connection with 1000 and return.

    """

    def __init__(
        self,
        config: AgentConfig,
        writer: LogWriter,
        *,
        policy: ReconnectPolicy | None = None,
        user_lines: AsyncIterator[str] | None = None,
        max_conversations: int | None = None,
        stop: asyncio.Event | None = None,
        summary: IngestSummary | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.policy = policy or ReconnectPolicy.from_env()
        self.max_conversations = max_conversations
        self.stop = stop or asyncio.Event()
        self.summary = summary if summary is not None else IngestSummary()
        self._lines = user_lines
        self._pending_line: str | None = None
        self._input_done = user_lines is None
        self._input_exhausted = False

    async def run(self) -> IngestSummary:
        """Hold conversations until stopped, done, or a fatal error.

        Raises:
            AuthError: the server refused the key, the agent or an override.
            ConfigError: the base URL is not usable.
            LogWriteError: the log could not be written; nothing is retried.

        """
        backoff = Backoff(self.policy)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.open_timeout)
        ) as http:
            while not self.stop.is_set():
                ended = await self._one_connection(http)
                decision = classify(ended, self.policy, stage=self._stage(ended))
                if decision.verdict is Verdict.FATAL:
                    raise AuthError(decision.reason)
                if ended.stopped or self.stop.is_set() or self._finished():
                    break
                cause = cause_of(ended, decision)
                self.summary.reconnects[cause] = self.summary.reconnects.get(cause, 0) + 1
                delay = backoff.next_delay(decision, ended)
                if decision.verdict is Verdict.FAILURE:
                    verb = "connection failed" if not ended.opened else "conversation failed"
                    log.warning("%s (%s); reconnecting in %.1f s", verb, decision.reason, delay)
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except TimeoutError:
                    pass
        return self.summary

    def _finished(self) -> bool:
        if self.max_conversations is not None and self.summary.conversations >= self.max_conversations:
            return True
        return self._input_exhausted and self._pending_line is None

    @staticmethod
    def _stage(ended: Ended) -> str:
        return "connection" if ended.opened else "signed-URL request or handshake"

    async def _connect_url(self, http: aiohttp.ClientSession) -> str:
        cfg = self.config
        if not cfg.api_key:
            return public_ws_url(cfg.base_url, cfg.agent_id)
        endpoint = signed_url_endpoint(cfg.base_url, cfg.agent_id)
        async with http.get(endpoint, headers={"xi-api-key": cfg.api_key}) as response:
            if response.status != 200:
                raise _Refused(response.status, "signed-URL request")
            body: Any = orjson.loads(await response.read())
        url = body.get("signed_url") if isinstance(body, dict) else None
        if not isinstance(url, str):
            raise ConnectionError("the signed-URL response has no signed_url")
        return url

    async def _one_connection(self, http: aiohttp.ClientSession) -> Ended:
        try:
            url = await self._connect_url(http)
            log.debug("connecting to %s", url)  # the CLI's process log redacts a signed URL's signature
            websocket = await connect(
                url,
                max_size=self.config.max_frame_bytes,
                open_timeout=self.config.open_timeout,
                close_timeout=5,
                user_agent_header="capture (ElevenLabs Agents capture)",
            )
        except _Refused as exc:
            return Ended(opened=False, http_status=exc.status)
        except InvalidStatus as exc:
            return Ended(opened=False, http_status=exc.response.status_code)
        except InvalidURI as exc:
            raise ConfigError(f"the conversation URL is not valid: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake, aiohttp.ClientError, ConnectionError) as exc:
            return Ended(opened=False, failure=_describe(exc))
        except ValueError as exc:  # orjson or a malformed URL from the server
            return Ended(opened=False, failure=f"bad answer from the server: {exc}")
        self.summary.connections += 1
        self.summary.set_connected(True)
        try:
            return await self._converse(websocket)
        finally:
            self.summary.set_connected(False)

    async def _converse(self, websocket: ClientConnection) -> Ended:
        opened = time.monotonic()
        connection_id = uuid.uuid4().hex
        conn = _Connection(
            connection_id,
            Origin(SOURCE, "in", self.config.agent_id, connection_id, None),
        )
        receiving = asyncio.ensure_future(self._receive(websocket, conn))
        tasks: set[asyncio.Future[Any]] = {receiving}
        stopping = asyncio.ensure_future(self.stop.wait())
        tasks.add(stopping)
        sending: asyncio.Future[None] | None = None
        try:
            init = orjson.dumps(
                initiation_frame(
                    text_only=self.config.text_only,
                    user_id=self.config.user_id,
                    dynamic_variables=self.config.dynamic_variables,
                )
            ).decode()
            self._log_out(conn, init)
            await websocket.send(init)
            if not self._input_done:
                sending = asyncio.ensure_future(self._send_lines(websocket, conn))
                tasks.add(sending)
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if receiving in done:
                    break
                if stopping in done:
                    await websocket.close(1000, "capture is stopping")
                    break
                if sending is not None and sending in done:
                    tasks.discard(sending)
                    sending.result()
                    if self._input_exhausted and self._pending_line is None:
                        await websocket.close(1000, "input finished")
        except ConnectionClosed:
            pass
        finally:
            for task in (stopping, sending):
                if task is not None and not task.done():
                    task.cancel()
            await websocket.close(1000)
            try:
                await receiving
            except LogWriteError:
                raise
            except ConnectionClosed:
                pass
        lived = time.monotonic() - opened
        code = websocket.close_code
        reason = websocket.close_reason
        self._log_closed(conn, websocket, lived)
        if conn.origin_in.conversation_id is not None:
            self.summary.conversations += 1
        log.info(
            "conversation %s ended after %.1f s: %d frames logged, %d audio skipped; close %s%s",
            conn.origin_in.conversation_id or "(none)",
            lived,
            conn.frames,
            conn.audio,
            code if code is not None else "-",
            f" {reason!r}" if reason else "",
        )
        return Ended(
            opened=True,
            lived=lived,
            close_code=code if code is not None else 1006,
            close_reason=reason,
            error=conn.last_error,
            stopped=self.stop.is_set(),
            user_turns=conn.user_turns,
        )

    def _log_closed(self, conn: _Connection, websocket: ClientConnection, lived: float) -> None:
        """Append capture's own record of how the connection ended (source ``capture``)."""
        protocol = websocket.protocol
        if protocol.close_rcvd is None:
            closed_by = "client" if protocol.close_sent is not None else "network"
        else:
            closed_by = "server" if protocol.close_rcvd_then_sent is not False else "client"
        record = {
            "type": "connection_closed",
            "close_code": websocket.close_code if websocket.close_code is not None else 1006,
            "close_reason": websocket.close_reason or "",
            "closed_by": closed_by,
            "duration_s": round(lived, 3),
            "frames": conn.frames,
            "audio_skipped": conn.audio,
        }
        origin = Origin(
            CAPTURE_SOURCE, "in", self.config.agent_id, conn.connection_id, conn.origin_in.conversation_id
        )
        self.writer.append(origin, inspect_frame(orjson.dumps(record).decode()))

    async def _receive(self, websocket: ClientConnection, conn: _Connection) -> None:
        """The receive path: log, then answer; ends when the connection closes."""
        writer = self.writer
        summary = self.summary
        loop = asyncio.get_running_loop()

        def flush() -> None:
            try:
                writer.flush()
            except LogWriteError:
                pass  # the writer keeps it: the next append raises it and ends the connection

        try:
            while True:
                data = await websocket.recv()
                received_at = time.time_ns()
                frame = inspect_frame(data)
                if frame.is_audio:
                    conn.audio += 1
                    summary.audio_skipped += 1
                    continue
                if conn.origin_in.conversation_id is None:
                    conversation_id = conversation_id_of(frame)
                    if conversation_id is not None:
                        conn.origin_in = Origin(
                            SOURCE, "in", self.config.agent_id, conn.connection_id, conversation_id
                        )
                        conn.conversation_started.set()
                        log.info(
                            "conversation %s connected (agent %s)", conversation_id, self.config.agent_id
                        )
                # The frames of a burst go to the log in one write, once this
                # loop is about to wait for the network again (call_soon runs
                # then): a write per frame was the receive path's largest cost.
                writer.append(conn.origin_in, frame, received_at, defer=True)
                if writer.deferred == 1:  # the first of a burst: flush once the loop would wait
                    loop.call_soon(flush)
                conn.frames += 1
                summary.frames_logged += 1
                pong = pong_for(frame)
                if pong is not None:
                    writer.flush()
                    # Once the server's close frame is parsed, frames it sent
                    # before it may still be queued: keep receiving them, and
                    # don't send (websockets would wait for the close to finish).
                    if websocket.state is State.OPEN:
                        try:
                            await websocket.send(pong)
                            summary.pongs_sent += 1
                            summary.pong_seconds.observe((time.time_ns() - received_at) / 1e9)
                        except ConnectionClosed:
                            pass
                    continue
                self._observe(frame, conn)
        except ConnectionClosed:
            return

    def _observe(self, frame: Frame, conn: _Connection) -> None:
        if frame.type == "agent_response":
            conn.replies += 1
            conn.reply_seen.set()
            return
        if frame.type == "user_transcript":
            conn.user_turns += 1
            return
        error = error_of(frame)
        if error is not None:
            conn.last_error = error
            log.warning("the server sent an error: %s", error)

    def _log_out(self, conn: _Connection, text: str) -> None:
        origin = Origin(
            SOURCE, "out", self.config.agent_id, conn.connection_id, conn.origin_in.conversation_id
        )
        self.writer.append(origin, inspect_frame(text))

    async def _next_line(self) -> str | None:
        if self._pending_line is not None:
            return self._pending_line
        assert self._lines is not None
        while True:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                self._input_exhausted = True
                return None
            line = line.rstrip("\r\n")
            if line.strip():
                self._pending_line = line
                return line

    async def _send_lines(self, websocket: ClientConnection, conn: _Connection) -> None:
        """Send typed lines one at a time, each after the agent answered the previous one."""
        await conn.conversation_started.wait()
        while True:
            line = await self._next_line()
            if line is None:
                break
            conn.reply_seen.clear()
            message = orjson.dumps({"type": "user_message", "text": line}).decode()
            # Logged before it is sent: the server never echoes typed text.
            self._log_out(conn, message)
            self._pending_line = None
            await websocket.send(message)
            self.summary.user_messages_sent += 1
            conn.user_turns += 1
            try:
                await asyncio.wait_for(conn.reply_seen.wait(), _REPLY_TIMEOUT)
            except TimeoutError:
                log.warning("no agent reply within %.0f s of a typed message", _REPLY_TIMEOUT)
        self._input_done = True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
