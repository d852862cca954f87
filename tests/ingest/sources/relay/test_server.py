"""The relay on loopback, between raw WebSocket clients and the simulator (or a scripted upstream): access, faults, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from ingest.errors import ConfigError
from ingest.log.envelope import LogLine, frame_bytes
from ingest.simulator import HUGE_TEXT_SIZE, Scenario, Simulator
from ingest.sources.relay import RelayConfig
from tests.conftest import TIMEOUT_FACTOR
from tests.ingest.sources.relay.helpers import (
    AGENT,
    KEY,
    RELAY_TOKEN,
    Running,
    config,
    logged,
    relaying,
    wait_until,
)


T = TypeVar("T")
TEXT_INIT = (
    '{"type":"conversation_initiation_client_data",'
    '"conversation_config_override":{"conversation":{"text_only":true}},"user_id":"user-7"}'
)
AUDIO_INIT = '{"type":"conversation_initiation_client_data","user_id":"user-7"}'
WAIT = Scenario(name="wait", first_message="Hi!", user_turns=[], extra_events=False, end="wait")
MiB = 1024 * 1024


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60 * TIMEOUT_FACTOR))


async def get_signed_url(
    relay: Running, key: str | None = RELAY_TOKEN, query: str = f"agent_id={AGENT}"
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = {"xi-api-key": key} if key is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{relay.http_url}/v1/convai/conversation/get-signed-url?{query}", headers=headers
        ) as answer,
    ):
        body = await answer.read()
        return answer.status, orjson.loads(body) if body else None, answer.headers


async def receive_until(ws: ClientConnection, kind: str) -> list[str | bytes]:
    """Receive frames until one of ``kind`` (included)."""
    frames: list[str | bytes] = []
    while True:
        data = await asyncio.wait_for(ws.recv(), 10 * TIMEOUT_FACTOR)
        frames.append(data)
        if isinstance(data, str) and orjson.loads(data).get("type") == kind:
            return frames


async def receive_all(ws: ClientConnection) -> list[str | bytes]:
    """Receive frames until the connection closes."""
    frames: list[str | bytes] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            frames.append(await asyncio.wait_for(ws.recv(), 10 * TIMEOUT_FACTOR))
    return frames


def relayed(data_dir: Path) -> list[LogLine]:
    return [line for line in logged(data_dir) if line.source == "relay"]


def closed_records(data_dir: Path) -> list[dict[str, Any]]:
    return [line.event for line in logged(data_dir) if line.source == "capture" and line.event is not None]


@contextlib.asynccontextmanager
async def upstream(
    handler: Callable[[ServerConnection], Awaitable[None]],
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
    **options: Any,
) -> AsyncIterator[str]:
    """A scripted upstream on loopback; yields its base URL."""
    async with serve(handler, "127.0.0.1", 0, process_request=process_request, **options) as server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


# -- access -------------------------------------------------------------------------------


def test_the_signed_url_is_the_relays_own_and_good_once(data_dir: Path) -> None:
    """The client gets a relay URL with a single-use token; the platform's signed URL never leaves the relay."""

    async def main() -> None:
        async with (
            Simulator(api_key=KEY, default=WAIT, ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, relay_token=RELAY_TOKEN)) as relay,
        ):
            status, body, _ = await get_signed_url(relay)
            assert status == 200
            url = body["signed_url"]
            assert url.startswith(
                f"{relay.ws_url}/v1/convai/conversation?agent_id={AGENT}&conversation_signature="
            )
            async with connect(url + "&source=js_sdk&version=9.9") as ws:
                await ws.send(TEXT_INIT)
                await receive_until(ws, "conversation_initiation_metadata")
            with pytest.raises(InvalidStatus) as refused:
                await connect(url)
            assert refused.value.response.status_code == 403
            assert orjson.loads(refused.value.response.body)["detail"]["status"] == "invalid_signature"
            record = sim.connections[0]
            # Upstream: the platform's own signed URL, then the client's extra parameters, once each.
            assert record.path.startswith(f"/v1/convai/conversation?agent_id={AGENT}&conversation_signature=")
            assert record.path.endswith("&source=js_sdk&version=9.9") and record.path.count("source=") == 1
            assert url.rpartition("=")[2] not in record.path
            assert (sim.signed_url_requests, len(sim.connections)) == (1, 1)
            assert relay.report.signed_urls == 1 and relay.report.refused == {403: 1}

    run(main())


