"""Signed URLs: the grant book as values, and the endpoint on loopback."""

from __future__ import annotations

import aiohttp
import pytest
from elevenlabs.types import ConversationSignedUrlResponseModel
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ingest.simulator import Simulator
from ingest.simulator.signed_url import SignedUrls
from tests.ingest.simulator.peer import QUIET, of_kind, peer, run
from tests.ingest.simulator.reference import sdk_errors


def test_a_grant_opens_one_conversation_of_its_agent_before_it_expires() -> None:
    now = [100.0]
    book = SignedUrls({"agent_a", "agent_b"}, "key", ttl=60, clock=lambda: now[0])
    token = book.issue("agent_a")
    assert not book.redeem(token, "agent_b")  # and that used it up
    token = book.issue("agent_a")
    assert book.redeem(token, "agent_a")
    assert not book.redeem(token, "agent_a")
    late = book.issue("agent_a")
    now[0] += 60.5
    assert not book.redeem(late, "agent_a")
    assert not book.redeem(None, "agent_a") and not book.redeem("made-up", "agent_a")


def test_signed_url_flow() -> None:
    async def main() -> None:
        async with Simulator(api_key="sekrit", default=QUIET) as sim, aiohttp.ClientSession() as http:
            endpoint = f"{sim.http_url}/v1/convai/conversation/get-signed-url"
            async with http.get(endpoint, params={"agent_id": "agent_demo"}) as response:
                assert response.status == 401
                assert await response.json() == {
                    "detail": {"status": "invalid_api_key", "message": "Invalid API key"}
                }
            async with http.get(
                endpoint, params={"agent_id": "nope"}, headers={"xi-api-key": "sekrit"}
            ) as response:
                assert response.status == 404
            async with http.get(
                endpoint, params={"agent_id": "agent_demo"}, headers={"xi-api-key": "sekrit"}
            ) as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                signed_url = (await response.json())["signed_url"]
            assert signed_url.startswith(f"{sim.ws_url}/v1/convai/conversation?agent_id=agent_demo&")
            assert "conversation_signature=" in signed_url
            assert sim.signed_url_requests == 3

            with pytest.raises(InvalidStatus) as unsigned:
                await connect(sim.conversation_url())
            assert unsigned.value.response.status_code == 403

            async with peer(signed_url) as p:
                await p.until(of_kind("conversation_initiation_metadata"))
            with pytest.raises(InvalidStatus) as reused:
                await connect(signed_url)
            assert reused.value.response.status_code == 403

            assert [c.http_status for c in sim.connections] == [403, 101, 403]
            assert [c.refused for c in sim.connections] == [True, False, True]

    run(main())


def test_signed_url_expires() -> None:
    async def main() -> None:
        async with Simulator(api_key="k", signed_url_ttl=0.0) as sim, aiohttp.ClientSession() as http:
            endpoint = f"{sim.http_url}/v1/convai/conversation/get-signed-url?agent_id=agent_demo"
            async with http.get(endpoint, headers={"xi-api-key": "k"}) as response:
                signed_url = (await response.json())["signed_url"]
            with pytest.raises(InvalidStatus) as expired:
                await connect(signed_url)
            assert expired.value.response.status_code == 403

    run(main())


def test_answers_are_the_platform_shapes() -> None:
    async def main() -> None:
        async with Simulator() as sim, aiohttp.ClientSession() as http:
            for path in (
                "get-signed-url",
                "get_signed_url",
            ):  # the underscore spelling is deprecated, still served
                url = f"{sim.http_url}/v1/convai/conversation/{path}?agent_id=agent_demo"
                async with http.get(url, headers={"xi-api-key": "any"}) as response:
                    assert response.status == 200
                    assert sdk_errors(ConversationSignedUrlResponseModel, await response.json()) == []
            async with http.get(f"{sim.http_url}/v1/convai/conversation/get-signed-url") as response:
                assert response.status == 422
                assert await response.json() == {
                    "detail": [{"loc": ["query", "agent_id"], "msg": "Field required", "type": "missing"}]
                }
            # The URL names the host the client asked for.
            url = f"http://localhost:{sim.port}/v1/convai/conversation/get-signed-url?agent_id=agent_demo"
            async with http.get(url) as response:
                assert (await response.json())["signed_url"].startswith(f"ws://localhost:{sim.port}/")
            assert sim.signed_url_requests == 4

    run(main())
