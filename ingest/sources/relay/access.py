"""Who may use the relay, and the platform's own answers when they may not. Pure.

Refusals are the status codes and bodies the platform itself answers (see
the simulator and ``docs/elevenlabs-protocol.md``), so a client's own error
handling and reconnect logic behave as they would without the relay:

* the signed-URL call without the relay token, or with a wrong one: 401
  ``invalid_api_key`` (checked first, so the allow-list is not revealed);
* no ``agent_id``: 422, the platform's validation error;
* an agent not on the allow-list: 403 ``agent_not_allowed``;
* a WebSocket with a token the relay did not issue, used, expired or for
  another agent: 403 ``invalid_signature``;
* more connections than allowed at once: 429 ``too_many_concurrent_requests``.

The relay token is compared in constant time.

"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from ingest.sources.relay.config import RelayConfig


__all__ = [
    "Refusal",
    "agent_refusal",
    "busy",
    "invalid_signature",
    "signed_url_refusal",
    "socket_refusal",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer refusing a request: its status and JSON body."""

    status: int
    detail: Any

    def body(self) -> bytes:
        return orjson.dumps({"detail": self.detail})


def _detail(status: str, message: str) -> dict[str, str]:
    return {"status": status, "message": message}


_MISSING_AGENT = Refusal(422, [{"loc": ["query", "agent_id"], "msg": "Field required", "type": "missing"}])
_INVALID_KEY = Refusal(401, _detail("invalid_api_key", "Invalid API key"))


def invalid_signature() -> Refusal:
    """The refusal of a WebSocket whose token is unknown, used, expired or another agent's."""
    return Refusal(403, _detail("invalid_signature", "Missing, used or expired conversation signature"))


def busy(limit: int) -> Refusal:
    """The refusal of a connection beyond ``limit`` at once."""
    return Refusal(
        429, _detail("too_many_concurrent_requests", f"The relay holds {limit} connections at most")
    )


def agent_refusal(config: RelayConfig, agent_id: str | None) -> Refusal | None:
    """Refuse a missing agent id or one not on the allow-list."""
    if not agent_id:
        return _MISSING_AGENT
    if agent_id not in config.agent_ids:
        return Refusal(403, _detail("agent_not_allowed", f"Agent {agent_id} is not relayed here"))
    return None


def signed_url_refusal(
    config: RelayConfig, agent_id: str | None, presented_key: str | None
) -> Refusal | None:
    """Decide the signed-URL call: ``None`` to serve it, else the refusal to answer.

    Args:
        config: The relay's allow-list and token.
        agent_id: The ``agent_id`` query parameter.
        presented_key: The request's ``xi-api-key`` header.

    """
    expected = config.relay_token
    if expected and not (
        presented_key is not None and hmac.compare_digest(presented_key.encode(), expected.encode())
    ):
        return _INVALID_KEY
    return agent_refusal(config, agent_id)


def socket_refusal(config: RelayConfig, agent_id: str | None) -> Refusal | None:
    """Decide a WebSocket request before its token is looked at: the allow-list only.

    A WebSocket needs no relay token: either it carries a single-use token
    from the signed-URL call (which needed the relay token), or it is a
    public agent's conversation, which the platform itself lets anyone open.

    """
    return agent_refusal(config, agent_id)
