"""A raw WebSocket client for the simulator's sockets, and the shared bits of their tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ingest.simulator import ConnectionRecord, Scenario, Simulator
from tests.conftest import TIMEOUT_FACTOR


T = TypeVar("T")

TEXT_INIT: dict[str, Any] = {
    "type": "conversation_initiation_client_data",
    "conversation_config_override": {"conversation": {"text_only": True}},
}
SDK_STYLE_INIT: dict[str, Any] = {
    "type": "conversation_initiation_client_data",
    "conversation_config_override": {"text_only": True},
}
AUDIO_INIT: dict[str, Any] = {"type": "conversation_initiation_client_data"}
QUIET = Scenario(name="quiet", first_message=None, user_turns=[], extra_events=False, end="wait")
WAIT = 5.0 * TIMEOUT_FACTOR


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 30 * TIMEOUT_FACTOR))


def parse(data: str | bytes) -> dict[str, Any] | None:
    """The frame as a JSON object, or ``None`` (binary, not JSON, not an object)."""
    if isinstance(data, bytes):
        return None
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(data)
        return value if isinstance(value, dict) else None
    return None


def of_kind(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("type") == kind


class Peer:
    """A raw client that keeps every frame and answers pings unless told not to."""

    def __init__(self, ws: ClientConnection, *, pong: bool) -> None:
        self.ws = ws
        self.pong = pong
        self.frames: list[str | bytes] = []
        self.messages: list[dict[str, Any]] = []

    async def next(self, timeout: float = WAIT) -> str | bytes:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        self.frames.append(data)
        message = parse(data)
        if message is not None:
            self.messages.append(message)
            # Once the server's close frame is parsed, a send would wait for the
            # TCP close, which a paused (full-queue) reader never sees.
            if self.pong and message.get("type") == "ping" and self.ws.state is State.OPEN:
                pong = {"type": "pong", "event_id": message["ping_event"]["event_id"]}
                await self.ws.send(orjson.dumps(pong).decode())
        return data

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        """Read until a JSON object frame satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            message = parse(await self.next(max(0.0, deadline - time.monotonic())))
            if message is not None and predicate(message):
                return message

    async def until_closed(self, timeout: float = WAIT) -> tuple[int | None, str | None]:
        """Read everything until the server closes; return the close code and reason received."""
        deadline = time.monotonic() + timeout
        with pytest.raises(ConnectionClosed):
            while True:
                await self.next(max(0.0, deadline - time.monotonic()))
        return self.ws.close_code, self.ws.close_reason

    @asynccontextmanager
    async def pumping(self) -> AsyncIterator[None]:
        """Keep reading (and answering pings) in the background while the body runs."""

        async def pump() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.next(timeout=60)

        task = asyncio.create_task(pump())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]


@asynccontextmanager
async def peer(
    url: str, init: dict[str, Any] | None = TEXT_INIT, *, pong: bool = True, **options: Any
) -> AsyncIterator[Peer]:
    """Connect to ``url``, send ``init`` first (unless ``None``), and read with a :class:`Peer`."""
    async with connect(url, max_size=16 * 1024 * 1024, open_timeout=WAIT, **options) as ws:
        if init is not None:
            await ws.send(orjson.dumps(init).decode())
        yield Peer(ws, pong=pong)


def only(sim: Simulator) -> ConnectionRecord:
    assert len(sim.connections) == 1
    return sim.connections[0]


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
