"""Signed URLs: ``GET /v1/convai/conversation/get-signed-url``, and the single-use grants it hands out.

``docs/elevenlabs-protocol.md`` §1.3: with header ``xi-api-key`` the endpoint
answers ``{"signed_url": "wss://…/v1/convai/conversation?agent_id=…&conversation_signature=…"}``
(``ConversationSignedUrlResponseModel``); the URL is valid for 15 minutes and
single use. :class:`SignedUrls` is the book of grants (pure, clock injected);
:meth:`SignedUrls.handle` is the endpoint.

"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from ingest.simulator.responses import error_response, json_response, validation_error


__all__ = ["CONVERSATION_PATH", "SIGNED_URL_PATH", "SIGNED_URL_PATHS", "SignedUrls"]

CONVERSATION_PATH = "/v1/convai/conversation"
SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
#: The endpoint's paths: the underscore spelling is the same operation, documented as deprecated.
SIGNED_URL_PATHS = (SIGNED_URL_PATH, "/v1/convai/conversation/get_signed_url")


@dataclass(frozen=True, slots=True)
class _Grant:
    agent_id: str
    expires_at: float


class SignedUrls:
    """The signed-URL endpoint and its grants: each token opens one conversation of its agent, once.

    Args:
        agent_ids: Known agents; a signed URL for another is refused with 404.
        api_key: If set, the endpoint requires header ``xi-api-key`` equal to
            it (else 401); if ``None`` it takes any key.
        ttl: Seconds a signed URL stays usable.
        clock: :func:`time.monotonic` unless a test gives another.

    Attributes:
        requests: Requests the endpoint answered, refusals included.

    """

    def __init__(
        self,
        agent_ids: Collection[str],
        api_key: str | None,
        *,
        ttl: float = 15 * 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent_ids = frozenset(agent_ids)
        self.api_key = api_key
        self.ttl = ttl
        self._clock = clock
        self._grants: dict[str, _Grant] = {}
        self.requests = 0

    def issue(self, agent_id: str) -> str:
        """Grant a conversation of ``agent_id``; return the token of its signed URL."""
        token = secrets.token_urlsafe(24)
        self._grants[token] = _Grant(agent_id, self._clock() + self.ttl)
        return token

    def redeem(self, token: str | None, agent_id: str | None) -> bool:
        """Use up ``token`` for a conversation of ``agent_id``; whether it was valid, unused and unexpired."""
        grant = self._grants.pop(token, None) if token else None
        return grant is not None and grant.agent_id == agent_id and grant.expires_at >= self._clock()

    async def handle(self, request: web.Request) -> web.Response:
        """Answer ``GET …/get-signed-url?agent_id=…`` with a ``ws://`` URL on the host the client asked."""
        self.requests += 1
        if self.api_key is not None and request.headers.get("xi-api-key") != self.api_key:
            return error_response(401, "invalid_api_key", "Invalid API key")
        agent_id = request.query.get("agent_id")
        if not agent_id:
            return validation_error(["query", "agent_id"], "Field required", "missing")
        if agent_id not in self.agent_ids:
            return error_response(404, "agent_not_found", f"Agent {agent_id} not found")
        query = urlencode({"agent_id": agent_id, "conversation_signature": self.issue(agent_id)})
        return json_response(200, {"signed_url": f"ws://{request.host}{CONVERSATION_PATH}?{query}"})
