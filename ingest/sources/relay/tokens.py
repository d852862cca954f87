"""Single-use relay tokens standing for the platform's signed URLs. Pure: the clock is injected.

The signed-URL call hands the client a relay URL carrying an opaque token
instead of the platform's signed URL, which never leaves the relay. The
WebSocket that presents the token is connected upstream with the signed URL it
stands for. A token is good once, for the agent it was issued for, and for as
long as the signed URL is (15 minutes, as the platform documents).

The table is bounded: past ``max_tokens`` the oldest token is dropped (its
client gets the platform's refusal for a used signature), so a caller holding
the relay token cannot grow it without bound. Expired tokens are dropped as new
ones are issued; every operation is O(1) amortised.

"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


__all__ = ["DEFAULT_MAX_TOKENS", "SIGNED_URL_TTL", "Grant", "TokenTable"]

#: How long the platform's signed URLs are valid (docs: "Signed URL expiration").
SIGNED_URL_TTL = 15 * 60.0
DEFAULT_MAX_TOKENS = 100_000


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token stands for."""

    agent_id: str
    signed_url: str
    expires_at: float


class TokenTable:
    """Issue and redeem single-use tokens.

    Args:
        clock: Monotonic seconds (``time.monotonic`` in the shell).
        ttl: Seconds a token is valid after it is issued.
        max_tokens: Tokens kept at most; the oldest is dropped beyond.
        new_token: Makes a fresh opaque token; injectable for tests.

    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl: float = SIGNED_URL_TTL,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_tokens
        self._new = new_token
        # Insertion order is expiry order: every grant lives for the same ttl.
        self._grants: OrderedDict[str, Grant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._grants)

    def issue(self, agent_id: str, signed_url: str) -> str:
        """Return a new token standing for ``signed_url`` of ``agent_id``."""
        now = self._clock()
        self._expire(now)
        while len(self._grants) >= self._max:
            self._grants.popitem(last=False)
        token = self._new()
        self._grants[token] = Grant(agent_id, signed_url, now + self._ttl)
        return token

    def redeem(self, token: str, agent_id: str | None) -> str | None:
        """Use ``token`` up and return its signed URL; ``None`` if unknown, used, expired or another agent's."""
        grant = self._grants.pop(token, None)
        if grant is None or grant.expires_at <= self._clock() or grant.agent_id != agent_id:
            return None
        return grant.signed_url

    def _expire(self, now: float) -> None:
        grants = self._grants
        while grants:
            token = next(iter(grants))
            if grants[token].expires_at > now:
                return
            del grants[token]