def test_signed_url_refusals_are_the_platforms(data_dir: Path) -> None:
    """Without the relay token 401; no agent 422; an agent not allowed 403; the platform's own refusal as sent."""

    async def main() -> None:
        async with Simulator(api_key=KEY, agent_ids=("agent_demo", "agent_other")) as sim:
            async with relaying(data_dir, config(sim.http_url, relay_token=RELAY_TOKEN)) as relay:
                assert (await get_signed_url(relay, key=None))[0] == 401
                status, body, _ = await get_signed_url(relay, key=RELAY_TOKEN[:-1] + "x")
                assert (status, body["detail"]["status"]) == (401, "invalid_api_key")
                assert (await get_signed_url(relay, query="branch_id=b"))[0] == 422
                status, body, _ = await get_signed_url(relay, query="agent_id=agent_other")
                assert (status, body["detail"]["status"]) == (403, "agent_not_allowed")
                async with aiohttp.ClientSession() as http, http.get(f"{relay.http_url}/v1/other") as answer:
                    assert answer.status == 404
            assert sim.signed_url_requests == 0
            # The relay's own key is wrong: the platform's 401 reaches the client as it was sent.
            async with relaying(data_dir, config(sim.http_url, api_key="sk_wrong")) as relay:
                status, body, headers = await get_signed_url(relay, key=None)
                assert (status, body) == (
                    401,
                    {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
                )
                assert headers["Content-Type"] == "application/json"
            assert sim.signed_url_requests == 1

    run(main())


def test_conversation_refusals(data_dir: Path) -> None:
    """An agent not allowed 403; a token not issued, used, or another agent's 403; nothing reaches the platform."""

    async def main() -> None:
        async with (
            Simulator(api_key=KEY, agent_ids=("agent_demo", "agent_b")) as sim,
            relaying(
                data_dir, RelayConfig(agent_ids=[AGENT, "agent_b"], base_url=sim.http_url, api_key=KEY)
            ) as relay,
        ):
            status, body, _ = await get_signed_url(relay, key=None)
            token = body["signed_url"].rpartition("=")[2]
            for url, status in (
                (relay.conversation_url("agent_x"), 403),
                (relay.conversation_url(conversation_signature="not-ours"), 403),
                (relay.conversation_url(token="not-ours"), 403),
                (relay.conversation_url("agent_b", conversation_signature=token), 403),
                (relay.conversation_url(conversation_signature=token), 403),  # used by the line above
            ):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(url)
                assert refused.value.response.status_code == status, url
            async with aiohttp.ClientSession() as http, http.get(relay.conversation_url()) as answer:
                assert answer.status == 426  # not a WebSocket handshake
            assert sim.connections == []

    run(main())


def test_a_public_agent_is_relayed_without_a_token_and_its_query_passes_verbatim(data_dir: Path) -> None:
    async def main() -> None:
        async with (
            Simulator(default=WAIT, ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
        ):
            query = f"agent_id={AGENT}&source=js_sdk&version=1.2.3&environment=st%C3%A1ging&branch_id=b+1"
            async with connect(f"{relay.ws_url}/v1/convai/conversation?{query}", subprotocols=None) as ws:
                await ws.send(TEXT_INIT)
                await receive_until(ws, "agent_response")
            await sim.wait_for(lambda s: s.connections[0].closed, 5)
            assert sim.connections[0].path == f"/v1/convai/conversation?{query}"

    run(main())


def test_beyond_loopback_needs_a_long_enough_relay_token() -> None:
    for host in ("0.0.0.0", "::", "", "10.1.2.3", "relay.example.com"):
        with pytest.raises(ConfigError, match="CAPTURE_RELAY_TOKEN"):
            RelayConfig(agent_ids=[AGENT], host=host)
        RelayConfig(agent_ids=[AGENT], host=host, relay_token=RELAY_TOKEN)
    for host in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"):
        RelayConfig(agent_ids=[AGENT], host=host)
    with pytest.raises(ConfigError, match="too short"):
        RelayConfig(agent_ids=[AGENT], relay_token="short")
    with pytest.raises(ConfigError, match="--agent-id"):
        RelayConfig(agent_ids=[" "])


# -- what passes through ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 404, 429, 503])
def test_an_upstream_handshake_refusal_reaches_the_client_as_sent(data_dir: Path, status: int) -> None:
    body = orjson.dumps({"detail": {"status": f"refused_{status}", "message": "no"}})

    def refuse(connection: ServerConnection, request: Request) -> Response:
        headers = Headers([("Content-Type", "application/json"), ("Retry-After", "7"), ("X-Other", "x")])
        return Response(status, "Refused", headers, body)

    async def main() -> None:
        async with (
            upstream(lambda ws: asyncio.sleep(0), refuse) as url,
            relaying(data_dir, config(url)) as relay,
        ):
            with pytest.raises(InvalidStatus) as refused:
                await connect(relay.conversation_url(source="python_sdk"))
            response = refused.value.response
            assert (response.status_code, response.body) == (status, body)
            assert response.headers["Retry-After"] == "7" and "X-Other" not in response.headers
            assert relay.report.refused == {status: 1} and relay.report.connections == 0

    run(main())


def test_an_unreachable_platform_is_a_502(data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        unused_tcp_port = sock.getsockname()[1]

    async def main() -> None:
        async with relaying(data_dir, config(f"http://127.0.0.1:{unused_tcp_port}")) as relay:
            with pytest.raises(InvalidStatus) as refused:
                await connect(relay.conversation_url())
            assert refused.value.response.status_code == 502
            assert (await get_signed_url(relay, key=None))[0] == 502

    run(main())


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        ("close_1002", 1002, "transport_receive_timeout"),
        ("close_1011", 1011, ""),
        ("close_3000", 3000, "Request error"),
        ("accept_close", 1000, ""),
        ("override_error", 1008, "Override for field 'text_only' is not allowed by config."),
    ],
)
def test_platform_closes_reach_the_client_with_their_code_and_reason(
    data_dir: Path, fault: str, code: int, reason: str
) -> None:
    async def main() -> None:
        async with (
            Simulator(script=[Scenario(name=fault, fault=fault)], ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
        ):
            async with connect(relay.conversation_url()) as ws:
                await ws.send(TEXT_INIT)
                frames = await receive_all(ws)
            assert (ws.close_code, ws.close_reason) == (code, reason)
            await wait_until(
                lambda: (
                    relay.report.connections == 1 and not relay.task.done() and bool(closed_records(data_dir))
                )
            )
        [record] = closed_records(data_dir)
        assert (record["close_code"], record["close_reason"], record["closed_by"]) == (code, reason, "server")
        assert [line.frame for line in relayed(data_dir) if line.direction == "in"] == [
            frame_bytes(f) for f in frames
        ]

    run(main())


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (1001, "tab closed"), (4001, "bye, Olá")])
def test_client_closes_reach_the_platform_and_its_answer_comes_back(
    data_dir: Path, code: int, reason: str
) -> None:
    async def main() -> None:
        async with (
            Simulator(default=WAIT, ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
        ):
            ws = await connect(relay.conversation_url())
            await ws.send(TEXT_INIT)
            await receive_until(ws, "agent_response")
            await ws.close(code, reason)
            assert (ws.close_code, ws.close_reason) == (code, reason)  # the platform's echo, passed back
            await sim.wait_for(lambda s: s.connections[0].closed, 5)
            record = sim.connections[0]
            assert (record.close_code, record.close_reason, record.closed_by) == (code, reason, "client")
            await wait_until(lambda: bool(closed_records(data_dir)))
        [closed] = closed_records(data_dir)
        assert (closed["close_code"], closed["close_reason"], closed["closed_by"]) == (code, reason, "client")

    run(main())


def test_a_platform_drop_drops_the_client(data_dir: Path) -> None:
    async def main() -> None:
        async with (
            Simulator(script=[Scenario(name="drop", fault="drop")], ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
        ):
            async with connect(relay.conversation_url()) as ws:
                await ws.send(TEXT_INIT)
                frames = await receive_all(ws)
            assert ws.protocol.close_rcvd is None  # no close frame: the TCP connection was dropped
            assert [orjson.loads(f)["type"] for f in frames][-1] == "user_transcript"
            await wait_until(lambda: bool(closed_records(data_dir)))
            del relay
        [closed] = closed_records(data_dir)
        assert (closed["close_code"], closed["closed_by"]) == (1006, "server")
        assert [line.frame for line in relayed(data_dir) if line.direction == "in"] == [
            frame_bytes(f) for f in frames
        ]

    run(main())


def test_a_client_dropping_mid_frame_drops_the_platform_and_logs_no_part_of_it(data_dir: Path) -> None:
    async def real() -> None:
        async with (
            Simulator(default=WAIT, ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
        ):
            ws = await connect(relay.conversation_url())
            await ws.send(TEXT_INIT)
            await receive_until(ws, "agent_response")
            # A masked text frame announcing 4096 bytes, of which 3 arrive; then the TCP connection is gone.
            ws.transport.write(b"\x81\xfe\x10\x00" + b"\x01\x02\x03\x04" + b"abc")
            ws.transport.abort()
            await sim.wait_for(lambda s: s.connections[0].closed, 5)
            record = sim.connections[0]
            assert (record.close_code, record.closed_by) == (1006, "client")
            await wait_until(lambda: bool(closed_records(data_dir)))
        [closed] = closed_records(data_dir)
        assert (closed["close_code"], closed["closed_by"]) == (1006, "client")
        assert [line.frame for line in relayed(data_dir) if line.direction == "out"] == [TEXT_INIT.encode()]

    run(real())


def test_a_huge_platform_frame_is_forwarded_and_logged_verbatim(data_dir: Path) -> None:
    async def main() -> None:
        async with (
            Simulator(script=[Scenario(name="huge", fault="huge", end="close")], ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
        ):
            async with connect(relay.conversation_url(), max_size=16 * MiB) as ws:
                await ws.send(TEXT_INIT)
                frames = await receive_all(ws)
            await wait_until(lambda: bool(closed_records(data_dir)))
            del relay
        huge = [f for f in frames if len(f) > HUGE_TEXT_SIZE]
        assert len(huge) == 1
        lines = relayed(data_dir)
        assert [line.frame for line in lines if line.direction == "in"] == [frame_bytes(f) for f in frames]
        assert [line.event for line in lines if len(line.frame) > HUGE_TEXT_SIZE][0] == orjson.loads(huge[0])

    run(main())


def test_a_client_frame_over_the_limit_closes_1009_both_ways(data_dir: Path) -> None:
    async def main() -> None:
        async with (
            Simulator(default=WAIT, ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None, max_frame_bytes=64 * 1024)) as relay,
        ):
            async with connect(relay.conversation_url()) as ws:
                await ws.send(TEXT_INIT)
                await receive_until(ws, "agent_response")
                await ws.send(orjson.dumps({"type": "user_message", "text": "x" * 70_000}).decode())
                await receive_all(ws)
            assert ws.close_code == 1009
            await sim.wait_for(lambda s: s.connections[0].closed, 5)
            assert (sim.connections[0].close_code, sim.connections[0].closed_by) == (1009, "client")
            await wait_until(lambda: bool(closed_records(data_dir)))
            del relay
        assert [line.type for line in relayed(data_dir) if line.direction == "out"] == [
            "conversation_initiation_client_data"
        ]

    run(main())


def test_audio_is_forwarded_both_ways_and_only_counted(data_dir: Path) -> None:
    chunk = orjson.dumps({"user_audio_chunk": "AAAA" * 1000}).decode()
    spaced = '{"user_audio_chunk": "' + "BBBB" * 10 + '"}'  # as Python's json.dumps writes it

    async def main() -> None:
        scenario = Scenario(name="spoken", user_turns=["I need help"], extra_events=False, end="wait")
        async with (
            Simulator(default=scenario, ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
        ):
            async with connect(relay.conversation_url()) as ws:
                await ws.send(AUDIO_INIT)
                for _ in range(5):
                    await ws.send(chunk)
                await ws.send(spaced)
                frames: list[str | bytes] = []
                while sum(f.startswith('{"type":"audio"') for f in frames if isinstance(f, str)) < 6:
                    frames += await receive_until(ws, "audio")
                await sim.wait_for(lambda s: s.connections[0].audio_chunks == 6, 5)
            await wait_until(lambda: bool(closed_records(data_dir)))
            assert (relay.report.audio_out, relay.report.audio_in) == (6, 6)
        audio = [f for f in frames if isinstance(f, str) and f.startswith('{"type":"audio"')]
        assert audio, "the simulator sent audio"
        lines = relayed(data_dir)
        assert [line.frame for line in lines if line.direction == "in"] == [
            frame_bytes(f) for f in frames if f not in audio
        ]
        assert [line.frame for line in lines if line.direction == "out"] == [AUDIO_INIT.encode()]
        [closed] = closed_records(data_dir)
        assert (closed["audio_out"], closed["audio_in"], closed["audio_skipped"]) == (
            6,
            len(audio),
            6 + len(audio),
        )

    run(main())


# -- bounds -------------------------------------------------------------------------------------


def test_a_client_that_does_not_read_is_closed_with_a_reason_not_buffered(data_dir: Path) -> None:
    """The platform floods; the client never reads: the relay stops reading too, then closes, within bounds."""
    frame = orjson.dumps(
        {"type": "agent_response", "agent_response_event": {"agent_response": "x" * 65536}}
    ).decode()
    sent = 0
    ended: list[tuple[int | None, str | None]] = []

    async def flood(ws: ServerConnection) -> None:
        nonlocal sent
        await ws.recv()
        with contextlib.suppress(ConnectionClosed):
            while sent < 2000:  # 128 MiB, far beyond every buffer on the way
                await ws.send(frame)
                sent += 1
        ended.append((ws.close_code, ws.close_reason))

    async def main() -> None:
        async with (
            upstream(flood) as url,
            relaying(data_dir, config(url, stall_timeout=0.5)) as relay,
        ):
            ws = await connect(relay.conversation_url(), max_queue=1, max_size=MiB)
            await ws.send(TEXT_INIT)
            await wait_until(lambda: relay.report.stalled == 1 and bool(ended), 20)
            assert ended == [(1011, "capture relay: the client did not read for 0.5 s")]
            ws.transport.abort()
            await wait_until(lambda: bool(closed_records(data_dir)))
        [closed] = closed_records(data_dir)
        assert (closed["closed_by"], closed["close_code"]) == ("relay", 1011)
        # The relay stopped reading when the client did, and closed: the flood never completed.
        assert sent < 2000 and closed["frames_in"] < 1000

    run(main())


def test_a_platform_that_does_not_read_is_closed_with_a_reason(data_dir: Path) -> None:
    async def deaf(ws: ServerConnection) -> None:
        await ws.send(
            '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"conv_deaf"}}'
        )
        await ws.wait_closed()

    async def main() -> None:
        async with (
            upstream(deaf, max_queue=1, max_size=MiB, close_timeout=0.5) as url,
            relaying(data_dir, config(url, stall_timeout=0.5)) as relay,
        ):
            ws = await connect(relay.conversation_url(), close_timeout=1)
            message = orjson.dumps({"type": "contextual_update", "text": "x" * 65536}).decode()

            async def flood() -> None:
                with contextlib.suppress(ConnectionClosed):
                    for _ in range(2000):
                        await ws.send(message)

            sender = asyncio.create_task(flood())
            frames = await receive_all(ws)
            sender.cancel()
            assert (ws.close_code, ws.close_reason) == (
                1011,
                "capture relay: the platform did not read for 0.5 s",
            )
            assert relay.report.stalled == 1 and len(frames) == 1
            await wait_until(lambda: bool(closed_records(data_dir)))
        [closed] = closed_records(data_dir)
        assert (closed["closed_by"], closed["close_code"]) == ("relay", 1011)
        assert closed["frames_out"] < 200

    run(main())


def test_stopping_closes_every_conversation_1001_both_ways(data_dir: Path) -> None:
    async def main() -> None:
        async with Simulator(default=WAIT, ping_interval=None) as sim:
            async with relaying(data_dir, config(sim.http_url, api_key=None)) as relay:
                clients = [await connect(relay.conversation_url()) for _ in range(3)]
                for ws in clients:
                    await ws.send(TEXT_INIT)
                    await receive_until(ws, "agent_response")
                report = await relay.stop()
            for ws in clients:
                await receive_all(ws)
                assert (ws.close_code, ws.close_reason) == (1001, "capture relay is stopping")
            await sim.wait_for(lambda s: all(c.closed for c in s.connections), 5)
            assert {(c.close_code, c.closed_by) for c in sim.connections} == {(1001, "client")}
            assert report.connections == 3 and report.conversations == 3
        assert [c["closed_by"] for c in closed_records(data_dir)] == ["relay"] * 3

    run(main())


def test_no_secret_reaches_the_process_log(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not the API key, the relay token, the platform's signature or the relay's single-use token, even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []

    async def main() -> None:
        async with (
            Simulator(api_key=KEY, default=WAIT, ping_interval=None) as sim,
            relaying(data_dir, config(sim.http_url, relay_token=RELAY_TOKEN)) as relay,
        ):
            _, body, _ = await get_signed_url(relay)
            tokens.append(body["signed_url"].rpartition("=")[2])
            async with connect(body["signed_url"]) as ws:
                await ws.send(TEXT_INIT)
                await receive_until(ws, "agent_response")
            await sim.wait_for(lambda s: s.connections[0].closed, 5)
            tokens.append(sim.connections[0].path.partition("conversation_signature=")[2].partition("&")[0])

    run(main())
    text = "\n".join(
        f"{r.getMessage()} {r.args}"
        for r in caplog.records
        if not r.name.startswith("websockets.")  # the test's own peers
    )
    assert "relay listening on" in text
    for secret in (KEY, RELAY_TOKEN, *tokens):
        assert secret and secret not in text
    assert os.environ.get("CAPTURE_RELAY_TOKEN") is None
