"""The fake ElevenLabs platform on one loopback port: the surfaces composed, and ways to run them.

:class:`Simulator` serves, with aiohttp, on one port (the signed URL and the
socket share a host, as clients expect):

* the agent socket, ``/v1/convai/conversation?agent_id=…``
  (:mod:`ingest.simulator.agent_socket`; what each connection does is a
  :class:`~ingest.simulator.scenario.Scenario`);
* ``GET /v1/convai/conversation/get-signed-url`` (:mod:`ingest.simulator.signed_url`);
* ``GET /healthz``, answered ``200 ok``;
* with an ``account`` (:class:`~ingest.simulator.account.AccountSpec`), the
  Conversations REST API (:mod:`ingest.simulator.rest`) and the monitor socket
  (:mod:`ingest.simulator.monitor`) over its synthetic history; without one
  their paths answer 404.

Everything the surfaces see is kept for tests to assert on
(:attr:`Simulator.connections`, :attr:`Simulator.rest_requests`,
:attr:`Simulator.monitors`, …). Synchronous code and subprocess tests use
:class:`SimulatorThread`; ``capture simulate`` uses :func:`run_simulator` or
:class:`Simulator` directly. Post-call webhooks are sent by
:mod:`ingest.simulator.webhook_sender`.

"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from ingest.simulator.account import Account, AccountSpec
from ingest.simulator.agent_socket import AgentSocket, ConnectionRecord
from ingest.simulator.monitor import MonitorRecord, MonitorSocket
from ingest.simulator.responses import json_response
from ingest.simulator.rest import CONVERSATIONS_PATH, ConversationsApi, RestFault, RestRecord
from ingest.simulator.scenario import Scenario
from ingest.simulator.signed_url import CONVERSATION_PATH, SIGNED_URL_PATHS, SignedUrls


__all__ = ["HEALTH_PATH", "Simulator", "SimulatorThread", "run_simulator"]

_T = TypeVar("_T")

HEALTH_PATH = "/healthz"


class Simulator:
    """A fake ElevenLabs Agents platform on one local port.

    Use ``async with Simulator(...) as sim:`` or :meth:`start`/:meth:`stop`;
    from synchronous code use :class:`SimulatorThread`.

    Args:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one (read :attr:`port`).
        agent_ids: Known agents; any other ``agent_id`` is refused with 404.
        api_key: If set, the signed-URL endpoint requires header ``xi-api-key``
            equal to it (else 401) and the WebSocket requires a valid, unused,
            unexpired ``conversation_signature`` (or ``token``) from it (else
            403); REST requests and monitor handshakes need the header equal
            to it too. If ``None``, agents are public, the endpoint and REST
            take any key, and the monitor needs the header with any value.
        script: Scenarios for handshake attempts 1, 2, … in order.
        default: Scenario for every attempt after the script; ``Scenario()`` if ``None``.
        ping_interval: Seconds between ``ping`` events; the first comes one
            interval after metadata. ``None`` sends none but a flood's and a
            close-mode conversation's final ping, and enforces no deadline
            between them.
        pong_deadline: Seconds within which each ping's pong must arrive, else
            the server closes 1002 "pong timeout".
        init_timeout: Seconds to wait for the client's first frame, else close 1008.
        signed_url_ttl: Seconds a signed URL stays usable (15 minutes, as documented).
        close_timeout: Seconds to wait for the client's close frame before
            closing TCP.
        compression: Whether to negotiate permessage-deflate (off: cheaper floods).
        account: The conversation history served by the REST API and the
            monitor socket; ``None`` serves neither.
        rest_latency: Seconds every served REST request takes.
        rest_max_concurrency: Above this many REST requests in flight, answer
            429 ``too_many_concurrent_requests``; ``None`` for no limit.
        rest_faults: Scripted answers, see :class:`~ingest.simulator.rest.RestFault`.
        monitor_enabled: Whether monitor sockets are accepted.
        monitor_refusal: How a disabled monitor refuses: ``"http_403"`` (the
            handshake) or ``"close_1008"`` (accept, then close 1008).

    Attributes:
        agent: The agent socket (its scenarios and records).
        signed_urls: The signed-URL endpoint and its grants.
        rest: The Conversations API (its faults and records).
        monitor: The monitor socket (its records).
        account: The account, if any.

    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        agent_ids: Collection[str] = ("agent_demo",),
        api_key: str | None = None,
        script: Sequence[Scenario] = (),
        default: Scenario | None = None,
        ping_interval: float | None = 1.0,
        pong_deadline: float = 5.0,
        init_timeout: float = 10.0,
        signed_url_ttl: float = 15 * 60,
        close_timeout: float = 10.0,
        compression: bool = False,
        account: AccountSpec | None = None,
        rest_latency: float = 0.0,
        rest_max_concurrency: int | None = None,
        rest_faults: Sequence[RestFault] = (),
        monitor_enabled: bool = True,
        monitor_refusal: Literal["http_403", "close_1008"] = "http_403",
    ) -> None:
        self.host = host
        self.agent_ids = frozenset(agent_ids)
        self.api_key = api_key
        self.close_timeout = close_timeout
        self.signed_urls = SignedUrls(self.agent_ids, api_key, ttl=signed_url_ttl)
        self.agent = AgentSocket(
            agent_ids=self.agent_ids,
            signed_urls=self.signed_urls if api_key is not None else None,
            script=script,
            default=default if default is not None else Scenario(),
            ping_interval=ping_interval,
            pong_deadline=pong_deadline,
            init_timeout=init_timeout,
            close_timeout=close_timeout,
            compression=compression,
        )
        self.account = Account(account) if account is not None else None
        self.rest = ConversationsApi(
            self.account,
            api_key=api_key,
            latency=rest_latency,
            max_concurrency=rest_max_concurrency,
            faults=rest_faults,
        )
        self.monitor = (
            MonitorSocket(
                self.account,
                api_key=api_key,
                enabled=monitor_enabled,
                refusal=monitor_refusal,
                close_timeout=close_timeout,
            )
            if self.account is not None
            else None
        )
        self._requested_port = port
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

    # -- what the surfaces saw ---------------------------------------------------------

    @property
    def connections(self) -> list[ConnectionRecord]:
        """Every agent-socket handshake attempt, in order (:attr:`AgentSocket.records`)."""
        return self.agent.records

    @property
    def signed_url_requests(self) -> int:
        """Requests the signed-URL endpoint answered, refusals included."""
        return self.signed_urls.requests

    @property
    def rest_requests(self) -> list[RestRecord]:
        """Every REST request, in order of arrival."""
        return self.rest.requests

    @property
    def rest_faults(self) -> list[RestFault]:
        """The scripted REST answers not used yet; append to add more (on the simulator's loop)."""
        return self.rest.faults

    @property
    def rest_max_in_flight(self) -> int:
        """The most REST requests in flight at once; set it to 0 to measure again."""
        return self.rest.max_in_flight

    @rest_max_in_flight.setter
    def rest_max_in_flight(self, value: int) -> None:
        self.rest.max_in_flight = value

    @property
    def rest_throttled(self) -> int:
        """REST requests answered 429."""
        return self.rest.throttled

    @property
    def monitors(self) -> list[MonitorRecord]:
        """Every monitor handshake attempt, in order."""
        return self.monitor.records if self.monitor is not None else []

    # -- lifecycle -------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(CONVERSATION_PATH, self.agent.handle)
        app.router.add_get(CONVERSATION_PATH + "/", self.agent.handle)
        for path in SIGNED_URL_PATHS:
            app.router.add_get(path, self.signed_urls.handle)
        app.router.add_get(HEALTH_PATH, _health)
        if self.monitor is not None:
            app.router.add_get(CONVERSATIONS_PATH, self.rest.list_conversations)
            app.router.add_get(CONVERSATIONS_PATH + "/{conversation_id}", self.rest.get_conversation)
            app.router.add_get(CONVERSATIONS_PATH + "/{conversation_id}/monitor", self.monitor.handle)
        app.router.add_route("*", "/{tail:.*}", _not_found)
        return app

    async def start(self) -> None:
        """Start listening; :attr:`port` is known when this returns.

        Raises:
            OSError: if the port cannot be listened on.

        """
        if self._runner is not None:
            return
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=self.close_timeout)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every open connection with 1001, stop listening, and wait for both."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        closing = [self.agent.stop()]
        if self.monitor is not None:
            closing.append(self.monitor.stop())
        await asyncio.gather(*closing)
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` is true, checking every 10 ms.

        Raises:
            TimeoutError: if it is still false after ``timeout`` seconds.

        """
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"simulator condition not met within {timeout} s")
            await asyncio.sleep(0.01)

    # -- addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (valid once started)."""
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def _netloc(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def http_url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:PORT`` (an SDK's ``base_url``)."""
        return f"http://{self._netloc}"

    @property
    def ws_url(self) -> str:
        """The same base URL with the ``ws`` scheme, e.g. ``ws://127.0.0.1:PORT``."""
        return f"ws://{self._netloc}"

    def conversation_url(self, agent_id: str = "agent_demo", **params: str) -> str:
        """Return the public conversation URL for ``agent_id``, plus any extra query parameters."""
        query = urlencode({"agent_id": agent_id, **params})
        return f"{self.ws_url}{CONVERSATION_PATH}?{query}"


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _not_found(request: web.Request) -> web.Response:
    return json_response(404, {"detail": "Not Found"})


class SimulatorThread:
    """Run a :class:`Simulator` on its own event loop in a daemon thread.

    For synchronous callers (the official SDK's blocking ``Conversation``) and
    for tests that run ``capture`` in a subprocess::

        with SimulatorThread(script=[scenario_from_name("drop")]) as st:
            run_client(st.http_url)
            st.wait_for(lambda sim: len(sim.connections) == 2, timeout=5)

    Args:
        sim: The simulator to run; built from ``options`` if omitted. Do not
            start it yourself.
        **options: :class:`Simulator` keyword arguments, when ``sim`` is omitted.

    """

    def __init__(self, sim: Simulator | None = None, /, **options: Any) -> None:
        if sim is not None and options:
            raise TypeError("pass either a Simulator or its options, not both")
        self.sim = sim if sim is not None else Simulator(**options)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the thread and the simulator; returns once it listens.

        Raises:
            OSError: if the simulator cannot listen (re-raised from its thread).

        """
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), daemon=True, name="simulator"
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the simulator (closing connections with 1001) and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.sim.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.sim.stop()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coroutine`` on the simulator's loop and return its result.

        Raises:
            RuntimeError: if the thread is not running.
            TimeoutError: if it takes longer than ``timeout`` seconds.

        """
        if self._loop is None or self._thread is None:
            coroutine.close()
            raise RuntimeError("the simulator thread is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float) -> None:
        """Block until ``predicate(sim)`` is true; it is evaluated on the simulator's loop.

        Raises:
            TimeoutError: if it is still false after ``timeout`` seconds.

        """
        self.run(self.sim.wait_for(predicate, timeout), timeout + 5.0)

    @property
    def port(self) -> int:
        """The simulator's port."""
        return self.sim.port

    @property
    def http_url(self) -> str:
        """The simulator's :attr:`Simulator.http_url`."""
        return self.sim.http_url

    @property
    def ws_url(self) -> str:
        """The simulator's :attr:`Simulator.ws_url`."""
        return self.sim.ws_url


async def run_simulator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    agent_ids: Collection[str] = ("agent_demo",),
    api_key: str | None = None,
    script: Sequence[Scenario] = (),
    default: Scenario | None = None,
    ping_interval: float | None = 1.0,
    pong_deadline: float = 5.0,
    account: AccountSpec | None = None,
    rest_latency: float = 0.0,
    monitor_enabled: bool = True,
    on_ready: Callable[[Simulator], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or the task is cancelled (Ctrl-C under ``asyncio.run``).

    The arguments other than ``on_ready`` and ``stop`` are :class:`Simulator`'s.

    Args:
        on_ready: Called once listening, e.g. to print :attr:`Simulator.http_url`.
        stop: Set it to stop; ``None`` serves until cancelled.

    """
    sim = Simulator(
        host=host,
        port=port,
        agent_ids=agent_ids,
        api_key=api_key,
        script=script,
        default=default,
        ping_interval=ping_interval,
        pong_deadline=pong_deadline,
        account=account,
        rest_latency=rest_latency,
        monitor_enabled=monitor_enabled,
    )
    async with sim:
        if on_ready is not None:
            on_ready(sim)
        await (stop if stop is not None else asyncio.Event()).wait()
