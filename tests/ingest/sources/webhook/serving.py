"""Running the webhook receiver on loopback for a test: a real aiohttp server, its own log, real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ingest.log.envelope import LogLine
from ingest.log.reader import iter_log
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from ingest.simulator.webhook_sender import Delivery, DeliveryFactory, send
from ingest.sources.webhook.receiver import WebhookConfig, WebhookStats, run_webhook_server
from tests.conftest import TIMEOUT_FACTOR


SECRET = "wsec_test_0123456789abcdef"
TIMEOUT = 10 * TIMEOUT_FACTOR


@dataclass
class Running:
    """A receiver started by :func:`receiving`."""

    url: str
    port: int
    writer: LogWriter
    stats: WebhookStats
    stop: asyncio.Event
    session: aiohttp.ClientSession

    async def post(self, delivery: Delivery) -> int:
        return await send(self.session, self.url, delivery)

    async def post_raw(self, body: Any, headers: dict[str, str], url: str | None = None) -> int:
        async with self.session.post(url or self.url, data=body, headers=headers) as response:
            await response.read()
            return response.status


@asynccontextmanager
async def receiving(data_dir: Path, **config: Any) -> AsyncIterator[Running]:
    """Run the receiver on 127.0.0.1:0 with its own writer; stop and close on exit."""
    writer = LogWriter.open(data_dir, fsync=config.pop("fsync", FsyncPolicy.INTERVAL), command="test")
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stats = WebhookStats()
    server = asyncio.create_task(
        run_webhook_server(
            writer,
            WebhookConfig(secret=SECRET, port=0, **config),
            stop,
            stats=stats,
            on_ready=ready.set_result,
        )
    )
    try:
        waiting: set[asyncio.Future[Any]] = {ready, server}
        await asyncio.wait(waiting, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()
        url = f"http://127.0.0.1:{ready.result()}{config.get('path', '/webhooks/elevenlabs')}"
        async with aiohttp.ClientSession() as session:
            yield Running(url, ready.result(), writer, stats, stop, session)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(server, TIMEOUT)
        finally:
            writer.close()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def lines(data_dir: Path) -> list[LogLine]:
    return list(iter_log(events_dir(data_dir)))


def log_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(events_dir(data_dir).glob("*.jsonl")))


def factory(seed: int = 0) -> DeliveryFactory:
    return DeliveryFactory(SECRET, seed=seed)


class Heartbeat:
    """Ticks on the running loop every few milliseconds; :attr:`worst_gap` is the longest the loop kept it waiting.

    A stall of the event loop (a handler that computes instead of awaiting)
    shows as a gap: the tick comes late by as long as the loop was blocked.
    The tick still pending counts too, so a stall that has just ended shows
    before the heartbeat has run again.

    """

    PERIOD = 0.005

    def __init__(self) -> None:
        self._worst = 0.0
        self._since = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def worst_gap(self) -> float:
        """Seconds: the longest a tick came late, the pending one included."""
        pending = asyncio.get_running_loop().time() - self._since - self.PERIOD
        return max(self._worst, pending)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._since = loop.time()
            await asyncio.sleep(self.PERIOD)
            self._worst = max(self._worst, loop.time() - self._since - self.PERIOD)

    async def __aenter__(self) -> Heartbeat:
        self._since = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a bare TCP connection to the receiver, for requests aiohttp's client would not send."""
    return await asyncio.open_connection("127.0.0.1", port)


def request_head(path: str, headers: dict[str, str], *, content_length: int | None) -> bytes:
    """A POST's request line and headers; chunked transfer encoding when ``content_length`` is None."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(
        f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)
