"""GET requests to the ElevenLabs REST API, bounded, throttle-aware and retried (asyncio shell).

One :class:`RestClient` bounds every request it sends (``concurrency``),
however many tasks share it: the backfill's list and get requests and the
monitor's polls, when they run in one process, share one client. What each
answer means comes from :mod:`ingest.sources.rest.policy`:

* ``too_many_concurrent_requests``: the account allows fewer requests at once
  than ``concurrency``. The client learns how many
  (:class:`~ingest.sources.rest.policy.ConcurrencyLimit`) and keeps that many
  in flight at most; the refused request gives its slot back and goes first
  in the queue, and nobody is let in until one of ours is served (or
  ``slot_wait`` passed, when another tool of the account holds the slots), or
  after ``Retry-After``, when given;
* ``system_busy``, 5xx, network errors: exponential backoff with jitter (at
  least ``busy_floor`` after a 429), and every request of this client holds
  back until the delay has passed (the server is busy for all of them);
  ``Retry-After`` is honoured;
* 401/403: :class:`~ingest.errors.AuthError`.

A request that keeps failing ends with a :class:`RestResult` whose ``failure``
says why; the caller decides (the backfill retries it on its next pass).

"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ingest.errors import AuthError
from ingest.sources.rest.policy import Action, ConcurrencyLimit, Retries, RetryPolicy, Verdict, classify


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
    """Counters over a client's life.

    Attributes:
        requests: Requests sent.
        throttled_slot: ``too_many_concurrent_requests`` answers.
        throttled_busy: Other 429 answers (``system_busy``).
        errors: 5xx, 408 and network errors.
        gave_up: Requests that ended with a ``failure``.
        in_flight: Requests sent and not answered yet.
        max_in_flight: The most at once.
        limit: Requests allowed in flight now (``concurrency``, or less as learned).

    """

    requests: int = 0
    throttled_slot: int = 0
    throttled_busy: int = 0
    errors: int = 0
    gave_up: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    limit: int = 0

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
    """Sends GET requests with ``xi-api-key``, at most ``concurrency`` at a time (fewer if the account says so).

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
        self.stats = RestStats(limit=concurrency)
        self._headers = {"xi-api-key": api_key, "Accept": "application/json"}
        self._slots = _Slots(ConcurrencyLimit(concurrency), self.policy.slot_wait, self.stats)
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
        refused = False  # the last attempt was refused a slot: it goes first
        while True:
            level = await self._enter(first=refused)
            answer = await self._attempt(level, url, params, what) if level is not None else None
            if answer is None:
                return RestResult(None, b"", time.time_ns(), attempts, "stopped")
            attempts += 1
            verdict, status, body, received_at = answer
            if verdict.action is Action.USE:
                return RestResult(status, body, received_at, attempts)
            if verdict.action is Action.FATAL:
                raise AuthError(verdict.reason)
            delay = retries.delay(verdict)
            if delay is None:
                self.stats.gave_up += 1
                reason = f"{what} failed {attempts} times, last: {verdict.reason}"
                return RestResult(status, body, received_at, attempts, reason)
            refused = verdict.action is Action.WAIT_FOR_SLOT
            if refused:
                log.debug("%s: %s; retrying when a slot frees", what, verdict.reason)
                stopped = verdict.retry_after is not None and await self._sleep(delay)
            else:
                log.warning("%s: %s; retrying in %.1f s", what, verdict.reason, delay)
                self._not_before = max(self._not_before, time.monotonic() + delay)
                stopped = await self._sleep(delay)
            if stopped:
                return RestResult(status, body, received_at, attempts, "stopped")

    async def _attempt(
        self, level: int, url: str, params: Mapping[str, str] | None, what: str
    ) -> tuple[Verdict, int | None, bytes, int] | None:
        """Send one request in the slot taken at ``level``, and give the slot back.

        Returns its verdict, status, body and arrival time, or ``None`` if
        stopped while holding back (a back-off may have begun while it queued).

        """
        verdict: Verdict | None = None
        try:
            if not await self._hold_back():
                return None
            status, body, retry_after, failure = await self._send(url, params)
            received_at = time.time_ns()
            verdict = classify(status, body, retry_after, now_unix=time.time(), failure=failure, what=what)
        finally:
            self._slots.release(level, verdict.action if verdict is not None else None)
        self._count(verdict)
        return verdict, status, body, received_at

    def _count(self, verdict: Verdict) -> None:
        stats = self.stats
        if verdict.action is Action.WAIT_FOR_SLOT:
            stats.throttled_slot += 1
        elif verdict.throttled:
            stats.throttled_busy += 1
        elif verdict.action is Action.BACK_OFF:
            stats.errors += 1

    async def _enter(self, *, first: bool) -> int | None:
        """Wait for a slot; return the request's level, or ``None`` if stopped meanwhile."""
        entry = self._slots.enter(first=first)
        if not entry.done():
            stopping = asyncio.ensure_future(self.stop.wait())
            waiting: set[asyncio.Future[Any]] = {entry, stopping}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                self._slots.abandon(entry)
                raise
            finally:
                stopping.cancel()
        if self.stop.is_set():
            self._slots.abandon(entry)
            return None
        return entry.result()

    async def _send(
        self, url: str, params: Mapping[str, str] | None
    ) -> tuple[int | None, bytes, str | None, str | None]:
        stats = self.stats
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


