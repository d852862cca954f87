"""The Conversations REST API on loopback: every body it serves validates against the SDK's models."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from elevenlabs.types import GetConversationResponseModel, GetConversationsPageResponseModel

from ingest.simulator import CHANNELS, AccountSpec, RestFault, Simulator
from tests.ingest.simulator.peer import run
from tests.ingest.simulator.reference import sdk_errors


KEY = "sk_rest"
EVERYTHING = AccountSpec(
    conversations=24,
    other_agent_conversations=4,
    processing=3,
    in_progress=2,
    channels=CHANNELS,
    multi_party_every=2,
    media_every=3,
    minimal_every=5,
    failed_every=4,
    failed_with_turns=True,
    analysis_results=True,
    pretty_every=7,
)


async def get(
    http: aiohttp.ClientSession, url: str, **params: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.get(url, params=params, headers={"xi-api-key": KEY}) as response:
        return response.status, await response.json(), response


def test_every_served_body_validates_against_the_sdk_models() -> None:
    async def main() -> None:
        async with Simulator(api_key=KEY, account=EVERYTHING) as sim, aiohttp.ClientSession() as http:
            base = f"{sim.http_url}/v1/convai/conversations"
            ids: list[str] = []
            cursor: str | None = None
            while True:
                params = {"page_size": "7", **({"cursor": cursor} if cursor else {})}
                status, page, _ = await get(http, base, **params)
                assert status == 200 and sdk_errors(GetConversationsPageResponseModel, page) == []
                ids += [c["conversation_id"] for c in page["conversations"]]
                if not page["has_more"]:
                    break
                cursor = page["next_cursor"]
            assert len(ids) == 28
            statuses = set()
            for conversation_id in ids:
                for query in ({}, {"format": "opentelemetry"}):
                    status, body, _ = await get(http, f"{base}/{conversation_id}", **query)
                    assert status == 200 and sdk_errors(GetConversationResponseModel, body) == []
                    assert ("otlp_traces" in body) == bool(query)
                    statuses.add(body["status"])
            assert statuses == {"in-progress", "processing", "done", "failed"}

    run(main())


def test_bodies_are_served_byte_for_byte() -> None:
    async def main() -> None:
        async with Simulator(account=AccountSpec(conversations=6, escaped_every=2, processing=0)) as sim:
            assert sim.account is not None
            async with aiohttp.ClientSession() as http:
                for conversation in sim.account.conversations:
                    url = f"{sim.http_url}/v1/convai/conversations/{conversation.conversation_id}"
                    async with http.get(url) as response:
                        assert response.content_type == "application/json"
                        assert await response.read() == sim.account.body(conversation.conversation_id)

    run(main())


def test_filters_and_bad_queries() -> None:
    async def main() -> None:
        spec = AccountSpec(
            conversations=5, other_agent_conversations=3, processing=0, start_unix=1_700_000_000
        )
        async with Simulator(account=spec) as sim, aiohttp.ClientSession() as http:
            base = f"{sim.http_url}/v1/convai/conversations"
            _, page, _ = await get(http, base, agent_id="agent_other")
            assert {c["agent_id"] for c in page["conversations"]} == {"agent_other"}
            _, page, _ = await get(http, base, call_start_before_unix=str(1_700_000_000 + 600))
            assert len(page["conversations"]) == 1
            for bad in ({"page_size": "101"}, {"page_size": "x"}, {"cursor": "@@@"}):
                status, body, _ = await get(http, base, **bad)
                assert status == 422 and body["detail"][0]["type"] == "value_error"
            status, body, _ = await get(http, f"{base}/conv_nope")
            assert (status, body["detail"]["status"]) == (404, "conversation_not_found")
            assert [r.kind for r in sim.rest_requests] == ["list"] * 5 + ["get"]
            assert [r.status for r in sim.rest_requests] == [200, 200, 422, 422, 422, 404]

    run(main())


@pytest.mark.parametrize(
    ("fault", "header"),
    [
        (RestFault("system_busy", retry_after=2), "2"),
        (RestFault("too_many_concurrent_requests", retry_after=0.25), "0.25"),
        (RestFault("system_busy"), None),
        (RestFault("internal", http_status=503), None),
    ],
)
def test_scripted_faults_answer_one_request_each(fault: RestFault, header: str | None) -> None:
    async def main() -> None:
        async with Simulator(account=AccountSpec(conversations=3, processing=0), rest_faults=[fault]) as sim:
            async with aiohttp.ClientSession() as http:
                status, body, response = await get(http, f"{sim.http_url}/v1/convai/conversations")
                assert (status, body["detail"]["status"]) == (fault.http_status, fault.status)
                assert response.headers.get("Retry-After") == header
                status, _, _ = await get(http, f"{sim.http_url}/v1/convai/conversations")
                assert status == 200
            first, second = sim.rest_requests
            assert (first.detail_status, first.retry_after) == (fault.status, header)
            assert sim.rest_throttled == (1 if fault.http_status == 429 else 0)
            assert not sim.rest_faults and second.status == 200

    run(main())


def test_a_fault_waits_for_its_kind() -> None:
    async def main() -> None:
        account = AccountSpec(conversations=3, processing=0)
        async with Simulator(account=account, rest_faults=[RestFault(on="get")]) as sim:
            assert sim.account is not None
            async with aiohttp.ClientSession() as http:
                base = f"{sim.http_url}/v1/convai/conversations"
                assert (await get(http, base))[0] == 200
                assert (await get(http, f"{base}/{sim.account.conversations[0].conversation_id}"))[0] == 429

    run(main())


def test_concurrency_limit_latency_and_key() -> None:
    async def main() -> None:
        account = AccountSpec(conversations=3, processing=0)
        async with (
            Simulator(api_key=KEY, account=account, rest_latency=0.2, rest_max_concurrency=2) as sim,
            aiohttp.ClientSession() as http,
        ):
            base = f"{sim.http_url}/v1/convai/conversations"
            statuses = sorted(s for s, _, _ in await asyncio.gather(*(get(http, base) for _ in range(3))))
            assert statuses == [200, 200, 429]
            assert sim.rest_max_in_flight == 3 and sim.rest_throttled == 1
            assert max(r.in_flight for r in sim.rest_requests) == 3
            async with http.get(base, headers={"xi-api-key": "wrong"}) as response:
                assert response.status == 401
            sim.rest_max_in_flight = 0  # a bench measures again from here
            assert sim.rest.max_in_flight == 0

    run(main())
