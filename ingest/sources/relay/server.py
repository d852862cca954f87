"""The relay: between a team's clients and the platform, every frame logged both ways before it is forwarded.

An asyncio shell (aiohttp's server for the clients, websockets' client
upstream) around pure pieces: :mod:`~ingest.sources.relay.access` (who may use
it), :mod:`~ingest.sources.relay.tokens` (single-use tokens for signed URLs),
:mod:`~ingest.sources.relay.urls`, :mod:`~ingest.sources.relay.session` (what to
log of a frame, how a connection ended). One port serves what the official
SDKs use:

* ``GET /v1/convai/conversation/get-signed-url?agent_id=…`` fetches a signed
  URL upstream with the relay's own API key and answers a relay URL carrying
  a single-use token instead (the key and the signed URL never reach clients);
* the WebSocket ``/v1/convai/conversation?agent_id=…`` connects upstream
  first (with the signed URL a token stands for, or the public URL without a
  token), and only then accepts the client: a refused upstream handshake
  reaches the client as the platform's own HTTP status and body.

Per frame, in each direction, in order: an audio frame is counted; any other
frame is appended to the log (one ``write`` syscall, no await); then the frame
is forwarded as it came. Nothing else (no fsync under ``interval``, no
projection) runs on this path, and pings are forwarded like any frame: the
client answers them, not the relay.

How a connection ends is passed on: a close frame reaches the other side with
its code and reason (a close without a code, from the platform, as 1000); a
dropped TCP connection is dropped on the other side too. Then ``capture``'s own
``connection_closed`` record is logged.

Bounded: each side's frames wait in a bounded queue (websockets' ``max_queue``
frames, aiohttp's 64 KiB), so a side that does not read stops the relay
reading the other; a frame that cannot be forwarded within
``stall_timeout`` closes the connection with a logged reason instead of
waiting longer.

"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI, ProtocolError
from websockets.typing import Origin, Subprotocol
from yarl import URL

from ingest.errors import ConfigError, LogWriteError
from ingest.log.writer import LogWriter
from ingest.sources.relay.access import Refusal, busy, invalid_signature, signed_url_refusal, socket_refusal
from ingest.sources.relay.config import RelayConfig
from ingest.sources.relay.session import ClosedBy, RelaySession
from ingest.sources.relay.tokens import TokenTable
from ingest.sources.relay.urls import (
    CONVERSATION_PATH,
    SIGNED_URL_PATHS,
    relay_base_url,
    relay_conversation_url,
    token_of,
    upstream_public_url,
    upstream_signed_url,
)
from ingest.sources.urls import http_base_url


__all__ = ["RelayReport", "run_relay"]

log = logging.getLogger("capture.relay")
# websockets logs handshakes at DEBUG, and the upstream URL holds the signed
# URL's credential: the upstream sockets get a logger that never goes below INFO.
_socket_log = logging.getLogger("capture.relay.socket")
_socket_log.setLevel(logging.INFO)

# An upstream error body is passed on; nothing larger is read.
_MAX_UPSTREAM_BODY = 64 * 1024
# Answer headers of an upstream refusal that a client may act on.
_PASSED_HEADERS = ("Content-Type", "Retry-After")
_STOPPING = (1001, "capture relay is stopping")
_USER_AGENT = "capture relay (ElevenLabs Agents capture)"


@dataclass
class RelayReport:
    """Counters over a relay's life.

    Attributes:
        connections: WebSockets relayed (open on both sides).
        conversations: Those in which the platform announced a conversation.
        signed_urls: Signed URLs fetched upstream and handed out as relay URLs.
        refused: Requests not relayed, by the HTTP status the client got
            (the relay's own refusals and the platform's alike).
        frames_in: Frames from the platform logged.
        frames_out: Frames from clients logged.
        audio_in: ``audio`` frames forwarded, not logged.
        audio_out: ``user_audio_chunk`` frames forwarded, not logged.
        stalled: Connections closed because a side did not read.
        open: Connections being relayed now.
        listening: Whether the relay accepts connections.

    """

    connections: int = 0
    conversations: int = 0
    signed_urls: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    frames_in: int = 0
    frames_out: int = 0
    audio_in: int = 0
    audio_out: int = 0
    stalled: int = 0
    open: int = 0
    listening: bool = False

    def __str__(self) -> str:
        refused = sum(self.refused.values())
        return (
            f"{self.connections} connections relayed ({self.conversations} conversations), "
            f"{self.frames_in + self.frames_out} frames logged, "
            f"{self.audio_in + self.audio_out} audio frames skipped, {refused} requests refused"
        )


async def run_relay(
    writer: LogWriter,
    config: RelayConfig,
    stop: asyncio.Event,
    *,
    report: RelayReport | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> RelayReport:
    """Relay conversations into ``writer``'s log until ``stop`` is set.

    Shares the writer with other sources on the same event loop (appends happen
    on this loop's thread); the caller opens and closes it.

    Args:
        writer: The open log writer.
        config: Where to listen, what to relay.
        stop: Set it to stop: open connections are closed with 1001 on both
            sides (``config.shutdown_timeout`` at most). Set by the relay
            itself when the log fails.
        report: Counters to update (a fresh :class:`RelayReport` if omitted).
        on_ready: Called with the bound port once the relay accepts connections.

    Raises:
        ConfigError: the address cannot be listened on.
        LogWriteError: the log could not be written; ``stop`` was set.

    """
    relay = _Relay(writer, config, stop, report if report is not None else RelayReport())
    return await relay.serve(on_ready)


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _upstream_failure(status: int, what: str, exc: BaseException) -> web.Response:
    reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
    return _json(status, {"detail": {"status": "upstream_unreachable", "message": f"{what}: {reason}"}})


class _Relay:
    """The server: its routes, its open connections, the stall watchdog."""

    def __init__(
        self, writer: LogWriter, config: RelayConfig, stop: asyncio.Event, report: RelayReport
    ) -> None:
        self.writer = writer
        self.config = config
        self.stop = stop
        self.report = report
        self.tokens = TokenTable(time.monotonic, ttl=config.signed_url_ttl, max_tokens=config.max_tokens)
        self.connections: set[_Relayed] = set()
        self.failure: LogWriteError | None = None
        self.stopping = False
        self.port = config.port
        self._http: aiohttp.ClientSession | None = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=4096)  # nothing relayed has a body
        for path in SIGNED_URL_PATHS:
            app.router.add_get(path, self._signed_url)
        app.router.add_get(CONVERSATION_PATH, self._conversation)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def serve(self, on_ready: Callable[[int], None] | None) -> RelayReport:
        cfg = self.config
        if not cfg.api_key:
            log.warning("no ELEVENLABS_API_KEY: only public agents can be relayed")
        timeout = aiohttp.ClientTimeout(total=cfg.open_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._http = http
            runner = web.AppRunner(
                self.application(),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=cfg.shutdown_timeout,
            )
            await runner.setup()
            watchdog: asyncio.Task[None] | None = None
            try:
                site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024)
                try:
                    await site.start()
                except OSError as exc:
                    raise ConfigError(
                        f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}; "
                        "pick another --host or --port"
                    ) from exc
                self.port = int(runner.addresses[0][1])
                log.info(
                    "relay listening on http://%s:%d%s for %s, upstream %s",
                    cfg.host,
                    self.port,
                    CONVERSATION_PATH,
                    ", ".join(sorted(cfg.agent_ids)),
                    cfg.base_url,
                )
                self.report.listening = True
                if on_ready is not None:
                    on_ready(self.port)
                watchdog = asyncio.create_task(self._watch_stalls(), name="capture-relay-stalls")
                await self.stop.wait()
            finally:
                self.report.listening = False
                if watchdog is not None:
                    watchdog.cancel()
                await self._close_all()
                await runner.cleanup()
        if self.failure is not None:
            raise self.failure
        return self.report

    async def _close_all(self) -> None:
        """Close every open connection (1001 both ways) and wait for them, within the shutdown timeout."""
        self.stopping = True
        open_now = list(self.connections)
        for conn in open_now:
            conn.halt(*_STOPPING)
        if open_now:
            await asyncio.wait([conn.done for conn in open_now], timeout=self.config.shutdown_timeout)

    async def _watch_stalls(self) -> None:
        limit = self.config.stall_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.01, limit / 4))
            now = loop.time()
            for conn in list(self.connections):
                conn.check_stall(now, limit)

    def failed(self, error: LogWriteError) -> None:
        """The log failed: stop everything; :meth:`serve` raises ``error``."""
        if self.failure is None:
            self.failure = error
            log.error("%s", error)
        self.stop.set()

    # -- HTTP ----------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal, what: str, request: web.Request) -> web.Response:
        self._count_refusal(refusal.status)
        log.info("%s from %s refused with %d", what, request.remote, refusal.status)
        return web.Response(status=refusal.status, body=refusal.body(), content_type="application/json")

    def _count_refusal(self, status: int) -> None:
        self.report.refused[status] = self.report.refused.get(status, 0) + 1

    async def _not_found(self, request: web.Request) -> web.Response:
        return _json(404, {"detail": "Not Found"})

    async def _signed_url(self, request: web.Request) -> web.Response:
        cfg = self.config
        agent_id = request.query.get("agent_id")
        refusal = signed_url_refusal(cfg, agent_id, request.headers.get("xi-api-key"))
        if refusal is not None:
            return self._refuse(refusal, "signed-URL call", request)
        assert agent_id is not None and self._http is not None
        url = URL(f"{http_base_url(cfg.base_url)}{SIGNED_URL_PATHS[0]}?{_raw_query(request)}", encoded=True)
        headers = {"xi-api-key": cfg.api_key} if cfg.api_key else {}
        try:
            async with self._http.get(url, headers=headers, allow_redirects=False) as response:
                body = await response.content.read(_MAX_UPSTREAM_BODY)
                status = response.status
                passed = {
                    name: response.headers[name] for name in _PASSED_HEADERS if name in response.headers
                }
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._count_refusal(502)
            log.warning("the upstream signed-URL call failed: %s", exc)
            return _upstream_failure(502, "the platform's signed-URL call failed", exc)
        if status != 200:
            self._count_refusal(status)
            log.info("the platform refused a signed URL for %s with %d", agent_id, status)
            return web.Response(status=status, body=body, headers=passed)
        try:
            answer = orjson.loads(body)
            signed_url = answer["signed_url"]
            if not isinstance(signed_url, str):
                raise TypeError("signed_url is not a string")
            upstream_signed_url(signed_url, "")  # a ws(s) URL, or ConfigError
        except (orjson.JSONDecodeError, KeyError, TypeError, ConfigError) as exc:
            self._count_refusal(502)
            log.warning("the platform's signed-URL answer is not usable: %s", exc)
            return _upstream_failure(502, "the platform's signed-URL answer is not usable", exc)
        token = self.tokens.issue(agent_id, signed_url)
        base = relay_base_url(
            public_url=cfg.public_url,
            host=request.headers.get("Host"),
            forwarded_proto=request.headers.get("X-Forwarded-Proto"),
            listen_host=cfg.host,
            port=self.port,
        )
        # Other fields (a conversation_id asked for with include_conversation_id) pass through.
        answer["signed_url"] = relay_conversation_url(base, agent_id, token)
        self.report.signed_urls += 1
        return _json(200, answer)

    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        if request.headers.get("Upgrade", "").strip().lower() != "websocket":
            return _json(426, {"detail": "Upgrade Required"})
        agent_id = request.query.get("agent_id")
        refusal = socket_refusal(cfg, agent_id)
        if refusal is None and (self.stopping or len(self.connections) >= cfg.max_connections):
            refusal = busy(cfg.max_connections)
        query = _raw_query(request)
        url = upstream_public_url(cfg.base_url, query)
        token = token_of(query)
        if refusal is None and token is not None:
            signed_url = self.tokens.redeem(token, agent_id)
            if signed_url is None:
                refusal = invalid_signature()
            else:
                url = upstream_signed_url(signed_url, query)
        if refusal is not None:
            return self._refuse(refusal, "conversation", request)
        assert agent_id is not None
        opened = await self._open_upstream(url, request)
        if isinstance(opened, web.Response):
            return opened
        upstream = opened
        client = web.WebSocketResponse(
            protocols=(upstream.subprotocol,) if upstream.subprotocol else (),
            autoclose=False,
            autoping=True,
            max_msg_size=cfg.max_frame_bytes,
            compress=False,
            timeout=cfg.close_timeout,
        )
        try:
            await client.prepare(request)
        except (ConnectionError, web.HTTPException) as exc:
            log.info("a client left during its handshake (%s)", exc)
            upstream.transport.abort()
            return client
        conn = _Relayed(self, request, client, upstream, RelaySession(agent_id, uuid.uuid4().hex))
        self.connections.add(conn)
        self.report.connections += 1
        self.report.open = len(self.connections)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.report.open = len(self.connections)
        return client

    async def _open_upstream(self, url: str, request: web.Request) -> ClientConnection | web.Response:
        """Open the upstream socket, or return the answer that tells the client why not."""
        cfg = self.config
        offered = [
            Subprotocol(p.strip())
            for value in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in value.split(",")
            if p.strip()
        ]
        origin = request.headers.get("Origin")
        try:
            return await connect(
                url,
                subprotocols=offered or None,
                origin=Origin(origin) if origin else None,
                user_agent_header=request.headers.get("User-Agent") or _USER_AGENT,
                max_size=cfg.max_frame_bytes,
                open_timeout=cfg.open_timeout,
                close_timeout=cfg.close_timeout,
                compression=None,
                logger=_socket_log,
            )
        except InvalidStatus as exc:
            # The platform's refusal, as it sent it.
            response = exc.response
            self._count_refusal(response.status_code)
            log.info("the platform refused a conversation with %d", response.status_code)
            return web.Response(
                status=response.status_code, body=response.body, headers=_passed_headers(response.headers)
            )
        except InvalidURI as exc:
            self._count_refusal(502)
            log.warning("the upstream conversation URL is not valid: %s", exc)
            return _upstream_failure(502, "the upstream conversation URL is not valid", exc)
        except TimeoutError as exc:
            self._count_refusal(504)
            log.warning("the upstream handshake timed out")
            return _upstream_failure(504, "the platform did not answer the handshake", exc)
        except (OSError, InvalidHandshake) as exc:
            self._count_refusal(502)
            log.warning("the upstream handshake failed: %s", exc)
            return _upstream_failure(502, "the upstream handshake failed", exc)


def _raw_query(request: web.Request) -> str:
    """The request's query string exactly as the client sent it (aiohttp's ``query_string`` is decoded)."""
    return request.raw_path.partition("?")[2]


def _passed_headers(headers: Headers) -> dict[str, str]:
    return {name: headers[name] for name in _PASSED_HEADERS if name in headers}


@dataclass
class _End:
    """How one side of a relayed connection ended.

    ``code`` is ``None`` for a close frame without a code; ``dropped`` means no
    close frame came (the TCP connection was lost).
    """

    code: int | None
    reason: str = ""
    dropped: bool = False


class _Relayed:
    """One relayed connection: two pumps, and passing on how it ends."""

    def __init__(
        self,
        relay: _Relay,
        request: web.Request,
        client: web.WebSocketResponse,
        upstream: ClientConnection,
        session: RelaySession,
    ) -> None:
        self.relay = relay
        self.request = request
        self.client = client
        self.upstream = upstream
        self.session = session
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._halted = asyncio.Event()
        self._halt: tuple[int, str] = _STOPPING
        # Per side: (frames received for it, bytes waiting in its socket's buffer, when either last moved).
        self._progress: dict[str, tuple[int, int, float]] = {}
        # Once a side closed, frames it would be sent are still logged, not forwarded.
        self._client_closing = False
        self._platform_closing = False
        self._stalled: str | None = None

    def halt(self, code: int, reason: str) -> None:
        """Close both sides with ``code`` and ``reason`` (the relay's own decision)."""
        if not self._halted.is_set():
            self._halt = (code, reason)
            self._halted.set()

    def check_stall(self, now: float, limit: float) -> None:
        """Close the connection if a side has not read for ``limit`` seconds while frames wait for it.

        Called by the watchdog a few times per ``limit``. A side is stalled when
        bytes wait in its socket's buffer and neither they nor the frames
        received for it have moved: nothing on the forwarding path is timed.
        """
        if self._halted.is_set():
            return
        session = self.session
        for side, transport, received in (
            ("client", self.request.transport, session.frames_in + session.audio_in),
            ("platform", self.upstream.transport, session.frames_out + session.audio_out),
        ):
            waiting = transport.get_write_buffer_size() if transport is not None else 0
            before = self._progress.get(side)
            if before is None or not waiting or received != before[0] or waiting < before[1]:
                self._progress[side] = (received, waiting, now)
            elif now - before[2] > limit:
                self._stalled = side
                reason = f"capture relay: the {side} did not read for {limit:g} s"
                log.warning("%s (connection %s); closing it", reason, session.connection_id)
                self.relay.report.stalled += 1
                self.halt(1011, reason)
                return

    async def run(self) -> None:
        opened = time.monotonic()
        platform = asyncio.create_task(self._pump_platform())
        client = asyncio.create_task(self._pump_client())
        halted = asyncio.create_task(self._halted.wait())
        try:
            await asyncio.wait({platform, client, halted}, return_when=asyncio.FIRST_COMPLETED)
            failure = next(
                (t.exception() for t in (platform, client) if t.done() and t.exception() is not None), None
            )
            if isinstance(failure, LogWriteError):
                self.relay.failed(failure)
                self.halt(1011, "capture cannot write its log")
            elif failure is not None:
                raise failure
            if self._halted.is_set():
                ended, closed_by = await self._close_both(platform, client), ClosedBy.RELAY
            elif platform.done():
                ended, closed_by = await self._platform_ended(platform.result(), client), ClosedBy.SERVER
            else:
                ended, closed_by = await self._client_ended(client.result(), platform), ClosedBy.CLIENT
        finally:
            halted.cancel()
            for task in (platform, client):
                task.cancel()
            await asyncio.gather(platform, client, halted, return_exceptions=True)
            self.done.set_result(None)
        self._finish(ended, closed_by, time.monotonic() - opened)

    # -- the two directions ----------------------------------------------------------------

    async def _pump_platform(self) -> _End:
        """Platform → client: log, then forward, until the platform's side ends."""
        upstream, client, session = self.upstream, self.client, self.session
        append = self.relay.writer.append
        send = client.send_frame
        text, binary = WSMsgType.TEXT, WSMsgType.BINARY
        try:
            while True:
                data = await upstream.recv()
                received_at = time.time_ns()
                frame = session.from_platform(data)
                if frame is not None:
                    append(session.origin_in, frame, received_at)
                if self._client_closing:
                    continue
                try:
                    if type(data) is str:
                        await send(data.encode(), text)
                    else:
                        await send(cast(bytes, data), binary)
                except ConnectionError:
                    self._client_closing = True  # the client's pump sees how it went
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return _End(1006, "", dropped=True)
            code = exc.rcvd.code
            return _End(None if code == 1005 else code, exc.rcvd.reason)

    async def _pump_client(self) -> _End:
        """Client → platform: log, then forward, until the client's side ends."""
        upstream, client, session = self.upstream, self.client, self.session
        append = self.relay.writer.append
        text, binary = WSMsgType.TEXT, WSMsgType.BINARY
        while True:
            message = await client.receive()
            kind = message.type
            if kind is text or kind is binary:
                received_at = time.time_ns()
                data = message.data
                frame = session.from_client(data)
                if frame is not None:
                    append(session.origin_out, frame, received_at)
                if self._platform_closing:
                    continue
                try:
                    await upstream.send(data)
                except ConnectionClosed:
                    self._platform_closing = True  # the platform's pump sees how it went
            elif kind is WSMsgType.CLOSE:
                return _End(message.data or None, message.extra or "")
            elif kind is WSMsgType.ERROR:
                # aiohttp has closed the client with the error's code (1009 for a frame too large, …).
                error = message.data
                return _End(getattr(error, "code", None) or client.close_code, str(error)[:120])
            elif kind is WSMsgType.CLOSED or kind is WSMsgType.CLOSING:
                return _End(1006, "", dropped=True)

    # -- how it ends ------------------------------------------------------------------------

    async def _platform_ended(self, end: _End, client_pump: asyncio.Task[_End]) -> _End:
        """The platform closed or dropped first: pass it on to the client."""
        self._platform_closing = True
        if end.dropped:
            self._abort_client()
        else:
            await self._close_client(1000 if end.code is None else end.code, end.reason)
        await self._settle(client_pump)
        return end

    async def _client_ended(self, end: _End, platform_pump: asyncio.Task[_End]) -> _End:
        """The client closed or dropped first: pass it on upstream, then the platform's answer back."""
        self._client_closing = True
        if end.dropped:
            self.upstream.transport.abort()
            await self._settle(platform_pump)
            return end
        try:
            await self.upstream.close(cast(int, end.code), end.reason)
        except ProtocolError:  # a code websockets will not send (1006, 1015, …): drop it like the client
            self.upstream.transport.abort()
        answer = await self._settle(platform_pump)
        code = answer.code if answer is not None and not answer.dropped else end.code
        reason = answer.reason if answer is not None and not answer.dropped else end.reason
        await self._close_client(1000 if code is None else code, reason)
        return end

    async def _close_both(self, platform_pump: asyncio.Task[_End], client_pump: asyncio.Task[_End]) -> _End:
        """The relay ends the connection: a stalled side is dropped, the other closed with the reason.

        Both pumps keep reading (and logging, no longer forwarding) until their
        side is gone: a close answer waits behind the frames before it, and a
        pump stuck forwarding to a dropped side is released by the drop.
        """
        code, reason = self._halt
        self._client_closing = self._platform_closing = True
        if self._stalled == "client":
            self._abort_client()
        else:
            await self._close_client(code, reason)
        if self._stalled == "platform":
            self.upstream.transport.abort()
        else:
            try:
                await asyncio.wait_for(self.upstream.close(code, reason), self.relay.config.close_timeout)
            except TimeoutError:
                self.upstream.transport.abort()
        await self._settle(platform_pump)
        await self._settle(client_pump)
        return _End(code, reason)

    async def _close_client(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(
                self.client.close(code=code, message=reason.encode("utf-8")[:123]),
                self.relay.config.close_timeout,
            )
        except (TimeoutError, ConnectionError):
            self._abort_client()

    def _abort_client(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def _settle(self, pump: asyncio.Task[_End]) -> _End | None:
        """Wait for the other pump to see its side end (a close timeout at most); its end, if it ended."""
        try:
            return await asyncio.wait_for(asyncio.shield(pump), self.relay.config.close_timeout * 2)
        except TimeoutError:
            return None

    def _finish(self, end: _End, closed_by: ClosedBy, lived: float) -> None:
        session, report = self.session, self.relay.report
        report.frames_in += session.frames_in
        report.frames_out += session.frames_out
        report.audio_in += session.audio_in
        report.audio_out += session.audio_out
        if session.conversation_id is not None:
            report.conversations += 1
        code = 1005 if end.code is None else end.code
        if self.relay.failure is None:
            record = session.closed_record(
                close_code=code, close_reason=end.reason, closed_by=closed_by, duration_s=lived
            )
            try:
                self.relay.writer.append(session.closed_origin(), record)
            except LogWriteError as exc:
                self.relay.failed(exc)
        log.info(
            "relayed %s for %.1f s: %d frames logged (%d in, %d out), %d audio skipped; close %d%s by %s",
            session.conversation_id or "(no conversation)",
            lived,
            session.frames_in + session.frames_out,
            session.frames_in,
            session.frames_out,
            session.audio_in + session.audio_out,
            code,
            f" {end.reason!r}" if end.reason else "",
            closed_by,
        )
