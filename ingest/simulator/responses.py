"""How the simulated platform answers over HTTP: its error bodies, JSON responses and key check.

The platform's errors are ``{"detail": {"status": …, "message": …}}`` (422s are
FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``); bodies are
``application/json``. Shared by the surfaces that answer HTTP (signed URLs,
the Conversations API, and the refusals of the two sockets).

"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson
from aiohttp import web


__all__ = [
    "Handshake",
    "api_key_ok",
    "bytes_response",
    "error_response",
    "json_response",
    "open_or_refuse",
    "upgrade_required",
    "validation_error",
]


def json_response(status: int, body: Any) -> web.Response:
    """A JSON response of ``body``."""
    return bytes_response(status, orjson.dumps(body))


def bytes_response(status: int, body: bytes) -> web.Response:
    """A JSON response whose body is ``body`` exactly (the bytes a client must keep)."""
    return web.Response(status=status, body=body, content_type="application/json")


def error_response(http_status: int, status: str, message: str) -> web.Response:
    """An error in the platform's shape: ``{"detail": {"status": status, "message": message}}``."""
    return json_response(http_status, {"detail": {"status": status, "message": message}})


def validation_error(location: list[str], message: str, kind: str) -> web.Response:
    """A 422 in FastAPI's shape, as the platform answers a bad query."""
    return json_response(422, {"detail": [{"loc": location, "msg": message, "type": kind}]})


def api_key_ok(request: web.Request, api_key: str | None, *, required: bool) -> bool:
    """Whether the request's ``xi-api-key`` is acceptable.

    With ``api_key`` set, it must equal it; without, any key passes, and a
    missing one passes unless ``required``.

    """
    key = request.headers.get("xi-api-key")
    if api_key is not None:
        return key == api_key
    return key is not None or not required


def upgrade_required() -> web.Response:
    """426: a plain HTTP request on a WebSocket path."""
    return web.Response(status=426, text="Upgrade Required\n", headers={"Upgrade": "websocket"})


class Handshake(Protocol):
    """The record of a handshake attempt: what :func:`open_or_refuse` fills in."""

    http_status: int | None
    opened_at: float | None
    closed_at: float | None


async def open_or_refuse(
    ws: web.WebSocketResponse, request: web.Request, record: Handshake, refusal: web.Response | None
) -> web.Response | None:
    """Answer a WebSocket handshake: return ``refusal`` if any, else open ``ws`` (101); record which.

    Returns:
        The response to answer with (the refusal), or ``None`` once ``ws`` is open.

    """
    if refusal is not None:
        record.http_status = refusal.status
        record.closed_at = time.monotonic()
        return refusal
    await ws.prepare(request)
    record.http_status = 101
    record.opened_at = time.monotonic()
    return None
