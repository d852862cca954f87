"""The relay's URLs: what it hands clients, and where it connects upstream. Pure functions.

Query parameters the client adds (``source``, ``version``, ``environment``,
``branch_id``, …) travel upstream as they came, byte for byte: the relay only
takes out its own token and never re-encodes the rest.

"""

from __future__ import annotations

from urllib.parse import quote, unquote_plus, urlsplit

from ingest.errors import ConfigError
from ingest.sources.urls import ws_base_url


__all__ = [
    "CONVERSATION_PATH",
    "SIGNED_URL_PATHS",
    "TOKEN_PARAMS",
    "query_names",
    "relay_base_url",
    "relay_conversation_url",
    "token_of",
    "upstream_public_url",
    "upstream_signed_url",
]

CONVERSATION_PATH = "/v1/convai/conversation"
#: The signed-URL operation; the underscore spelling is the same one, documented as deprecated.
SIGNED_URL_PATHS = ("/v1/convai/conversation/get-signed-url", "/v1/convai/conversation/get_signed_url")
#: The relay token travels as the platform's own credential parameter; the docs spell it both ways.
TOKEN_PARAMS = ("conversation_signature", "token")


def _pairs(query: str) -> list[tuple[str, str]]:
    """Split a raw query string into (decoded name, raw ``name=value`` part)."""
    return [(unquote_plus(part.partition("=")[0]), part) for part in query.split("&") if part]


def query_names(query: str) -> set[str]:
    """The decoded parameter names of a raw query string."""
    return {name for name, _ in _pairs(query)}


def token_of(query: str) -> str | None:
    """Return the relay token a WebSocket request's raw query carries (the last one), if any."""
    found = None
    for name, part in _pairs(query):
        if name in TOKEN_PARAMS:
            found = unquote_plus(part.partition("=")[2])
    return found


def relay_base_url(
    *, public_url: str | None, host: str | None, forwarded_proto: str | None, listen_host: str, port: int
) -> str:
    """Return the ``ws(s)://host[:port]`` base of the relay URLs handed to a client.

    Args:
        public_url: The configured public URL (``--public-url``), used as given.
        host: The request's ``Host`` header, if any.
        forwarded_proto: ``X-Forwarded-Proto`` set by a TLS terminator in front.
        listen_host: The interface listened on (when the request has no ``Host``).
        port: The port listened on.

    """
    if public_url:
        return ws_base_url(public_url)
    scheme = "wss" if (forwarded_proto or "").strip().lower() == "https" else "ws"
    if not host:
        shown = "127.0.0.1" if listen_host in ("", "0.0.0.0", "::") else listen_host
        host = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    return f"{scheme}://{host}"


def relay_conversation_url(base: str, agent_id: str, token: str) -> str:
    """Return the relay's stand-in for a signed URL."""
    return (
        f"{base}{CONVERSATION_PATH}?agent_id={quote(agent_id, safe='')}"
        f"&{TOKEN_PARAMS[0]}={quote(token, safe='')}"
    )


def upstream_signed_url(signed_url: str, client_query: str) -> str:
    """Return the platform's signed URL plus the client's own extra parameters.

    The client's ``agent_id`` and token are left out, and so is any parameter
    the signed URL already has (the platform's value wins).

    Raises:
        ConfigError: the platform's signed URL is not a ws(s) URL.

    """
    parts = urlsplit(signed_url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError("the platform's signed URL is not a ws(s):// URL")
    taken = query_names(parts.query) | {"agent_id", *TOKEN_PARAMS}
    extra = [part for name, part in _pairs(client_query) if name not in taken]
    if not extra:
        return signed_url
    return signed_url + ("&" if parts.query else "?") + "&".join(extra)


def upstream_public_url(base_url: str, client_query: str) -> str:
    """Return the platform's conversation URL with the client's query, for a public agent."""
    return f"{ws_base_url(base_url)}{CONVERSATION_PATH}?{client_query}"
