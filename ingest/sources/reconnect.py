"""The reconnect policy: how a connection ended, what that means, how long to wait.

Pure: :func:`classify` turns an :class:`Ended` into a :class:`Decision`, and
:class:`Backoff` turns decisions into delays. The delays come from
``websockets.client.backoff`` (one policy for the project), with jitter on
every step. The asyncio shell in :mod:`ingest.sources.agent.client` only sleeps.

Rules:

* refused credentials or agent (HTTP 401/403/404, other 4xx but 429, close
  1008 with an auth or override ``error`` event) are fatal: retrying cannot help;
* a normal end (close 1000) of a conversation that held a user turn (a
  ``user_transcript`` received or a ``user_message`` sent), or that lived at
  least ``healthy_after`` seconds, starts the next conversation after a short
  pause: a short conversation is still a conversation;
* everything else (network errors, HTTP 5xx and 429, closes 1002/1011/3xxx, a
  dropped TCP connection, and a 1000 sooner than ``healthy_after`` with no user
  turn) is a failure that backs off exponentially, so a server that accepts
  and closes at once never causes a tight loop;
* a conversation that held a user turn or lived ``healthy_after`` seconds
  resets the backoff.

"""

from __future__ import annotations

import enum
import os
import random
from collections.abc import Generator
from dataclasses import dataclass

from websockets.client import backoff

from ingest.log.frames import ErrorEvent


__all__ = [
    "RECONNECT_CAUSES",
    "Backoff",
    "Decision",
    "Ended",
    "ReconnectPolicy",
    "Verdict",
    "cause_of",
    "classify",
]

# error_type values of a 1008 close that mean the agent's configuration or our
# flags must change; other 1008s (a frame the server disliked) are retried.
_CONFIG_ERROR_TYPES = frozenset(
    {
        "override_error",
        "missing_dynamic_variable",
        "missing_dynamic_variable_transfer",
        "auth_error",
        "authentication_error",
        "authorization_error",
        "unauthorized",
        "forbidden",
        "invalid_api_key",
    }
)


@dataclass(frozen=True, slots=True)
class Ended:
    """How one connection attempt ended.

    Attributes:
        opened: Whether the WebSocket handshake succeeded.
        lived: Seconds from the handshake to the end (0 if it never opened).
        http_status: The refusing status of the signed-URL call or handshake.
        close_code: The close code received (or 1006 for a dropped connection).
        close_reason: The close reason received.
        error: The last ``error`` event received on the connection.
        failure: A one-line description of a network error, if that is how it ended.
        stopped: Whether we closed it because we were asked to stop.
        user_turns: User turns it held: ``user_transcript`` frames received
            and ``user_message`` frames sent.

    """

    opened: bool
    lived: float = 0.0
    http_status: int | None = None
    close_code: int | None = None
    close_reason: str | None = None
    error: ErrorEvent | None = None
    failure: str | None = None
    stopped: bool = False
    user_turns: int = 0

    def held(self, policy: ReconnectPolicy) -> bool:
        """Whether it was a conversation that proves the server works: a user turn, or ``healthy_after`` seconds."""
        return self.user_turns > 0 or self.lived >= policy.healthy_after


class Verdict(enum.Enum):
    NORMAL = "normal"  # a conversation that ended as conversations do
    FAILURE = "failure"  # transient: back off and try again
    FATAL = "fatal"  # configuration: stop, the user must fix something


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str


def _status_message(status: int, stage: str) -> str:
    if status == 401:
        return f"the {stage} was refused with HTTP 401: check ELEVENLABS_API_KEY"
    if status == 403:
        return (
            f"the {stage} was refused with HTTP 403: the API key may lack access to this agent, "
            "or the agent requires a signed URL (set ELEVENLABS_API_KEY)"
        )
    if status == 404:
        return f"the {stage} was refused with HTTP 404: check --agent-id / AGENT_ID and --base-url"
    return f"the {stage} was refused with HTTP {status}: check --agent-id and --base-url"


