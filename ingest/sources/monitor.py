"""``capture monitor`` as a library call: live conversations of an agent, through the monitor socket.

Real-time monitoring (enterprise; ``docs/elevenlabs-protocol.md`` §6c) is the
only way to observe a conversation held elsewhere while it happens. This
module polls the conversation list (through a
:class:`~ingest.sources.rest.client.RestClient`) for the agent's ``initiated`` and
``in-progress`` conversations and attaches one task to each, at most once at a
time: ``wss://…/v1/convai/conversations/{id}/monitor`` with header
``xi-api-key``. Per received frame, as on the agent socket: ``audio`` frames are
counted and dropped, every other frame is appended to the log at once (source
``monitor``, direction ``in``, a connection id per socket, the conversation id
from the path); nothing else happens on the receive path, and nothing is sent.

How an attachment ends decides what follows:

* close 1000: the conversation ended; it is not attached again;
* a refused handshake (401, 403) or a close 1008: monitoring is not available
  to this key or agent; :func:`run_monitor` stops every attachment and raises
  :class:`~ingest.errors.AuthError` (one clear message, no retry storm);
* a refused handshake 404: if a GET shows the conversation is no longer live it
  simply ended before we attached; if it is still live the monitor endpoint is
  missing for it, which is fatal like a 403;
* anything else (network errors, 5xx, other closes): attached again at a later
  poll, after a backoff of its own if it is still live.

"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ingest.errors import AuthError, ConfigError
from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.writer import LogWriter
from ingest.sources.reconnect import Backoff, Decision, Ended, ReconnectPolicy, Verdict
from ingest.sources.rest.api import LIVE, conversation_url, list_params, list_url, monitor_url, parse_page
from ingest.sources.rest.client import RestClient, RestStats, open_session
from ingest.sources.rest.policy import RetryPolicy


__all__ = ["SOURCE", "MonitorConfig", "MonitorReport", "run_monitor"]

log = logging.getLogger("capture.monitor")
# websockets logs every handshake header at DEBUG, xi-api-key included: the
# monitor sockets get a logger of their own that never goes below INFO, even
# with --verbose.
_socket_log = logging.getLogger("capture.monitor.socket")
_socket_log.setLevel(logging.INFO)

SOURCE = "monitor"
MAX_FRAME_BYTES = 16 * 1024 * 1024

_NOT_ENABLED_HINT = (
    "real-time monitoring is enterprise-only: enable it in the agent's Advanced settings "
    "(monitoring_enabled) and use a key with the ElevenLabs Agents Write scope and editor access "
    "to the agent's workspace"
)


@dataclass(frozen=True)
class MonitorConfig:
    """Which agent to watch and how.

    Attributes:
        agent_id: The agent whose live conversations are monitored.
        base_url: The API host; http→ws and https→wss for the sockets.
        api_key: Sent as ``xi-api-key`` on the list and the sockets; never logged.
        poll_interval: Seconds between polls of the conversation list.
        lookback: Each poll lists calls that started within this many seconds.
        concurrency: REST requests in flight at most (when no client is given).
        max_attachments: Sockets open at most; more live conversations wait.
        max_conversations: Return once this many monitored conversations
            ended normally; ``None`` runs until stopped.
        max_frame_bytes: The largest frame accepted.
        open_timeout: Seconds allowed for a socket's handshake.
        retry: Retry timing of the list requests.
        reconnect: Backoff before attaching again to a conversation whose socket failed.
        request_timeout: Seconds to connect, and between bytes of a REST answer.

    Raises:
        ConfigError: a value is out of range.

    """

    agent_id: str
    base_url: str
    api_key: str = field(repr=False)
    poll_interval: float = 5.0
    lookback: float = 6 * 3600.0
    concurrency: int = 2
    max_attachments: int = 256
    max_conversations: int | None = None
    max_frame_bytes: int = MAX_FRAME_BYTES
    open_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy.from_env)
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.agent_id:
            raise ConfigError("no agent id: pass --agent-id or set AGENT_ID")
        if not self.api_key:
            raise ConfigError("no API key: set ELEVENLABS_API_KEY (the monitor socket needs one)")
        if self.poll_interval <= 0 or self.lookback <= 0:
            raise ConfigError("--poll-interval and --lookback must be positive")
        if self.concurrency < 1 or self.max_attachments < 1:
            raise ConfigError("--concurrency and --max-attachments must be at least 1")


@dataclass
class MonitorReport:
    """Counters over a monitor's life.

    Attributes:
        polls: Listings walked.
        attachments: Sockets opened.
        conversations: Monitored conversations that ended normally (close 1000).
        frames_logged: Frames appended to the log.
        audio_skipped: Audio frames dropped.
        failures: Attachments that failed or ended abnormally (attached again later).
        not_live: Conversations that had ended before we could attach.
        open_sockets: Monitor sockets open now.
        listed_at: :func:`time.monotonic` when the conversation list was last
            walked to its end, if ever.
        rest: The counters of the REST client listing the conversations.

    """

    polls: int = 0
    attachments: int = 0
    conversations: int = 0
    frames_logged: int = 0
    audio_skipped: int = 0
    failures: int = 0
    not_live: int = 0
    open_sockets: int = 0
    listed_at: float | None = None
    rest: RestStats | None = None


async def run_monitor(
    writer: LogWriter,
    config: MonitorConfig,
    stop: asyncio.Event,
    *,
    rest: RestClient | None = None,
    report: MonitorReport | None = None,
) -> MonitorReport:
    """Monitor the agent's live conversations into the log until stopped (or ``max_conversations``).

    Args:
        writer: The open log; appended to on the calling loop's thread only.
        config: What to watch.
        stop: Set it to stop: open sockets are closed (1000) and the report returned.
        rest: A client to share with other sources (its bound covers them
            all); one is made from ``config`` if omitted.
        report: Counters to update (a fresh :class:`MonitorReport` if
            omitted), for a caller that reads them while it runs.

    Raises:
        AuthError: monitoring is not available to this key or agent (a refused
            handshake or a close 1008), or the list refused the key.
        ConfigError: the list refused the query (agent id, base URL).
        LogWriteError: the log could not be written; nothing is retried.

    """
    report = report if report is not None else MonitorReport()
    if rest is not None:
        return await _Monitor(writer, config, rest, report).run(stop)
    async with open_session(config.request_timeout) as session:
        client = RestClient(
            session, config.api_key, concurrency=config.concurrency, policy=config.retry, stop=stop
        )
        return await _Monitor(writer, config, client, report).run(stop)


class _Retry:
    """When a conversation whose socket failed may be attached again."""

    def __init__(self, policy: ReconnectPolicy) -> None:
        self.backoff = Backoff(policy)
        self.not_before = 0.0


class _Monitor:
    def __init__(
        self, writer: LogWriter, config: MonitorConfig, rest: RestClient, report: MonitorReport
    ) -> None:
        self.writer = writer
        self.config = config
        self.rest = rest
        self.report = report
        report.rest = rest.stats
        self.attached: dict[str, asyncio.Task[None]] = {}
        self.ended: dict[str, float] = {}  # conversation id -> monotonic time it ended
        self.retries: dict[str, _Retry] = {}
        self.fatal: BaseException | None = None
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> MonitorReport:
        try:
            while not stop.is_set() and self.fatal is None and not self._enough():
                await self._poll()
                self.wake.clear()
                if self.fatal is not None or self._enough():
                    break
                stopping = asyncio.ensure_future(stop.wait())
                waking = asyncio.ensure_future(self.wake.wait())
                try:
                    await asyncio.wait(
                        {stopping, waking},
                        timeout=self.config.poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    stopping.cancel()
                    waking.cancel()
        finally:
            tasks = list(self.attached.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self.writer.sync)
        if self.fatal is not None:
            raise self.fatal
        return self.report

    def _enough(self) -> bool:
        limit = self.config.max_conversations
        return limit is not None and self.report.conversations >= limit

    async def _poll(self) -> None:
        cfg = self.config
        self.report.polls += 1
        after = int(time.time() - cfg.lookback)
        self._forget_old()
        cursor: str | None = None
        while True:
            params = list_params(cfg.agent_id, cursor=cursor, after_unix=after)
            result = await self.rest.get(list_url(cfg.base_url), params, what="the conversation list")
            if result.failure is not None or result.status is None:
                if result.failure != "stopped":
                    log.warning("%s; polling again in %.0f s", result.failure, cfg.poll_interval)
                return
            if result.status in (400, 404, 422):
                raise ConfigError(
                    f"the conversation list was refused with HTTP {result.status}: "
                    "check --agent-id and --base-url"
                )
            if not result.ok:
                log.warning("the conversation list answered HTTP %s", result.status)
                return
            try:
                page = parse_page(result.body)
            except ValueError as exc:
                log.warning("the conversation list answered an unexpected body (%s)", exc)
                return
            for summary in page.summaries:
                if summary.status in LIVE:
                    self._attach(summary.conversation_id)
            if page.last:
                self.report.listed_at = time.monotonic()
                return
            cursor = page.next_cursor

    def _forget_old(self) -> None:
        # A conversation that ended more than a lookback ago is no longer listed.
        horizon = time.monotonic() - self.config.lookback
        for conversation_id in [c for c, at in self.ended.items() if at < horizon]:
            del self.ended[conversation_id]
        for conversation_id in [c for c, r in self.retries.items() if r.not_before < horizon]:
            del self.retries[conversation_id]

    def _attach(self, conversation_id: str) -> None:
        if conversation_id in self.attached or conversation_id in self.ended:
            return
        if len(self.attached) >= self.config.max_attachments:
            return
        retry = self.retries.get(conversation_id)
        if retry is not None and time.monotonic() < retry.not_before:
            return
        task = asyncio.ensure_future(self._watch(conversation_id))
        self.attached[conversation_id] = task
        task.add_done_callback(lambda done: self._detached(conversation_id, done))

    def _detached(self, conversation_id: str, task: asyncio.Task[None]) -> None:
        self.attached.pop(conversation_id, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self.fatal is None:
            self.fatal = error
            self.wake.set()

    # -- one socket ----------------------------------------------------------------------

    async def _watch(self, conversation_id: str) -> None:
        cfg = self.config
        try:
            websocket = await connect(
                monitor_url(cfg.base_url, conversation_id),
                additional_headers={"xi-api-key": cfg.api_key},
                max_size=cfg.max_frame_bytes,
                open_timeout=cfg.open_timeout,
                close_timeout=5,
                user_agent_header="capture (ElevenLabs Agents capture)",
                logger=_socket_log,
            )
        except InvalidStatus as exc:
            await self._refused(conversation_id, exc.response.status_code)
            return
        except InvalidURI as exc:
            raise ConfigError(f"the monitor URL is not valid: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self._failed(conversation_id, Ended(opened=False, failure=_describe(exc)))
            return
        self.report.attachments += 1
        opened = time.monotonic()
        self.report.open_sockets += 1
        try:
            frames, audio = await self._receive(websocket, conversation_id)
        finally:
            self.report.open_sockets -= 1
        code = websocket.close_code if websocket.close_code is not None else 1006
        reason = websocket.close_reason or ""
        lived = time.monotonic() - opened
        if code == 1008:
            raise AuthError(
                f"the monitor socket of {conversation_id} was closed with 1008"
                f"{f' ({reason})' if reason else ''}: {_NOT_ENABLED_HINT}"
            )
        log.info(
            "monitored %s for %.1f s: %d frames logged, %d audio skipped; close %s%s",
            conversation_id,
            lived,
            frames,
            audio,
            code,
            f" {reason!r}" if reason else "",
        )
        if code == 1000:
            self.report.conversations += 1
            self.ended[conversation_id] = time.monotonic()
            self.retries.pop(conversation_id, None)
            self.wake.set()
            return
        self._failed(conversation_id, Ended(opened=True, lived=lived, close_code=code, close_reason=reason))

    async def _receive(self, websocket: ClientConnection, conversation_id: str) -> tuple[int, int]:
        """The receive path: drop audio, append everything else at once; until the socket closes."""
        writer = self.writer
        report = self.report
        origin = Origin(SOURCE, "in", self.config.agent_id, uuid.uuid4().hex, conversation_id)
        frames = audio = 0
        try:
            while True:
                data = await websocket.recv()
                received_at = time.time_ns()
                frame = inspect_frame(data)
                if frame.is_audio:
                    audio += 1
                    report.audio_skipped += 1
                    continue
                writer.append(origin, frame, received_at)
                frames += 1
                report.frames_logged += 1
        except ConnectionClosed:
            pass
        finally:
            # Cancelled (stopping) or the log failed: leave politely.
            await websocket.close(1000)
        return frames, audio

    async def _refused(self, conversation_id: str, status: int) -> None:
        if status in (401, 403):
            raise AuthError(f"the monitor socket was refused with HTTP {status}: {_NOT_ENABLED_HINT}")
        if status == 404:
            if not await self._still_live(conversation_id):
                self.report.not_live += 1
                self.ended[conversation_id] = time.monotonic()
                return
            raise AuthError(
                f"the monitor socket of live conversation {conversation_id} was refused with HTTP 404: "
                f"{_NOT_ENABLED_HINT}"
            )
        self._failed(conversation_id, Ended(opened=False, http_status=status))

    async def _still_live(self, conversation_id: str) -> bool:
        result = await self.rest.get(
            conversation_url(self.config.base_url, conversation_id), what=f"conversation {conversation_id}"
        )
        if not result.ok:
            return False
        try:
            body = orjson.loads(result.body)
        except orjson.JSONDecodeError:
            return False
        return isinstance(body, dict) and body.get("status") in LIVE

    def _failed(self, conversation_id: str, ended: Ended) -> None:
        self.report.failures += 1
        retry = self.retries.setdefault(conversation_id, _Retry(self.config.reconnect))
        reason = ended.failure or (
            f"HTTP {ended.http_status}" if ended.http_status is not None else f"close {ended.close_code}"
        )
        delay = retry.backoff.next_delay(Decision(Verdict.FAILURE, reason), ended)
        retry.not_before = time.monotonic() + delay
        log.warning(
            "monitor socket of %s failed (%s); attaching again after %.1f s", conversation_id, reason, delay
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
