"""What the relay serves, for whom, and its bounds.

Not an open proxy: only the agents on the allow-list are relayed, and a relay
that listens beyond loopback must be given a relay token, which the
signed-URL call must present as ``xi-api-key``.

"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field

from ingest.errors import ConfigError
from ingest.secrets import RELAY_TOKEN_ENV
from ingest.sources.relay.tokens import DEFAULT_MAX_TOKENS, SIGNED_URL_TTL
from ingest.sources.urls import DEFAULT_BASE_URL, ws_base_url


__all__ = ["MAX_FRAME_BYTES", "MIN_RELAY_TOKEN_LENGTH", "RELAY_TOKEN_ENV", "RelayConfig", "is_loopback"]

MIN_RELAY_TOKEN_LENGTH = 16
#: The largest frame relayed either way, as the official SDKs accept.
MAX_FRAME_BYTES = 16 * 1024 * 1024


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the relay reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost, or every interface ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class RelayConfig:
    """Where the relay listens, what it relays, and its bounds.

    Attributes:
        agent_ids: The allow-list: only these agents are relayed (required).
        base_url: The platform (``https://api.elevenlabs.io``, a residency
            host, or the simulator); http→ws and https→wss for the sockets.
        api_key: Fetches the signed URLs upstream; never sent to clients,
            logged or printed. Without one only public agents can be relayed.
        relay_token: What the signed-URL call must present as ``xi-api-key``
            (``CAPTURE_RELAY_TOKEN``); required beyond loopback. Never logged.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        public_url: The relay's address as clients reach it (``wss://…`` behind
            a TLS terminator); by default the request's ``Host`` (and
            ``X-Forwarded-Proto``).
        max_frame_bytes: The largest frame relayed either way (1009 beyond).
        open_timeout: Seconds allowed for the upstream signed-URL call and handshake.
        close_timeout: Seconds a closing handshake may take before the TCP
            connection is dropped.
        stall_timeout: A frame that cannot be forwarded within this many
            seconds (the receiving side does not read) closes the connection.
        max_connections: Relayed connections at once; beyond, 429.
        signed_url_ttl: Seconds a relay token is valid (as the signed URL it stands for).
        max_tokens: Unused relay tokens kept at most.
        shutdown_timeout: Seconds open connections get to close on stop.

    Raises:
        ConfigError: no agent is allowed, the relay listens beyond loopback
            without a relay token, the token is too short, the base URL is
            not usable, or a bound is out of range.

    """

    agent_ids: Collection[str]
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    relay_token: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8766
    public_url: str | None = None
    max_frame_bytes: int = MAX_FRAME_BYTES
    open_timeout: float = 10.0
    close_timeout: float = 5.0
    stall_timeout: float = 10.0
    max_connections: int = 10_000
    signed_url_ttl: float = SIGNED_URL_TTL
    max_tokens: int = DEFAULT_MAX_TOKENS
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        allowed = frozenset(a.strip() for a in self.agent_ids if a.strip())
        if not allowed:
            raise ConfigError("no agent allowed: pass --agent-id (repeatable) for each agent to relay")
        object.__setattr__(self, "agent_ids", allowed)
        if self.relay_token is not None and len(self.relay_token) < MIN_RELAY_TOKEN_LENGTH:
            raise ConfigError(
                f"{RELAY_TOKEN_ENV} is too short: use at least {MIN_RELAY_TOKEN_LENGTH} random characters, "
                'e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        if not self.relay_token and not is_loopback(self.host):
            raise ConfigError(
                f"the relay listens on {self.host!r}, beyond loopback: set {RELAY_TOKEN_ENV} "
                "(clients send it as xi-api-key on the signed-URL call), or listen on 127.0.0.1"
            )
        ws_base_url(self.base_url)
        if self.public_url is not None:
            ws_base_url(self.public_url)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port")
        if self.max_frame_bytes < 1 or self.max_connections < 1 or self.max_tokens < 1:
            raise ConfigError("the relay's frame, connection and token bounds must be at least 1")
        if min(self.open_timeout, self.close_timeout, self.stall_timeout, self.signed_url_ttl) <= 0:
            raise ConfigError("the relay's timeouts must be positive")