def classify(ended: Ended, policy: ReconnectPolicy, *, stage: str = "connection") -> Decision:
    """Decide what an ended connection means for the next one."""
    status = ended.http_status
    if status is not None:
        if status in (401, 403, 404) or (400 <= status < 500 and status != 429):
            return Decision(Verdict.FATAL, _status_message(status, stage))
        return Decision(Verdict.FAILURE, f"HTTP {status}")
    if ended.close_code == 1008:
        error = ended.error
        text = f"{error.error_type or ''} {error.message or ''}".lower() if error else ""
        if error is not None and (
            error.error_type in _CONFIG_ERROR_TYPES or "auth" in text or "override" in text
        ):
            hint = (
                "enable the override in the agent's Security tab, or run with --audio"
                if "override" in text
                else "check the agent's settings and the flags you pass"
            )
            return Decision(Verdict.FATAL, f"the server refused the conversation: {error}; {hint}")
    if ended.failure is not None and not ended.opened:
        return Decision(Verdict.FAILURE, ended.failure)
    if ended.close_code == 1000 and ended.held(policy):
        return Decision(Verdict.NORMAL, "normal end")
    if ended.close_code == 1000:
        return Decision(
            Verdict.FAILURE, f"closed normally after only {ended.lived:.1f} s, before any user turn"
        )
    return Decision(Verdict.FAILURE, ended.failure or f"close {ended.close_code}")


#: Every value :func:`cause_of` returns: a bounded set, fit for a metric's label.
RECONNECT_CAUSES = (
    "normal",
    "short_conversation",
    "network",
    "http_429",
    "http_5xx",
    "http_other",
    "close_1002",
    "close_1006",
    "close_1008",
    "close_1011",
    "close_other",
)

_CLOSE_CAUSES = {1002: "close_1002", 1006: "close_1006", 1008: "close_1008", 1011: "close_1011"}


def cause_of(ended: Ended, decision: Decision) -> str:
    """Name why a connection ended in one word of :data:`RECONNECT_CAUSES` (what the server sent is not a label)."""
    if decision.verdict is Verdict.NORMAL:
        return "normal"
    status = ended.http_status
    if status is not None:
        return "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_other"
    if not ended.opened:
        return "network"
    if ended.close_code == 1000:
        return "short_conversation"
    return _CLOSE_CAUSES.get(ended.close_code or 1006, "close_other")


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Timing of reconnects; every field can be set from a ``CAPTURE_*`` environment variable.

    Attributes:
        initial_delay: The first failure waits a random time in [0, initial_delay).
        min_delay: The second failure waits this long, then it grows by ``factor``.
        factor: Growth of the delay per consecutive failure.
        max_delay: The cap of the delay.
        jitter: Each delay is scaled by a random factor in [1 - jitter, 1].
        healthy_after: A connection that lived this long (or held a user turn)
            resets the backoff, and only then is a close 1000 a normal end.
        normal_pause: The pause before the next conversation after a normal end.

    """

    initial_delay: float = 1.0
    min_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2
    healthy_after: float = 10.0
    normal_pause: float = 1.0

    @classmethod
    def from_env(cls) -> ReconnectPolicy:
        """Read ``CAPTURE_BACKOFF_{INITIAL,MIN,MAX}_DELAY``, ``CAPTURE_BACKOFF_FACTOR``,
        ``CAPTURE_HEALTHY_AFTER`` and ``CAPTURE_NORMAL_PAUSE`` over the defaults."""
        d = cls()
        return cls(
            initial_delay=_env_float("CAPTURE_BACKOFF_INITIAL_DELAY", d.initial_delay),
            min_delay=_env_float("CAPTURE_BACKOFF_MIN_DELAY", d.min_delay),
            factor=_env_float("CAPTURE_BACKOFF_FACTOR", d.factor),
            max_delay=_env_float("CAPTURE_BACKOFF_MAX_DELAY", d.max_delay),
            healthy_after=_env_float("CAPTURE_HEALTHY_AFTER", d.healthy_after),
            normal_pause=_env_float("CAPTURE_NORMAL_PAUSE", d.normal_pause),
        )


class Backoff:
    """Turns a run of decisions into delays; stateful, but free of I/O and clocks."""

    def __init__(self, policy: ReconnectPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._delays: Generator[float] | None = None

    def _fresh(self) -> Generator[float]:
        p = self.policy
        return backoff(p.initial_delay, p.min_delay, p.max_delay, p.factor)

    def next_delay(self, decision: Decision, ended: Ended) -> float:
        """Return how long to wait before the next connection."""
        if ended.held(self.policy):
            self._delays = None
        if decision.verdict is Verdict.NORMAL:
            return self.policy.normal_pause
        if self._delays is None:
            self._delays = self._fresh()
        delay = next(self._delays)
        return delay * (1.0 - self._rng.random() * self.policy.jitter)
