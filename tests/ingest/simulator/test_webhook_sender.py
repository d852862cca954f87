"""Post-call deliveries as values (checked by the SDK's models and its own signature check), and sent on loopback."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from elevenlabs.client import ElevenLabs
from elevenlabs.core.api_error import ApiError
from elevenlabs.types import GetConversationResponseModel

from ingest.simulator import (
    AUDIO,
    INITIATION_FAILURE,
    TRANSCRIPTION,
    TRANSCRIPTION_OTEL,
    Account,
    AccountSpec,
    DeliveryFactory,
    Signing,
    send_many,
)
from tests.ingest.simulator.peer import serving
from tests.ingest.simulator.reference import sdk_errors


SECRET = "wsec_sim"
NOW = 1_800_000_000


def factory(seed: int = 0, **options: Any) -> DeliveryFactory:
    return DeliveryFactory(SECRET, seed=seed, clock=lambda: NOW, **options)


def payload(body: bytes) -> dict[str, Any]:
    value = orjson.loads(body)
    assert set(value) == {"type", "event_timestamp", "data"} and value["event_timestamp"] == NOW
    return value  # type: ignore[no-any-return]


def test_transcriptions_carry_a_get_conversation_body() -> None:
    for delivery in [factory().transcription() for _ in range(3)]:
        data = payload(delivery.body)["data"]
        assert sdk_errors(GetConversationResponseModel, data) == []
        assert data["conversation_id"] == delivery.conversation_id and data["transcript"]
    escaped = factory(escaped_every=1).transcription()
    assert escaped.body.isascii()


def test_an_account_conversation_is_delivered_as_its_get_body() -> None:
    account = Account(
        AccountSpec(conversations=4, processing=0, channels=("whatsapp",), analysis_results=True)
    )
    conversation = account.conversations[0]
    data = orjson.loads(account.body(conversation.conversation_id))
    delivery = factory().transcription(data=data, encoding="compact")
    assert payload(delivery.body)["data"] == data
    assert sdk_errors(GetConversationResponseModel, data) == []


def test_exclude_transcript_leaves_out_only_the_transcript() -> None:
    delivery = factory().transcription(exclude_transcript=True)
    data = payload(delivery.body)["data"]
    assert "transcript" not in data
    assert sdk_errors(GetConversationResponseModel, data) == [
        "$.transcript: required by GetConversationResponseModel, missing"
    ]
    assert data["analysis"]["transcript_summary"] and data["metadata"]["call_duration_secs"] > 0


def test_opentelemetry_deliveries_carry_the_trace_and_no_transcript() -> None:
    account = Account(AccountSpec(conversations=3, processing=0))
    conversation = account.conversations[0]
    delivery = factory().transcription_otel(conversation=conversation)
    body = payload(delivery.body)
    assert body["type"] == TRANSCRIPTION_OTEL == delivery.type
    assert set(body["data"]) == {"conversation_id", "agent_id", "otlp_traces"}
    assert body["data"]["conversation_id"] == conversation.conversation_id == delivery.conversation_id
    spans = body["data"]["otlp_traces"]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert spans[0]["name"] == "elevenlabs.conversation" and len(spans) == 1 + len(conversation.transcript)
    synthetic = factory().transcription_otel()
    assert payload(synthetic.body)["data"]["agent_id"] == "agent_demo"


def test_audio_and_initiation_failures() -> None:
    audio = factory().audio(audio_bytes=3000)
    data = payload(audio.body)["data"]
    assert set(data) == {"agent_id", "conversation_id", "full_audio"} and audio.chunked
    failure = payload(factory().initiation_failure().body)
    assert failure["type"] == INITIATION_FAILURE and failure["data"]["failure_reason"]


def test_the_same_seed_and_clock_give_the_same_bytes() -> None:
    assert factory(3).transcription().body == factory(3).transcription().body
    assert factory(3).transcription().body != factory(4).transcription().body


def test_signatures_pass_or_fail_the_official_sdk_check() -> None:
    """The SDK's construct_event accepts the valid ones (it checks only stale times, not future ones)."""
    sdk = ElevenLabs(api_key="unused").webhooks
    f = DeliveryFactory(SECRET, seed=5)  # the real clock: the SDK compares with time.time()
    valid = f.transcription()
    event = sdk.construct_event(valid.body.decode(), valid.headers["ElevenLabs-Signature"], SECRET)
    assert event["data"]["conversation_id"] == valid.conversation_id
    for signing in (Signing.WRONG_SECRET, Signing.STALE, Signing.TAMPERED, Signing.MISSING):
        bad = f.transcription(signing=signing)
        assert bad.expected_status == 401
        with pytest.raises(ApiError):
            sdk.construct_event(bad.body.decode(), bad.headers.get("ElevenLabs-Signature", ""), SECRET)


def test_mix_counts_each_kind() -> None:
    deliveries = factory().mix(40, bad_every=0, audio_every=4, failure_every=7, exclude_every=3, otel_every=5)
    kinds = Counter(d.type for d in deliveries)
    assert kinds == {TRANSCRIPTION: 21, AUDIO: 10, INITIATION_FAILURE: 4, TRANSCRIPTION_OTEL: 5}
    excluded = [d for d in deliveries if d.type == TRANSCRIPTION and b'"transcript":' not in d.body]
    assert len(excluded) == sum(1 for i in range(1, 41) if i % 3 == 0 and i % 4 and i % 7 and i % 5)
    assert all(d.signing is Signing.VALID for d in deliveries)
    signed = factory().mix(10, bad_every=5)
    assert [d.signing is Signing.VALID for d in signed].count(False) == 2


@asynccontextmanager
async def receiver() -> AsyncIterator[tuple[str, list[tuple[bytes, bool]]]]:
    """A loopback endpoint keeping each body and whether it came chunked."""
    got: list[tuple[bytes, bool]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((await request.read(), "Content-Length" not in request.headers))
        return web.Response(status=200 if len(got) % 2 else 401)

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with serving(app) as url:
        yield f"{url}/hook", got


def test_send_many_posts_each_body_as_is() -> None:
    async def main() -> None:
        deliveries = [
            factory().transcription(),
            factory().audio(audio_bytes=200_000),
            factory().transcription_otel(),
        ]
        async with receiver() as (url, got):
            statuses = await send_many(url, deliveries, concurrency=1)
        assert statuses == [200, 401, 200]
        assert [body for body, _ in got] == [d.body for d in deliveries]
        assert [chunked for _, chunked in got] == [False, True, False]

    asyncio.run(main())
