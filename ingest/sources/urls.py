"""Where the Agents WebSocket lives: URLs and the first frame. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ingest.errors import ConfigError


__all__ = [
    "DEFAULT_BASE_URL",
    "initiation_frame",
    "public_ws_url",
    "signed_url_endpoint",
    "ws_base_url",
]

DEFAULT_BASE_URL = "https://api.elevenlabs.io"


def _split(base_url: str) -> tuple[str, str, str]:
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ConfigError(
            f"--base-url {base_url!r} is not an http(s) URL; use e.g. https://api.elevenlabs.io "
            "or https://api.eu.residency.elevenlabs.io"
        )
    return parts.scheme, parts.netloc, parts.path.rstrip("/")


def ws_base_url(base_url: str) -> str:
    """Turn an API base URL into its WebSocket form (http→ws, https→wss)."""
    scheme, netloc, path = _split(base_url)
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    return urlunsplit((ws_scheme, netloc, path, "", ""))


def http_base_url(base_url: str) -> str:
    """Turn a base URL into its HTTP form (ws→http, wss→https)."""
    scheme, netloc, path = _split(base_url)
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return urlunsplit((http_scheme, netloc, path, "", ""))


def public_ws_url(base_url: str, agent_id: str) -> str:
    """Return the conversation URL of a public agent (no credentials)."""
    return f"{ws_base_url(base_url)}/v1/convai/conversation?agent_id={quote(agent_id, safe='')}"


def signed_url_endpoint(base_url: str, agent_id: str) -> str:
    """Return the REST URL that hands out a signed conversation URL (needs ``xi-api-key``)."""
    return (
        f"{http_base_url(base_url)}/v1/convai/conversation/get-signed-url?agent_id={quote(agent_id, safe='')}"
    )


def initiation_frame(
    *,
    text_only: bool,
    user_id: str | None = None,
    dynamic_variables: Mapping[str, str | int | float | bool] | None = None,
) -> dict[str, Any]:
    """Build ``conversation_initiation_client_data``, the first frame a client sends."""
    frame: dict[str, Any] = {"type": "conversation_initiation_client_data"}
    if text_only:
        frame["conversation_config_override"] = {"conversation": {"text_only": True}}
    if dynamic_variables:
        frame["dynamic_variables"] = dict(dynamic_variables)
    if user_id:
        frame["user_id"] = user_id
    return frame
