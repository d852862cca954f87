"""What a REST answer means and how long to wait before asking again. Pure.

ElevenLabs throttles on concurrency, not on a request rate
(``docs/elevenlabs-protocol.md`` §6b). A 429's body says which limit was hit:

* ``detail.status == "too_many_concurrent_requests"``: the account has more
  requests in flight than its plan allows. Queue the request: retry as soon as
  one of ours finishes (or after a short fixed wait), without growing delays.
* ``detail.status == "system_busy"`` (or any other 429): the service is
  overloaded. Back off exponentially, with jitter, and hold every request back.

When ``Retry-After`` is present it is honoured: the retry is never sooner.
HTTP 5xx, 408 and network errors back off too. 401 and 403 are fatal: the key
is wrong or lacks permission, and retrying cannot help. Anything else (2xx,
404, 422, …) is the answer, for the caller to interpret.

:func:`classify` turns an answer into a :class:`Verdict`; :class:`Retries`
turns the verdicts of one request into delays, or gives up.

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

    """

    action: Action
    reason: str
    retry_after: float | None = None


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
            return Verdict(Action.WAIT_FOR_SLOT, f"HTTP 429 {SLOT}", wait)
        return Verdict(Action.BACK_OFF, f"HTTP 429 {kind or 'too many requests'}", wait)
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
        max_attempts: Give up after this many backoff verdicts for one request.
        slot_wait: Without ``Retry-After``, a request told
            ``too_many_concurrent_requests`` retries when one of ours finishes,
            or after this many seconds if none does.
        max_slot_waits: Give up after this many slot waits for one request.
        max_retry_after: A ``Retry-After`` above this is cut to it.

    """

    initial_delay: float = 1.0
    min_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2
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
        return honoured if honoured is not None else computed
