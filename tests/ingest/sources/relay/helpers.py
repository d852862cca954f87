"""Running the relay beside synchronous tests, and reading back what it logged."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ingest.log.envelope import LogLine
from ingest.log.reader import iter_log
from ingest.log.writer import LogWriter, events_dir
from ingest.sources.relay import RelayConfig, RelayReport, run_relay
from tests.conftest import TIMEOUT_FACTOR


T = TypeVar("T")
KEY = "sk_relay_upstream_0123456789"
RELAY_TOKEN = "relay-token-0123456789abcdef"
AGENT = "agent_demo"


class RelayThread:
    """``run_relay`` on its own event loop in a thread, with its own log writer in ``data_dir``.

    ``config`` gets ``port=0`` unless it names one; :attr:`port` is known once started.
    """

    def __init__(self, data_dir: Path, config: RelayConfig) -> None:
        self.data_dir = data_dir
        self.config = replace(config, port=0) if config.port == 8766 else config
        self.report = RelayReport()
        self.port = 0
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True, name="relay")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        writer = LogWriter.open(self.data_dir, command="relay test")
        try:
            await run_relay(writer, self.config, self._stop, report=self.report, on_ready=self._on_ready)
        except BaseException as exc:
            self.error = exc
        finally:
            writer.close()
            self._ready.set()

    def _on_ready(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def __enter__(self) -> RelayThread:
        self._thread.start()
        assert self._ready.wait(10 * TIMEOUT_FACTOR), "the relay never became ready"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30 * TIMEOUT_FACTOR)
        assert not self._thread.is_alive(), "the relay did not stop"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the relay's loop (e.g. to read its state safely)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout * TIMEOUT_FACTOR)

    def call(self, function: Callable[[], T]) -> T:
        async def call() -> T:
            return function()

        return self.run(call())

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def logged(data_dir: Path) -> list[LogLine]:
    """Every line of the log, in order."""
    return list(iter_log(events_dir(data_dir)))


class Running:
    """A relay on the test's own event loop (see :func:`relaying`)."""

    def __init__(self, task: asyncio.Task[RelayReport], stop: asyncio.Event, report: RelayReport) -> None:
        self.task = task
        self.stop_event = stop
        self.report = report
        self.port = 0

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def conversation_url(self, agent_id: str = AGENT, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"agent_id": agent_id, **params}.items())
        return f"{self.ws_url}/v1/convai/conversation?{query}"

    async def stop(self) -> RelayReport:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, 30 * TIMEOUT_FACTOR)


@contextlib.asynccontextmanager
async def relaying(data_dir: Path, config: RelayConfig) -> AsyncIterator[Running]:
    """Run the relay (port 0) with its own writer on the running loop for the body; then stop it."""
    writer = LogWriter.open(data_dir, command="relay test")
    stop = asyncio.Event()
    report = RelayReport()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_relay(writer, replace(config, port=0), stop, report=report, on_ready=ready.set_result)
    )
    running = Running(task, stop, report)
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=10 * TIMEOUT_FACTOR, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()
        running.port = ready.result()
        yield running
    finally:
        if not task.done():
            await running.stop()
        writer.close()


def config(sim_url: str, **overrides: Any) -> RelayConfig:
    """A relay of the simulator's ``agent_demo`` with the upstream key."""
    return RelayConfig(**{"agent_ids": [AGENT], "base_url": sim_url, "api_key": KEY, **overrides})


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
