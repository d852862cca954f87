"""The post-call webhook receiver: verified deliveries appended to the log, acknowledged once durable.

An asyncio shell (aiohttp.web) around pure pieces: :mod:`ingest.sources.webhook.signature`
(is the delivery authentic and fresh), :mod:`ingest.sources.webhook.body` (its type
and ids), :mod:`ingest.log.envelope` (the line). Per ``POST`` to the webhook path:

1. the ``ElevenLabs-Signature`` header is parsed and its timestamp checked
   before the body is read; a refusal answers 401 and writes nothing;
2. the body is read as it arrives, its HMAC computed on the way; a body over
   ``max_body`` answers 413 and writes nothing, except a ``post_call_audio``
   (see below);
3. the signature is checked against the whole body (401 if wrong);
4. the body is appended to the log verbatim (``source: "webhook"``, one fresh
   ``connection_id`` per delivery, ``agent_id`` / ``conversation_id`` from the
   body's ``data``), like any frame: spliced under ``event`` when it is a JSON
   object on one line, else kept under ``raw`` (``raw_b64`` if not UTF-8);
5. the log is fsynced, and only then is 200 sent: an acknowledged delivery
   survives a power failure. Concurrent deliveries share fsyncs (group commit,
   :class:`GroupCommit`), so durable acknowledgement scales with concurrency.

Choices a caller should know:

* ``post_call_audio`` (the conversation's MP3, megabytes of base64, sent as
  chunked HTTP) is verified over the streamed body and answered 200, but
  nothing of it is written to the log: capture never stores audio, and a line
  without the audio would no longer be the body verbatim. It is counted in
  :class:`WebhookStats` and named in the process log. It is read in pieces and
  never held whole in memory (at most ~1 MiB), up to ``max_audio_body``.
* ``call_initiation_failure`` and unknown types are logged like transcripts.
* A replayed delivery (same body and signature, within the timestamp
  tolerance) is stored again and answered 200: ElevenLabs may resend a
  delivery it thinks failed, and refusing a resend risks losing the only copy.
  Duplicates are the projection's job (its rows are keyed on content).
* A 200 always means the delivery is on stable storage: with ``interval``
  (the default) and ``never`` it waits for an fsync shared with concurrent
  deliveries (group commit, in a worker thread); with ``always`` the append
  itself fsyncs (on the event loop, one delivery at a time).
* A failed write or fsync answers 500 (the delivery is not acknowledged), sets
  the ``stop`` event and is raised by :func:`run_webhook_server` once stopped:
  the writer is unusable and the process must end.

"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from ingest.errors import ConfigError, LogWriteError
from ingest.log.envelope import Origin
from ingest.log.frames import Frame, inspect_frame
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.sources.webhook.body import DeliveryBody, DeliveryInfo, delivery_info
from ingest.sources.webhook.signature import (
    MAX_AGE,
    MAX_FUTURE,
    SIGNATURE_HEADER,
    SignatureError,
    SignatureHeader,
    check_digest,
    check_timestamp,
    parse_signature_header,
    signer,
)


__all__ = [
    "DEFAULT_MAX_AUDIO_BODY",
    "DEFAULT_MAX_BODY",
    "DEFAULT_PATH",
    "SOURCE",
    "GroupCommit",
    "WebhookConfig",
    "WebhookReceiver",
    "WebhookStats",
    "run_webhook_server",
]

log = logging.getLogger("capture.webhook")

SOURCE = "webhook"
DEFAULT_PATH = "/webhooks/elevenlabs"
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_MAX_AUDIO_BODY = 1024 * 1024 * 1024


@dataclass(frozen=True)
class WebhookConfig:
    """How the receiver listens and what it accepts.

    Raises:
        ConfigError: the secret is empty, the path does not start with ``/``
            or a limit is below 1 byte.

    Attributes:
        secret: The webhook's HMAC secret (``ELEVENLABS_WEBHOOK_SECRET``).
            Never logged, printed or written.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see ``on_ready``).
        path: The one path accepting ``POST``; anything else is 404/405.
        max_body: Largest body stored; a larger one answers 413 unless it is
            a ``post_call_audio``.
        max_audio_body: Largest ``post_call_audio`` body read (it is never
            stored nor held whole in memory).
        max_age: Oldest accepted signature timestamp, in seconds.
        max_future: Furthest-ahead accepted signature timestamp, in seconds.
        shutdown_timeout: Seconds deliveries in flight get to finish on stop.

    """

    secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    path: str = DEFAULT_PATH
    max_body: int = DEFAULT_MAX_BODY
    max_audio_body: int = DEFAULT_MAX_AUDIO_BODY
    max_age: float = MAX_AGE
    max_future: float = MAX_FUTURE
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        # An empty key is one anybody can sign with.
        if not self.secret.strip():
            raise ConfigError("the webhook secret is empty; set ELEVENLABS_WEBHOOK_SECRET")
        if not self.path.startswith("/"):
            raise ConfigError(f"the webhook path {self.path!r} must start with /")
        if self.max_body < 1 or self.max_audio_body < 1:
            raise ConfigError("the webhook body limits must be at least 1 byte")


@dataclass
class WebhookStats:
    """Counters of one receiver's life.

    Attributes:
        stored: Deliveries appended to the log and answered 200.
        audio_skipped: ``post_call_audio`` deliveries answered 200, not stored.
        rejected: Deliveries refused with 401, by :attr:`SignatureError.reason`.
        too_large: Deliveries refused with 413.
        aborted: Requests whose body did not arrive whole.
        failed: Deliveries answered 500 because the log failed.
        bytes_stored: Body bytes of the stored deliveries.

    """

    stored: int = 0
    audio_skipped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    too_large: int = 0
    aborted: int = 0
    failed: int = 0
    bytes_stored: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def __str__(self) -> str:
        return (
            f"{self.stored} deliveries stored, {self.audio_skipped} audio deliveries not stored, "
            f"{self.rejected_total} refused (401), {self.too_large} too large (413)"
        )


class GroupCommit:
    """Make appended lines durable, one fsync shared by every waiter that arrived before it.

    Call :meth:`wait` after :meth:`LogWriter.append`; it returns once an fsync
    that started after the append has finished. At most one fsync runs at a
    time, in a worker thread; waiters arriving meanwhile share the next one.

    """

    def __init__(self, writer: LogWriter) -> None:
        self._writer = writer
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        """Wait until every line appended before this call is fsynced.

        Raises:
            LogWriteError: the fsync failed (never retried).

        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="capture-group-commit")
        await future

    async def _run(self) -> None:
        while self._waiters:
            batch, self._waiters = self._waiters, []
            error: LogWriteError | None = None
            try:
                await asyncio.to_thread(self._writer.sync)
            except LogWriteError as exc:
                error = exc
            except asyncio.CancelledError:
                # The loop is shutting down: nobody may wait forever.
                for future in batch + self._waiters:
                    future.cancel()
                raise
            for future in batch:
                if future.done():  # its delivery was cancelled
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)


