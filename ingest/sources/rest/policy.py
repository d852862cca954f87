"""What a REST answer means and how long to wait before asking again. Pure.

ElevenLabs throttles on concurrency, not on a request rate
(``docs/elevenlabs-protocol.md`` §6b). A 429's body says which limit was hit:

* ``detail.status == "too_many_concurrent_requests"``: the account has more
  requests in flight than its plan allows. Queue the request, without growing
  delays, and send fewer at once: :class:`ConcurrencyLimit` learns the limit.
* ``detail.status == "system_busy"`` (or any other 429): the service is
  overloaded. Back off exponentially, with jitter, never less than
  :attr:`RetryPolicy.busy_floor`, and hold every request back.

When ``Retry-After`` is present it is honoured: the retry is never sooner.
HTTP 5xx, 408 and network errors back off too. 401 and 403 are fatal: the key
is wrong or lacks permission, and retrying cannot help. Anything else (2xx,
404, 422, …) is the answer, for the caller to interpret.

:func:`classify` turns an answer into a :class:`Verdict`; :class:`Retries`
turns the verdicts of one request into delays, or gives up;
:class:`ConcurrencyLimit` turns the verdicts of all requests into how many may
be in flight.

"""

from __future__ import annotations

import enum
import random
from collections.abc import Generator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from websockets.client import backoff


__all__ = [
    "Action",
    "ConcurrencyLimit",
    "RetryPolicy",
    "Retries",
    "Verdict",
    "classify",
    "detail_status",
    "parse_retry_after",
    "refused_message",
]

SLOT = "too_many_concurrent_requests"
BUSY = "system_busy"


class Action(enum.Enum):
    USE = "use"  # the answer, good or bad, for the caller
    WAIT_FOR_SLOT = "wait_for_slot"  # 429 too_many_concurrent_requests: queue, don't back off
    BACK_OFF = "back_off"  # 429 system_busy, 5xx, network: exponential backoff
    FATAL = "fatal"  # 401/403: fix the key


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one answer means.

    Attributes:
        action: What to do.
        reason: One line for the process log (never the key).
        retry_after: Seconds the server asked us to wait (``Retry-After``), if any.
        throttled: The answer was a 429.

    """

    action: Action
    reason: str
    retry_after: float | None = None
    throttled: bool = False


def detail_status(body: bytes) -> str | None:
    """Return ``detail.status`` of an error body, or ``None``."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    detail = data.get("detail") if isinstance(data, dict) else None
    status = detail.get("status") if isinstance(detail, dict) else None
    return status if isinstance(status, str) else None


def parse_retry_after(value: str | None, now_unix: float) -> float | None:
    """Parse ``Retry-After`` (seconds, possibly fractional, or an HTTP date) into seconds from now.

    Returns ``None`` when absent or unparsable; never a negative number.

    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now_unix)


def refused_message(status: int, what: str) -> str:
    """The one line shown when the API refuses the key (401) or its permissions (403)."""
    if status == 401:
        return f"{what} was refused with HTTP 401: check ELEVENLABS_API_KEY"
    return (
        f"{what} was refused with HTTP {status}: the API key lacks permission "
        "(it needs access to the agent's conversations)"
    )


def classify(
    status: int | None,
    body: bytes,
    retry_after: str | None,
    *,
    now_unix: float,
    failure: str | None = None,
    what: str = "the request",
) -> Verdict:
    """Decide what an answer means.

    Args:
        status: The HTTP status, or ``None`` when no answer came (``failure`` says why).
        body: The response body.
        retry_after: The ``Retry-After`` header.
        now_unix: The current time, for an HTTP-date ``Retry-After``.
        failure: A one-line description of a network error.
        what: Names the request in messages.

    """
    if status is None:
        return Verdict(Action.BACK_OFF, failure or "no answer")
    wait = parse_retry_after(retry_after, now_unix)
    if status in (401, 403):
        return Verdict(Action.FATAL, refused_message(status, what))
    if status == 429:
        kind = detail_status(body)
        if kind == SLOT:
            return Verdict(Action.WAIT_FOR_SLOT, f"HTTP 429 {SLOT}", wait, throttled=True)
        return Verdict(Action.BACK_OFF, f"HTTP 429 {kind or 'too many requests'}", wait, throttled=True)
    if status >= 500 or status == 408:
        return Verdict(Action.BACK_OFF, f"HTTP {status}", wait)
    return Verdict(Action.USE, f"HTTP {status}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between attempts of one request, and when to give up.

    Attributes:
        initial_delay: Backoff: the first retry waits a random time in [0, initial_delay).
        min_delay: Backoff: the second waits this long, then it grows by ``factor``.
        factor: Backoff growth per attempt.
        max_delay: Backoff cap.
        jitter: Each backoff delay is scaled by a random factor in [1 - jitter, 1].
        busy_floor: A 429 that asks to back off (``system_busy``) is retried
            no sooner than this, whatever the jitter; a longer ``Retry-After`` wins.
        max_attempts: Give up after this many backoff verdicts for one request.
        slot_wait: Without ``Retry-After``, a request told
            ``too_many_concurrent_requests`` retries when one of ours is
            served, or after this many seconds if none is.
        max_slot_waits: Give up after this many slot waits for one request.
        max_retry_after: A ``Retry-After`` above this is cut to it.

    """

    initial_delay: float = 1.0
    min_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2
    busy_floor: float = 0.5
    max_attempts: int = 8
    slot_wait: float = 1.0
    max_slot_waits: int = 300
    max_retry_after: float = 600.0


