"""The platform's HTTP answers as values, and the key check on a loopback request."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web

from ingest.simulator.responses import (
    api_key_ok,
    bytes_response,
    error_response,
    json_response,
    upgrade_required,
    validation_error,
)
from tests.ingest.simulator.peer import run, serving


def test_bodies_and_statuses() -> None:
    error = error_response(429, "system_busy", "Busy.")
    assert (error.status, error.content_type) == (429, "application/json")
    assert orjson.loads(error.body) == {"detail": {"status": "system_busy", "message": "Busy."}}  # type: ignore[arg-type]
    invalid = validation_error(["query", "agent_id"], "Field required", "missing")
    assert orjson.loads(invalid.body) == {  # type: ignore[arg-type]
        "detail": [{"loc": ["query", "agent_id"], "msg": "Field required", "type": "missing"}]
    }
    assert invalid.status == 422
    assert bytes_response(200, b'{"a":"\\u00e1"}').body == b'{"a":"\\u00e1"}'  # kept, not re-encoded
    assert json_response(200, {"a": "á"}).body == '{"a":"á"}'.encode()
    upgrade = upgrade_required()
    assert (upgrade.status, upgrade.headers["Upgrade"]) == (426, "websocket")


@pytest.mark.parametrize(
    ("api_key", "sent", "required", "ok"),
    [
        ("k", "k", False, True),
        ("k", "other", False, False),
        ("k", None, False, False),
        (None, "anything", True, True),
        (None, None, True, False),
        (None, None, False, True),
    ],
)
def test_the_key_check(api_key: str | None, sent: str | None, required: bool, ok: bool) -> None:
    async def main() -> bool:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(text=str(api_key_ok(request, api_key, required=required)))

        app = web.Application()
        app.router.add_get("/", handle)
        headers = {"xi-api-key": sent} if sent is not None else {}
        async with (
            serving(app) as url,
            aiohttp.ClientSession() as http,
            http.get(url, headers=headers) as response,
        ):
            return await response.text() == "True"

    assert run(main()) is ok