def _frame_of(body: bytes) -> Frame:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return inspect_frame(body)  # kept as raw_b64
    return inspect_frame(text)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


class WebhookReceiver:
    """The request handler: verify, store, fsync, acknowledge.

    Build it with the (open) writer; mount :meth:`handle` at ``config.path``,
    or use :meth:`application`. Must run on the writer's event loop thread.

    Args:
        clock: Returns the current Unix time in seconds; injectable for tests.
        on_fatal: Called once when the log fails (the receiver then answers
            500 to every delivery).

    """

    def __init__(
        self,
        writer: LogWriter,
        config: WebhookConfig,
        *,
        stats: WebhookStats | None = None,
        clock: Callable[[], float] = time.time,
        on_fatal: Callable[[LogWriteError], None] | None = None,
    ) -> None:
        self.writer = writer
        self.config = config
        self.stats = stats if stats is not None else WebhookStats()
        self.failure: LogWriteError | None = None
        self._clock = clock
        self._on_fatal = on_fatal
        self._commit = GroupCommit(writer)

    def application(self) -> web.Application:
        """Return an aiohttp application serving ``config.path``."""
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_post(self.config.path, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one delivery: 200 once stored durably, 401, 413, or 500 if the log failed."""
        if self.failure is not None:
            return _text(500, "the log is unusable; delivery not stored")
        try:
            values = request.headers.getall(SIGNATURE_HEADER, [])
            header = parse_signature_header(",".join(values) if values else None)
            check_timestamp(
                header, self._clock(), max_age=self.config.max_age, max_future=self.config.max_future
            )
        except SignatureError as exc:
            return self._refuse(request, exc)
        declared = request.content_length
        if declared is not None and declared > self.config.max_audio_body:
            return self._too_large(request, declared)
        try:
            outcome = await self._read(request, header, declared)
        except (ConnectionError, web.RequestPayloadError) as exc:
            self.stats.aborted += 1
            log.warning("webhook from %s: body not received whole (%s)", request.remote, exc)
            return _text(400, "body not received whole")
        if isinstance(outcome, web.StreamResponse):
            return outcome
        frame, info, size = outcome
        if frame is None or info.is_audio:
            return self._skip_audio(info, size)
        return await self._store(frame, info, size)

    async def _read(
        self, request: web.Request, header: SignatureHeader, declared: int | None
    ) -> web.StreamResponse | tuple[Frame | None, DeliveryInfo, int]:
        """Read and authenticate the body; the frame is ``None`` for an audio body not kept."""
        mac = signer(self.config.secret, header.timestamp)
        body = DeliveryBody(
            max_body=self.config.max_body, max_audio_body=self.config.max_audio_body, declared_size=declared
        )
        async for piece in request.content.iter_any():
            mac.update(piece)
            if not body.feed(piece):
                return self._too_large(request, body.size)
        try:
            check_digest(header, mac.hexdigest())
        except SignatureError as exc:
            return self._refuse(request, exc)
        result = body.finish()
        if result is None:
            return self._too_large(request, body.size)
        if isinstance(result, DeliveryInfo):
            return None, result, body.size
        frame = _frame_of(result)
        return frame, delivery_info(frame.message), body.size

    async def _store(self, frame: Frame, info: DeliveryInfo, size: int) -> web.StreamResponse:
        origin = Origin(SOURCE, "in", info.agent_id, uuid.uuid4().hex, info.conversation_id)
        try:
            seq = self.writer.append(origin, frame, received_at=time.time_ns())
            # An acknowledged delivery must be durable whatever the policy:
            # ``never`` only concerns the agent socket's stream of frames.
            if self.writer.fsync is not FsyncPolicy.ALWAYS:
                await self._commit.wait()
        except LogWriteError as exc:
            self._fail(exc)
            return _text(500, "the log is unusable; delivery not stored")
        self.stats.stored += 1
        self.stats.bytes_stored += size
        log.info(
            "webhook %s for %s stored as seq %d (%d bytes)",
            info.type or "(no type)",
            info.conversation_id or "(no conversation id)",
            seq,
            size,
        )
        return _text(200, "ok")

    def _skip_audio(self, info: DeliveryInfo, size: int) -> web.StreamResponse:
        self.stats.audio_skipped += 1
        log.info(
            "webhook post_call_audio for %s acknowledged, audio not stored (%d bytes)",
            info.conversation_id or "(no conversation id)",
            size,
        )
        return _text(200, "ok (audio not stored)")

    def _refuse(self, request: web.Request, error: SignatureError) -> web.StreamResponse:
        self.stats.rejected[error.reason] = self.stats.rejected.get(error.reason, 0) + 1
        log.warning("webhook from %s refused: %s", request.remote, error)
        return _text(401, f"refused: {error}")

    def _too_large(self, request: web.Request, size: int) -> web.StreamResponse:
        self.stats.too_large += 1
        log.warning(
            "webhook from %s refused: body of %d bytes or more is over the limit of %d",
            request.remote,
            size,
            self.config.max_body,
        )
        response = _text(413, f"body over {self.config.max_body} bytes")
        response.force_close()  # do not keep reading a body we refused on this connection
        return response

    def _fail(self, error: LogWriteError) -> None:
        self.stats.failed += 1
        if self.failure is None:
            self.failure = error
            log.error("%s", error)
            if self._on_fatal is not None:
                self._on_fatal(error)


async def run_webhook_server(
    writer: LogWriter,
    config: WebhookConfig,
    stop: asyncio.Event,
    *,
    stats: WebhookStats | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> WebhookStats:
    """Receive webhooks into ``writer``'s log until ``stop`` is set.

    Shares the writer with other sources on the same event loop (``capture
    ingest --webhook-port``): appends happen on this loop's thread. The caller
    opens and closes the writer.

    Args:
        writer: The open log writer.
        config: Where to listen and what to accept.
        stop: Set it to stop; deliveries in flight get
            ``config.shutdown_timeout`` seconds to finish. Set by the
            receiver itself when the log fails.
        stats: Counters to update (a fresh :class:`WebhookStats` if omitted).
        on_ready: Called with the bound port once the server accepts
            connections.

    Returns:
        The counters.

    Raises:
        ConfigError: the address cannot be listened on.
        LogWriteError: a write or fsync failed; ``stop`` was set.

    """

    def on_fatal(error: LogWriteError) -> None:
        stop.set()

    receiver = WebhookReceiver(writer, config, stats=stats, on_fatal=on_fatal)
    runner = web.AppRunner(receiver.application(), access_log=None, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
                "pick another --host or --port"
            ) from exc
        port = int(runner.addresses[0][1])
        log.info("webhook receiver listening on http://%s:%d%s", config.host, port, config.path)
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        await runner.cleanup()
    if receiver.failure is not None:
        raise receiver.failure
    return receiver.stats