class Retries:
    """The retry state of one request: attempts so far, and the next delay. No clocks, no I/O."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.backoffs = 0
        self.slot_waits = 0
        self._rng = rng or random.Random()
        self._delays: Generator[float] | None = None

    def delay(self, verdict: Verdict) -> float | None:
        """Return the seconds to wait before the next attempt, or ``None`` to give up.

        For :attr:`Action.WAIT_FOR_SLOT` without ``Retry-After`` the value is
        the longest wait; the caller retries sooner when a slot frees.

        """
        p = self.policy
        honoured = min(verdict.retry_after, p.max_retry_after) if verdict.retry_after is not None else None
        if verdict.action is Action.WAIT_FOR_SLOT:
            self.slot_waits += 1
            if self.slot_waits > p.max_slot_waits:
                return None
            return honoured if honoured is not None else p.slot_wait
        if verdict.action is not Action.BACK_OFF:
            raise ValueError(f"no retry for {verdict.action}")
        self.backoffs += 1
        if self.backoffs >= p.max_attempts:
            return None
        if self._delays is None:
            self._delays = backoff(p.initial_delay, p.min_delay, p.max_delay, p.factor)
        computed = next(self._delays) * (1.0 - self._rng.random() * p.jitter)
        delay = honoured if honoured is not None else computed
        # The first delay of the series may be near zero: fine after a network
        # error, not when the platform said it is overloaded.
        return max(delay, p.busy_floor) if verdict.throttled else delay


# Raises are this many times rarer after each refused one, at most.
_MAX_STRIKES = 16


class ConcurrencyLimit:
    """How many requests may be in flight: at most ``ceiling``, less when the account allows less.

    The plan's limit is not published per key and other tools of the account
    use it too, so it is learned from ``too_many_concurrent_requests``,
    AIMD-style, and the caller never holds more than :attr:`limit` requests in
    flight:

    * a request refused as the *n*-th in flight says the account had room for
      *n* - 1 of ours at most: the limit comes down to that at once (a refusal
      of a request sent before the limit came down teaches nothing);
    * after ``patience`` × limit requests served while the limit was full, it
      goes up by one (a probe). A probe that is refused doubles the wait for
      the next one; one that holds for a whole limit's worth of requests
      resets it. Requests refused over a run therefore grow with the
      logarithm of the requests served, not with their number or with time.

    Levels count the caller's requests in flight when a request was sent,
    itself included. Pure: no clocks, no I/O.

    Args:
        ceiling: The most ever allowed (``--concurrency``); the first limit.
        patience: Windows of served requests before a probe.

    """

    def __init__(self, ceiling: int, *, patience: int = 4) -> None:
        if ceiling < 1 or patience < 1:
            raise ValueError("ceiling and patience must be at least 1")
        self.ceiling = ceiling
        self.patience = patience
        self.limit = ceiling
        self._refused_at: int | None = None  # the lowest level refused, until a probe there holds
        self._strikes = 0  # probes refused since the last one that held
        self._probing = True  # the limit went up (or is the ceiling, a guess) since it last came down
        self._served = 0  # at a full limit, since the limit last changed
        self._held = 0  # served at the refused level or above

    def refused(self, level: int) -> bool:
        """Take in a ``too_many_concurrent_requests`` of a request sent at ``level``; return whether the limit fell."""
        bound = max(1, level - 1)
        if bound >= self.limit:
            return False
        if self._probing:
            self._strikes = min(self._strikes + 1, _MAX_STRIKES)
            self._probing = False
        self.limit = bound
        self._refused_at = level
        self._served = self._held = 0
        return True

    def served(self, level: int) -> bool:
        """Take in an answer (not a 429) to a request sent at ``level``; return whether the limit rose."""
        if level < self.limit:
            return False  # the limit did not hold anything back: it says nothing about the account
        if self._refused_at is not None and level >= self._refused_at:
            self._held += 1
            if self._held >= self._refused_at:
                # Where we were refused works now: the account has more room.
                self._refused_at = None
                self._strikes = 0
        self._served += 1
        if self.limit >= self.ceiling or self._served < self.patience * self.limit * 2**self._strikes:
            return False
        self.limit += 1
        self._probing = True
        self._served = 0
        return True