class _Slots:
    """Requests in flight, at most the learned limit; waiters go in first come, first served.

    A request refused ``too_many_concurrent_requests`` comes back to the front.
    After such a refusal nobody goes in until a request is served (then its
    slot is free at the server too) or ``slot_wait`` passed (the slots may be
    held by another tool of the account): a refused request's own slot was
    never the server's to give, so giving it back lets nobody in.

    """

    def __init__(self, limit: ConcurrencyLimit, slot_wait: float, stats: RestStats) -> None:
        self.limit = limit
        self.slot_wait = slot_wait
        self.stats = stats
        self.in_flight = 0  # slots given and not released
        self._waiters: deque[asyncio.Future[int]] = deque()
        self._closed: asyncio.TimerHandle | None = None  # reopens the door after a refusal

    def enter(self, *, first: bool) -> asyncio.Future[int]:
        """Queue for a slot; the future gives the level (slots taken, this one included) once in."""
        entry: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(entry)
        else:
            self._waiters.append(entry)
        self._let_in()
        return entry

    def abandon(self, entry: asyncio.Future[int]) -> None:
        """Leave the queue without sending (stopped, cancelled); a slot already given is given back."""
        if entry.done() and not entry.cancelled():
            self.in_flight -= 1
            self._let_in()
            return
        entry.cancel()
        try:
            self._waiters.remove(entry)
        except ValueError:
            pass

    def release(self, level: int, action: Action | None) -> None:
        """Give back the slot of a request sent at ``level`` that ended with ``action`` (``None``: no answer)."""
        self.in_flight -= 1
        limit = self.limit
        if action is Action.WAIT_FOR_SLOT:
            if limit.refused(level):
                log.info(
                    "the account refused %d requests at once (too_many_concurrent_requests): "
                    "%d in flight at most from now",
                    level,
                    limit.limit,
                )
            self._close()
        elif action in (Action.USE, Action.FATAL):
            if limit.served(level):
                log.debug("%d requests in flight allowed again", limit.limit)
            self._open()
        self.stats.limit = limit.limit
        self._let_in()

    def _let_in(self) -> None:
        waiters = self._waiters
        while waiters and self._closed is None and self.in_flight < self.limit.limit:
            entry = waiters.popleft()
            if entry.done():  # its waiter was cancelled
                continue
            self.in_flight += 1
            entry.set_result(self.in_flight)

    def _close(self) -> None:
        if self._closed is not None:
            self._closed.cancel()
        self._closed = asyncio.get_running_loop().call_later(self.slot_wait, self._reopen)

    def _open(self) -> None:
        if self._closed is not None:
            self._closed.cancel()
            self._closed = None

    def _reopen(self) -> None:
        self._closed = None
        self._let_in()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
