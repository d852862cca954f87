"""The post-call webhook receiver: verified deliveries appended to the log, acknowledged once durable.

An asyncio shell (aiohttp.web) around pure pieces: :mod:`ingest.sources.webhook.signature`
(is the delivery authentic and fresh), :mod:`ingest.sources.webhook.body` (its type
and ids), :mod:`ingest.log.envelope` (the line). Per ``POST`` to the webhook path:

1. the ``ElevenLabs-Signature`` header is parsed and its timestamp checked
   before the body is read; a refusal answers 401 and writes nothing;
2. the body is read as it arrives, its HMAC computed on the way, and nothing
   else done with it (:class:`~ingest.sources.webhook.body.DeliveryBody`): a
   body over ``max_body`` answers 413 and writes nothing, except one whose
   first bytes name ``post_call_audio`` (see below); a body that stops
   arriving, or trickles, answers 408;
3. the signature is checked against the whole body (401 if wrong); only now
   is the body looked at (parsed, linear in its size);
4. the body is appended to the log verbatim (``source: "webhook"``, one fresh
   ``connection_id`` per delivery, ``agent_id`` / ``conversation_id`` from the
   body's ``data``), like any frame: spliced under ``event`` when it is a JSON
   object on one line, else kept under ``raw`` (``raw_b64`` if not UTF-8);
5. the log is fsynced, and only then is 200 sent: an acknowledged delivery
   survives a power failure. Concurrent deliveries share fsyncs (group commit,
   :class:`GroupCommit`), so durable acknowledgement scales with concurrency.

Choices a caller should know:

* Nothing a stranger sends costs more than reading and hashing it, and no
  stranger can crowd out a delivery: an unverified body is never parsed and
  never kept beyond ``max_body``; unverified bodies together keep at most
  ``max_unverified`` bytes (past it, those holding more than an even share
  answer 503); past its first 64 KiB a body's pieces take turns with other
  large bodies' (one piece hashed per pass of the event loop), so a hundred
  large bodies at once cost a small delivery, and the other sources on the
  loop, one piece's hashing per pass; and a connection is closed when it
  idles or trickles (``idle_timeout``, ``body_timeout``, ``min_body_rate``).
* The timestamp window is the official SDK's: older than 30 minutes is
  refused, any future timestamp accepted (``max_future`` sets a bound). A
  verified delivery signed more than 5 minutes away from the local clock logs
  a warning (at most one a minute): a clock is off.
* A verified body is parsed (orjson) and encoded into its line on the event
  loop: linear, about 10 ms per MiB of body. A worker thread would not help
  (orjson and ``bytes.decode`` hold the GIL), and verified bodies come from
  ElevenLabs, mostly a few kB to a few hundred.
* ``post_call_audio`` (the conversation's MP3, megabytes of base64, sent as
  chunked HTTP) is verified over the streamed body and answered 200, but
  nothing of it is written to the log: capture never stores audio, and a line
  without the audio would no longer be the body verbatim. It is counted in
  :class:`WebhookStats` and named in the process log. It is read in pieces and
  never held whole in memory (at most ~1 MiB), up to ``max_audio_body``. A
  body over ``max_body`` is read that far only when it begins
  ``{"type":"post_call_audio"`` (how ElevenLabs writes it); one that names its
  type later is refused with 413 — nothing is lost, audio is never stored.
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
from ingest.sources.webhook.body import AudioBody, DeliveryBody, DeliveryInfo, delivery_info
from ingest.sources.webhook.signature import (
    CLOCK_SKEW_WARNING,
    MAX_AGE,
    SIGNATURE_HEADER,
    SignatureError,
    check_timestamp,
    parse_signature_header,
    signer,
)


__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_AUDIO_BODY",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MIN_BODY_RATE",
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
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_MIN_BODY_RATE = 4096

# At most one clock-skew warning this often, in seconds.
_SKEW_WARNING_EVERY = 60.0

# The first bytes of every body are hashed as they come; past them, bodies
# take turns: at most this many of their pieces are hashed per pass of the
# event loop, however many large bodies arrive at once. So a stranger's
# hundred bodies cost any other delivery (and the agent socket on the same
# loop) a few pieces' hashing per pass, not a hundred.
_UNQUEUED_BYTES = 64 * 1024
_PIECES_PER_PASS = 1


@dataclass(frozen=True)
class WebhookConfig:
    """How the receiver listens and what it accepts.

    Raises:
        ConfigError: the secret is empty, the path does not start with ``/``,
            a size limit is below 1 byte (``max_unverified``: below
            ``max_body``), a timeout is not positive, or ``max_future`` /
            ``min_body_rate`` is negative.

    Attributes:
        secret: The webhook's HMAC secret (``ELEVENLABS_WEBHOOK_SECRET``).
            Never logged, printed or written.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see ``on_ready``).
        path: The one path accepting ``POST``; anything else is 404/405.
        max_body: Largest body stored, and read before its signature is
            checked; a larger one answers 413 unless its first bytes name
            ``post_call_audio``.
        max_audio_body: Largest ``post_call_audio`` body read (it is never
            stored nor held whole in memory).
        max_age: Oldest accepted signature timestamp, in seconds.
        max_future: Furthest-ahead accepted signature timestamp, in seconds;
            ``None`` (the default, as the official SDK) accepts any.
        idle_timeout: Seconds a connection may wait without a request in
            progress: from when it opens (or its last answer) until its
            request line and headers have all arrived. Then it is closed.
        body_timeout: Longest pause, in seconds, while a body arrives; also
            the grace before ``min_body_rate`` applies. Then 408 and close.
        min_body_rate: Bytes per second a body must average, counted from its
            start, once ``body_timeout`` seconds have passed; 0 for no floor.
            Then 408 and close. The default, 4 KiB/s, lets a 100 MB audio
            delivery take seven hours and makes a stranger holding a
            connection pay that bandwidth.
        max_unverified: Bytes that bodies not yet verified may hold in memory
            together (at least ``max_body``; ``None``: 4 × ``max_body``, 64 MiB
            by default). Past it, a body holding more than an even share (this
            divided by the bodies being received) is refused with 503: a
            stranger's many large bodies give way, not a delivery's one, and
            memory stays bounded however many connections arrive.
        shutdown_timeout: Seconds deliveries in flight get to finish on stop.

    """

    secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    path: str = DEFAULT_PATH
    max_body: int = DEFAULT_MAX_BODY
    max_audio_body: int = DEFAULT_MAX_AUDIO_BODY
    max_age: float = MAX_AGE
    max_future: float | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    min_body_rate: int = DEFAULT_MIN_BODY_RATE
    max_unverified: int | None = None
    shutdown_timeout: float = 5.0

    @property
    def unverified_limit(self) -> int:
        """``max_unverified``, or its default: 4 × ``max_body``."""
        return self.max_unverified if self.max_unverified is not None else 4 * self.max_body

    def __post_init__(self) -> None:
        # An empty key is one anybody can sign with.
        if not self.secret.strip():
            raise ConfigError("the webhook secret is empty; set ELEVENLABS_WEBHOOK_SECRET")
        if not self.path.startswith("/"):
            raise ConfigError(f"the webhook path {self.path!r} must start with /")
        if self.max_body < 1 or self.max_audio_body < 1:
            raise ConfigError("the webhook body limits must be at least 1 byte")
        if self.max_unverified is not None and self.max_unverified < self.max_body:
            raise ConfigError("the webhook's max unverified bytes must be at least its max body")
        if not (self.max_age > 0 and self.idle_timeout > 0 and self.body_timeout > 0):
            raise ConfigError("the webhook's max age, idle timeout and body timeout must be positive")
        if (self.max_future is not None and self.max_future < 0) or self.min_body_rate < 0:
            raise ConfigError("the webhook's max future and minimum body rate must not be negative")


@dataclass
class WebhookStats:
    """Counters of one receiver's life.

    Attributes:
        stored: Deliveries appended to the log and answered 200.
        audio_skipped: ``post_call_audio`` deliveries answered 200, not stored.
        rejected: Deliveries refused with 401, by :attr:`SignatureError.reason`.
        too_large: Deliveries refused with 413.
        timed_out: Requests answered 408: the body paused too long or
            arrived too slowly.
        crowded: Requests answered 503: unverified bodies together held
            ``max_unverified`` bytes and this one held more than its share.
        aborted: Requests whose body did not arrive whole.
        failed: Deliveries answered 500 because the log failed.
        bytes_stored: Body bytes of the stored deliveries.
        listening: Whether the receiver accepts connections.

    """

    stored: int = 0
    audio_skipped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    too_large: int = 0
    timed_out: int = 0
    crowded: int = 0
    aborted: int = 0
    failed: int = 0
    bytes_stored: int = 0
    listening: bool = False

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def __str__(self) -> str:
        return (
            f"{self.stored} deliveries stored, {self.audio_skipped} audio deliveries not stored, "
            f"{self.rejected_total} refused (401), {self.too_large} too large (413), "
            f"{self.timed_out} too slow (408), {self.crowded} crowded out (503)"
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


def _cut_off(request: web.Request, status: int, answer: str, why: str) -> web.Response:
    """Refuse a body not read whole: log why, answer, and close (the rest of it is never read)."""
    log.warning("webhook from %s refused: %s", request.remote, why)
    response = _text(status, answer)
    response.force_close()
    return response


class _TooSlow(Exception):
    """The body paused longer than ``body_timeout``, or fell under ``min_body_rate``."""


class _Crowded(Exception):
    """Unverified bodies hold ``max_unverified`` bytes together, and this one more than its share."""


class WebhookReceiver:
    """The request handler: verify, store, fsync, acknowledge.

    Build it with the (open) writer; serve it with :meth:`runner` (or mount
    :meth:`handle` at ``config.path`` of an app whose server applies
    ``config.idle_timeout`` itself). Must run on the writer's event loop thread.

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
        self._skew_warned_at: float | None = None
        self._turns = asyncio.Semaphore(_PIECES_PER_PASS)
        self._receiving = 0  # bodies being received
        self._unverified = 0  # bytes they hold

    def application(self) -> web.Application:
        """Return an aiohttp application serving ``config.path``."""
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_post(self.config.path, self.handle)
        return app

    def runner(self) -> web.AppRunner:
        """Return an (unstarted) runner serving :meth:`application`, idle connections closed.

        A connection with no request in progress — just opened, between
        requests, or still sending its request line and headers — is closed
        ``config.idle_timeout`` seconds after it opened or was last answered.
        After a refusal (408, 413, 503) the rest of the body is not read: the
        connection is closed once the answer is sent.

        """
        return web.AppRunner(
            self.application(),
            access_log=None,
            shutdown_timeout=self.config.shutdown_timeout,
            keepalive_timeout=self.config.idle_timeout,
            # A refused body is not read on ("lingering"): the connection closes after the answer.
            lingering_time=0,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one delivery: 200 once stored durably, 401, 408, 413, 503, or 500 if the log failed."""
        if self.failure is not None:
            return _text(500, "the log is unusable; delivery not stored")
        try:
            values = request.headers.getall(SIGNATURE_HEADER, [])
            header = parse_signature_header(",".join(values) if values else None)
            age = check_timestamp(
                header, self._clock(), max_age=self.config.max_age, max_future=self.config.max_future
            )
        except SignatureError as exc:
            return self._refuse(request, exc)
        declared = request.content_length
        if declared is not None and declared > self.config.max_audio_body:
            return self._too_large(request, declared)
        body = DeliveryBody(
            signer(self.config.secret, header.timestamp),
            max_body=self.config.max_body,
            max_audio_body=self.config.max_audio_body,
            declared_size=declared,
        )
        self._receiving += 1
        try:
            whole = await self._receive(request, body)
        except (ConnectionError, web.RequestPayloadError) as exc:
            self.stats.aborted += 1
            log.warning("webhook from %s: body not received whole (%s)", request.remote, exc)
            return _text(400, "body not received whole")
        except _TooSlow as exc:
            return self._too_slow(request, str(exc))
        except _Crowded:
            return self._crowded(request, body.held)
        finally:
            self._receiving -= 1
            self._unverified -= body.held
        if not whole:
            return self._too_large(request, body.size)
        try:
            content = body.verify(header)
        except SignatureError as exc:
            return self._refuse(request, exc)
        self._check_skew(age)
        # Only now, verified, is the body looked at.
        if isinstance(content, AudioBody):
            return self._skip_audio(content.info, content.size)
        frame = _frame_of(content)
        info = delivery_info(frame.message)
        if info.is_audio:
            return self._skip_audio(info, len(content))
        return await self._store(frame, info, len(content))

    async def _receive(self, request: web.Request, body: DeliveryBody) -> bool:
        """Feed the body to ``body`` as it arrives; False when it must be refused as too large.

        Past its first bytes a body waits its turn (see ``_PIECES_PER_PASS``);
        that wait is the receiver's, and never counts against the sender's pace.

        Raises:
            _TooSlow: a pause over ``body_timeout``, or under ``min_body_rate``
                on average once ``body_timeout`` has passed.

        """
        loop = asyncio.get_running_loop()
        timeout, rate = self.config.body_timeout, self.config.min_body_rate
        started = last = loop.time()
        queued = 0.0  # seconds spent waiting for a turn
        while True:
            deadline = last + timeout
            if rate:
                # The latest moment at which body.size bytes still average ``rate``.
                deadline = min(deadline, started + queued + timeout + body.size / rate)
            try:
                async with asyncio.timeout_at(deadline):
                    piece = await request.content.readany()
            except TimeoutError:
                raise _TooSlow(f"{body.size} bytes in {loop.time() - started:.1f} s") from None
            if not piece:
                return True
            if body.size < _UNQUEUED_BYTES:
                whole = self._feed(body, piece)
            else:
                waiting = loop.time()
                async with self._turns:
                    whole = self._feed(body, piece)
                    await asyncio.sleep(0)  # hold the turn over this pass of the loop
                queued += loop.time() - waiting
            if not whole:
                return False
            limit = self.config.unverified_limit
            if self._unverified > limit and body.held * self._receiving > limit:
                raise _Crowded
            last = loop.time()

    def _feed(self, body: DeliveryBody, piece: bytes) -> bool:
        held = body.held
        whole = body.feed(piece)
        self._unverified += body.held - held  # with no await between: handle() subtracts body.held
        return whole

    def _check_skew(self, age: float) -> None:
        if abs(age) <= CLOCK_SKEW_WARNING:
            return
        now = time.monotonic()
        if self._skew_warned_at is not None and now - self._skew_warned_at < _SKEW_WARNING_EVERY:
            return
        self._skew_warned_at = now
        if age < 0:
            log.warning(
                "webhook delivery signed %.0f s ahead of this server's clock (accepted): "
                "check both clocks (NTP)",
                -age,
            )
        else:
            log.warning(
                "webhook delivery signed %.0f s ago by this server's clock (accepted; over %.0f s "
                "is refused): check both clocks (NTP)",
                age,
                self.config.max_age,
            )

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
        limit = self.config.max_body
        why = f"body of {size} bytes or more is over the limit of {limit}"
        return _cut_off(request, 413, f"body over {limit} bytes", why)

    def _too_slow(self, request: web.Request, progress: str) -> web.StreamResponse:
        self.stats.timed_out += 1
        config = self.config
        why = (
            f"body too slow ({progress}; a pause over {config.body_timeout:g} s, "
            f"or under {config.min_body_rate} bytes/s)"
        )
        return _cut_off(request, 408, "body too slow", why)

    def _crowded(self, request: web.Request, held: int) -> web.StreamResponse:
        self.stats.crowded += 1
        why = (
            f"unverified bodies hold over {self.config.unverified_limit} bytes together, "
            f"and this one {held}, more than its share"
        )
        response = _cut_off(request, 503, "too many large bodies at once; try again later", why)
        response.headers["Retry-After"] = "60"
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
    runner = receiver.runner()
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
        receiver.stats.listening = True
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
    finally:
        receiver.stats.listening = False
        await runner.cleanup()
    if receiver.failure is not None:
        raise receiver.failure
    return receiver.stats
