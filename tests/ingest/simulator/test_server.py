"""The surfaces composed on one port: routing, lifecycle, the thread and the coroutine that run them, the exports."""

from __future__ import annotations

import asyncio
import importlib
import socket

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import ingest.simulator
from ingest.simulator import AccountSpec, Simulator, SimulatorThread, run_simulator
from tests.ingest.simulator.peer import QUIET, of_kind, only, peer, run


def test_unknown_agent_and_paths_are_404() -> None:
    async def main() -> None:
        async with Simulator() as sim, aiohttp.ClientSession() as http:
            with pytest.raises(InvalidStatus) as unknown:
                await connect(sim.conversation_url("agent_nope"))
            assert unknown.value.response.status_code == 404
            assert orjson.loads(unknown.value.response.body)["detail"]["status"] == "agent_not_found"
            record = only(sim)
            assert (record.agent_id, record.http_status, record.opened_at) == ("agent_nope", 404, None)
            assert record.closed

            async with http.get(f"{sim.http_url}/v1/elsewhere") as response:
                assert response.status == 404
            async with http.get(f"{sim.http_url}/healthz") as response:
                assert (response.status, await response.text()) == (200, "ok\n")
            assert len(sim.connections) == 1

    run(main())


def test_stop_closes_open_connections_1001() -> None:
    async def main() -> None:
        sim = Simulator(default=QUIET)
        await sim.start()
        async with peer(sim.conversation_url()) as p:
            await p.until(of_kind("conversation_initiation_metadata"))
            await sim.stop()
            code, _ = await p.until_closed()
        assert code == 1001
        assert (only(sim).close_code, only(sim).closed_by) == (1001, "server")

    run(main())


def test_wait_for_times_out() -> None:
    async def main() -> None:
        async with Simulator() as sim:
            with pytest.raises(TimeoutError):
                await sim.wait_for(lambda s: bool(s.connections), 0.05)

    run(main())


def test_without_an_account_the_rest_and_monitor_paths_are_404() -> None:
    async def main() -> None:
        async with Simulator() as sim, aiohttp.ClientSession() as http:
            for path in ("/v1/convai/conversations", "/v1/convai/conversations/conv_1"):
                async with http.get(sim.http_url + path) as response:
                    assert (response.status, await response.json()) == (404, {"detail": "Not Found"})
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"{sim.ws_url}/v1/convai/conversations/conv_1/monitor")
            assert refused.value.response.status_code == 404
            assert (sim.rest_requests, sim.monitors) == ([], [])

    run(main())


def test_one_port_serves_the_signed_url_rest_and_both_sockets() -> None:
    async def main() -> None:
        spec = AccountSpec(conversations=3, in_progress=1, processing=0, live_turn_gap=0.01)
        async with (
            Simulator(api_key="k", account=spec, default=QUIET) as sim,
            aiohttp.ClientSession() as http,
        ):
            headers = {"xi-api-key": "k"}
            url = f"{sim.http_url}/v1/convai/conversation/get-signed-url?agent_id=agent_demo"
            async with http.get(url, headers=headers) as response:
                signed = (await response.json())["signed_url"]
            async with http.get(f"{sim.http_url}/v1/convai/conversations", headers=headers) as response:
                live = [c for c in (await response.json())["conversations"] if c["status"] == "in-progress"]
            async with (
                peer(signed) as agent,
                peer(
                    f"{sim.ws_url}/v1/convai/conversations/{live[0]['conversation_id']}/monitor",
                    None,
                    additional_headers=headers,
                ) as monitor,
            ):
                await agent.until(of_kind("conversation_initiation_metadata"))
                await monitor.until(of_kind("history_complete"))
            assert {signed.split("/v1/")[0], sim.ws_url} == {sim.ws_url}
            assert (len(sim.connections), len(sim.rest_requests), len(sim.monitors)) == (1, 1, 1)

    run(main())


def test_a_busy_port_is_an_os_error_and_stop_twice_is_harmless() -> None:
    async def main() -> None:
        async with Simulator() as first:
            with pytest.raises(OSError):
                await Simulator(port=first.port).start()
        await first.stop()
        with pytest.raises(RuntimeError, match="not started"):
            Simulator().port  # noqa: B018

    run(main())


def test_the_thread_runs_the_simulator_for_synchronous_callers() -> None:
    with SimulatorThread(default=QUIET) as st:
        assert st.http_url == st.sim.http_url and st.ws_url.startswith("ws://127.0.0.1:")

        async def hello() -> str:
            async with peer(st.sim.conversation_url()) as p:
                event = await p.until(of_kind("conversation_initiation_metadata"))
            return str(event["conversation_initiation_metadata_event"]["conversation_id"])

        conversation_id = asyncio.run(hello())
        st.wait_for(lambda sim: bool(sim.connections) and sim.connections[0].closed, 5)
        assert st.sim.connections[0].conversation_id == conversation_id
        assert st.run(asyncio.sleep(0, result=7), timeout=5) == 7
    with pytest.raises(RuntimeError, match="not running"):
        st.run(asyncio.sleep(0))
    with pytest.raises(TypeError):
        SimulatorThread(Simulator(), port=1)


def test_the_thread_reraises_a_failure_to_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            SimulatorThread(port=taken.getsockname()[1]).start()


def test_run_simulator_serves_until_stopped() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        ready: list[Simulator] = []
        serving = asyncio.ensure_future(run_simulator(on_ready=ready.append, stop=stop, ping_interval=None))
        while not ready:
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http, http.get(f"{ready[0].http_url}/healthz") as response:
            assert response.status == 200
        stop.set()
        await asyncio.wait_for(serving, 5)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as http, http.get(f"{ready[0].http_url}/healthz"):
                pass

    run(main())


def test_the_package_exports_its_public_api() -> None:
    exported = set(ingest.simulator.__all__)
    assert {"Simulator", "SimulatorThread", "Scenario", "AccountSpec", "DeliveryFactory"} <= exported
    for name in exported:
        assert getattr(ingest.simulator, name) is not None
    for module in ("agent_socket", "rest", "monitor", "scenario", "server", "account", "webhook_sender"):
        public = importlib.import_module(f"ingest.simulator.{module}").__all__
        records = {n for n in public if n.endswith(("Record", "Fault")) or n in ("Simulator", "Scenario")}
        assert records <= exported, module
