"""GET requests to the ElevenLabs REST API, bounded, throttle-aware and retried (asyncio shell).

One :class:`RestClient` bounds every request it sends with one semaphore
(``concurrency``), however many tasks share it: the backfill's list and get
requests and the monitor's polls, when they run in one process, share one
client. What each answer means comes from :mod:`ingest.sources.rest.policy`:

* ``too_many_concurrent_requests``: the request gives its slot back and is
  retried when one of ours finishes (or after ``Retry-After``, when given);
* ``system_busy``, 5xx, network errors: exponential backoff with jitter, and
  every request of this client holds back until the delay has passed (the
  server is busy for all of them); ``Retry-After`` is honoured;
* 401/403: :class:`~ingest.errors.AuthError`.

A request that keeps failing ends with a :class:`RestResult` whose ``failure``
says why; the caller decides (the backfill retries it on its next pass).

"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from ingest.errors import AuthError
from ingest.sources.rest.policy import Action, Retries, RetryPolicy, classify


__all__ = ["RestClient", "RestResult", "RestStats", "open_session"]

log = logging.getLogger("capture.rest")

USER_AGENT = "capture (ElevenLabs Agents capture)"


@dataclass(frozen=True, slots=True)
class RestResult:
    """The final answer to one request, after any retries.

    Attributes:
        status: The HTTP status, or ``None`` if no answer came.
        body: The body exactly as received (empty if none).
        received_at: ``time.time_ns()`` when the body had been read.
        attempts: Requests sent for it.
        failure: Why the client gave up (retries exhausted, or stopped);
            ``None`` when ``status`` is the answer.

    """

    status: int | None
    body: bytes
    received_at: int
    attempts: int
    failure: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the answer is a 2xx."""
        return self.failure is None and self.status is not None and 200 <= self.status < 300


@dataclass
class RestStats:
    """Counters over a client's life."""

    requests: int = 0
    throttled_slot: int = 0
    throttled_busy: int = 0
    errors: int = 0
    gave_up: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def throttled(self) -> int:
        """429 answers of either kind."""
        return self.throttled_slot + self.throttled_busy


def open_session(timeout: float = 30.0) -> aiohttp.ClientSession:
    """Open the HTTP session a :class:`RestClient` uses (the caller closes it)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
        headers={"User-Agent": USER_AGENT},
    )


class RestClient:
    """Sends GET requests with ``xi-api-key``, at most ``concurrency`` at a time.

    Args:
        session: An open session (see :func:`open_session`); not closed here.
        api_key: Sent as ``xi-api-key``; never logged.
        concurrency: Requests in flight at most, over every caller.
        policy: Retry timing.
        stop: When set, waits end and requests give up with ``failure="stopped"``.

    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        *,
        concurrency: int = 2,
        policy: RetryPolicy | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.session = session
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self.stop = stop or asyncio.Event()
        self.stats = RestStats()
        self._headers = {"xi-api-key": api_key, "Accept": "application/json"}
        self._slots = asyncio.Semaphore(concurrency)
        self._freed = asyncio.Event()
        self._rng = random.Random()  # one per client: seeding one per request costs more than a GET
        self._not_before = 0.0  # monotonic; set by a back-off verdict, honoured by every request

    async def get(self, url: str, params: Mapping[str, str] | None = None, *, what: str) -> RestResult:
        """GET ``url`` until an answer worth returning, or give up.

        Args:
            url: The endpoint.
            params: Its query.
            what: Names the request in messages (``"the conversation list"``).

        Raises:
            AuthError: the key was refused (401) or lacks permission (403).

        """
        retries = Retries(self.policy, self._rng)
        attempts = 0
        while True:
            if not await self._hold_back():
                return RestResult(None, b"", time.time_ns(), attempts, "stopped")
            attempts += 1
            status, body, retry_after, failure = await self._once(url, params)
            received_at = time.time_ns()
            verdict = classify(status, body, retry_after, now_unix=time.time(), failure=failure, what=what)
            if verdict.action is Action.USE:
                return RestResult(status, body, received_at, attempts)
            if verdict.action is Action.FATAL:
                raise AuthError(verdict.reason)
            delay = retries.delay(verdict)
            if delay is None:
                self.stats.gave_up += 1
                reason = f"{what} failed {attempts} times, last: {verdict.reason}"
                return RestResult(status, body, received_at, attempts, reason)
            if verdict.action is Action.WAIT_FOR_SLOT:
                self.stats.throttled_slot += 1
                log.debug("%s: %s; retrying when a slot frees", what, verdict.reason)
                if verdict.retry_after is not None:
                    stopped = await self._sleep(delay)
                else:
                    stopped = await self._slot_freed(delay)
            else:
                if status == 429:
                    self.stats.throttled_busy += 1
                else:
                    self.stats.errors += 1
                log.warning("%s: %s; retrying in %.1f s", what, verdict.reason, delay)
                self._not_before = max(self._not_before, time.monotonic() + delay)
                stopped = await self._sleep(delay)
            if stopped:
                return RestResult(status, body, received_at, attempts, "stopped")

    async def _once(
        self, url: str, params: Mapping[str, str] | None
    ) -> tuple[int | None, bytes, str | None, str | None]:
        stats = self.stats
        async with self._slots:
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                async with self.session.get(url, params=params, headers=self._headers) as response:
                    body = await response.read()
                    return response.status, body, response.headers.get("Retry-After"), None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return None, b"", None, _describe(exc)
            finally:
                stats.in_flight -= 1
                freed, self._freed = self._freed, asyncio.Event()
                freed.set()

    async def _hold_back(self) -> bool:
        """Wait out a back-off another request set; return False if stopped meanwhile."""
        while True:
            remaining = self._not_before - time.monotonic()
            if remaining <= 0:
                return not self.stop.is_set()
            if await self._sleep(remaining):
                return False

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; return whether stopped."""
        if self.stop.is_set():
            return True
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _slot_freed(self, longest: float) -> bool:
        """Wait until one of our requests finishes (at most ``longest``); return whether stopped."""
        freed = self._freed
        if self.stats.in_flight == 0:
            return await self._sleep(longest)
        stopping = asyncio.ensure_future(self.stop.wait())
        freeing = asyncio.ensure_future(freed.wait())
        try:
            await asyncio.wait({stopping, freeing}, timeout=longest, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            freeing.cancel()
        return self.stop.is_set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
