"""The webhook receiver on loopback: real aiohttp server and client, real log."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from ingest.errors import ConfigError, LogWriteError
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.simulator import (
    AUDIO,
    INITIATION_FAILURE,
    TRANSCRIPTION,
    Signing,
    send,
    send_many,
    valid_header_variants,
)
from ingest.sources.webhook.receiver import GroupCommit, WebhookConfig, run_webhook_server
from ingest.sources.webhook.signature import SIGNATURE_HEADER, sign
from tests.ingest.sources.webhook.serving import SECRET, TIMEOUT, factory, lines, log_bytes, receiving, run


# -- stored deliveries -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["compact", "escaped", "pretty"])
def test_a_valid_delivery_is_stored_verbatim_then_acknowledged(data_dir: Path, encoding: Any) -> None:
    """200 comes after the body is in the file and fsynced; the line holds the body byte for byte."""
    delivery = factory().transcription(encoding=encoding)

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            fsyncs = rx.writer.stats.fsyncs
            assert await rx.post(delivery) == 200
            # When the 200 arrives, the line is already in the file, and an
            # fsync ran after it was appended.
            assert [line.frame for line in lines(data_dir)] == [delivery.body]
            assert rx.writer.stats.fsyncs > fsyncs
            assert rx.stats.stored == 1

    run(scenario)
    [line] = lines(data_dir)
    assert line.frame == delivery.body
    assert line.source == "webhook"
    assert line.direction == "in"
    assert line.envelope["agent_id"] == "agent_demo"
    assert line.conversation_id == delivery.conversation_id
    assert re.fullmatch(r"[0-9a-f]{32}", line.envelope["connection_id"])
    if encoding == "pretty":
        assert line.event is None  # several lines: kept as raw, still verbatim
    else:
        assert line.type == TRANSCRIPTION
        assert line.event is not None
        assert line.event["data"]["transcript"]


def test_escapes_stay_escapes(data_dir: Path) -> None:
    """A body written with \\u escapes is spliced as is, never re-serialised."""
    delivery = factory().transcription(encoding="escaped")
    assert b"\\u" in delivery.body

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            assert await rx.post(delivery) == 200

    run(scenario)
    assert delivery.body in log_bytes(data_dir)


@pytest.mark.parametrize("kind", ["failure", "unknown", "not-json", "not-utf8"])
def test_other_bodies_are_logged_verbatim(data_dir: Path, kind: str) -> None:
    """call_initiation_failure, unknown types and even non-JSON bodies are kept, byte for byte."""
    now = int(time.time())
    if kind == "failure":
        delivery = factory().initiation_failure()
        body = delivery.body
    elif kind == "unknown":
        body = orjson.dumps({"type": "post_call_something_new", "event_timestamp": now, "data": {"x": "é"}})
    elif kind == "not-json":
        body = b"this is not JSON {"
    else:
        body = b'{"type":"x","data":"\xff\xfe"}'

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            headers = {SIGNATURE_HEADER: sign(SECRET, now, body)}
            assert await rx.post_raw(body, headers) == 200

    run(scenario)
    [line] = lines(data_dir)
    assert line.frame == body
    if kind == "failure":
        assert line.type == INITIATION_FAILURE
        assert line.conversation_id == delivery.conversation_id
    if kind == "not-utf8":
        assert "raw_b64" in line.envelope


def test_a_replayed_delivery_is_stored_twice(data_dir: Path) -> None:
    """The same body and signature twice within tolerance: both 200, two lines (dedup is the projection's)."""
    delivery = factory().transcription()

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            assert await rx.post(delivery) == 200
            assert await rx.post(delivery) == 200

    run(scenario)
    first, second = lines(data_dir)
    assert first.frame == second.frame == delivery.body
    assert first.envelope["connection_id"] != second.envelope["connection_id"]


@pytest.mark.parametrize("index", range(6))
def test_header_variants_are_accepted(data_dir: Path, index: int) -> None:
    """Blanks, either order, two v0 and unknown schemes all verify."""
    now = int(time.time())
    body = factory().transcription().body
    header = valid_header_variants(SECRET, now, body)[index]

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            assert await rx.post_raw(body, {SIGNATURE_HEADER: header}) == 200

    run(scenario)
    assert [line.frame for line in lines(data_dir)] == [body]


def test_header_name_is_case_insensitive_and_may_repeat(data_dir: Path) -> None:
    """HTTP header names ignore case; two headers read as one comma-joined list."""
    now = int(time.time())
    body = factory().transcription().body
    digest = sign(SECRET, now, body).split("v0=")[1]

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            headers = {"elevenlabs-signature": f"t={now},v0={digest}"}
            assert await rx.post_raw(body, headers) == 200
            split = CIMultiDict([(SIGNATURE_HEADER, f"t={now}"), (SIGNATURE_HEADER, f"v0={digest}")])
            async with rx.session.post(rx.url, data=body, headers=split) as response:
                assert response.status == 200

    run(scenario)
    assert len(lines(data_dir)) == 2


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("signing", [s for s in Signing if s is not Signing.VALID])
def test_a_badly_signed_delivery_is_refused_and_not_written(data_dir: Path, signing: Signing) -> None:
    """Wrong secret, stale t, tampered body, no or malformed header: 401, nothing logged."""
    f = factory()
    deliveries = [
        f.transcription(signing=signing),
        f.audio(signing=signing),
        f.initiation_failure(signing=signing),
    ]

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            for delivery in deliveries:
                async with rx.session.post(
                    rx.url, data=delivery.body, headers=dict(delivery.headers)
                ) as response:
                    assert response.status == 401
                    assert SECRET not in await response.text()
            assert rx.stats.rejected_total == len(deliveries)
            assert rx.writer.stats.lines == 0

    run(scenario)
    assert lines(data_dir) == []
    assert log_bytes(data_dir) == b""


MALFORMED = [
    "t={t}",
    "v0={sig}",
    "t=soon,v0={sig}",
    "t={t};v0={sig}",
    "t={t},v0=zz",
    "t={t},t={t},v0={sig}",
    "{sig}",
    "",
]


def test_every_malformed_header_is_refused(data_dir: Path) -> None:
    """Each malformed header (and an empty one) answers 401 and nothing is written."""
    now = int(time.time())
    body = factory().transcription().body
    digest = sign(SECRET, now, body).split("v0=")[1]

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            for template in MALFORMED:
                header = template.format(t=now, sig=digest)
                assert await rx.post_raw(body, {SIGNATURE_HEADER: header}) == 401, header
            assert sum(rx.stats.rejected.values()) == len(MALFORMED)

    run(scenario)
    assert log_bytes(data_dir) == b""


def test_refusal_reasons_are_counted(data_dir: Path) -> None:
    """Each 401 is counted under its reason."""
    f = factory()
    plan = {
        Signing.WRONG_SECRET: "mismatch",
        Signing.TAMPERED: "mismatch",
        Signing.STALE: "stale_timestamp",
        Signing.MISSING: "missing_header",
        Signing.MALFORMED: "malformed_header",
    }

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            for signing in plan:
                assert await rx.post(f.transcription(signing=signing)) == 401
            assert rx.stats.rejected == {
                "mismatch": 2,
                "stale_timestamp": 1,
                "missing_header": 1,
                "malformed_header": 1,
            }

    run(scenario)


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_is_refused_and_not_written(data_dir: Path, chunked: bool) -> None:
    """A body over max_body (declared or streamed) answers 413 and writes nothing."""
    delivery = factory().transcription(encoding="compact")
    assert len(delivery.body) > 1000

    async def scenario() -> None:
        async with receiving(data_dir, max_body=1000) as rx:
            body: Any = delivery.body
            if chunked:

                async def pieces() -> AsyncIterator[bytes]:
                    for i in range(0, len(delivery.body), 256):
                        yield delivery.body[i : i + 256]

                body = pieces()
            assert await rx.post_raw(body, dict(delivery.headers)) == 413
            assert rx.stats.too_large == 1
            # The receiver still works for the next delivery.
            small = factory(1).initiation_failure()
            assert await rx.post(small) == 200

    run(scenario)
    assert [line.type for line in lines(data_dir)] == [INITIATION_FAILURE]


def test_wrong_path_and_method_are_not_deliveries(data_dir: Path) -> None:
    """Another path is 404, GET is 405; nothing is written."""
    delivery = factory().transcription()

    async def scenario() -> None:
        async with receiving(data_dir, path="/hooks/x") as rx:
            other = rx.url.replace("/hooks/x", "/webhooks/elevenlabs")
            assert await rx.post_raw(delivery.body, dict(delivery.headers), url=other) == 404
            async with rx.session.get(rx.url) as response:
                assert response.status == 405
            assert await rx.post(delivery) == 200

    run(scenario)
    assert len(lines(data_dir)) == 1


# -- post_call_audio --------------------------------------------------------------------------------


@pytest.mark.parametrize(("audio_bytes", "max_body"), [(3_000, 16 * 2**20), (300_000, 10_000)])
def test_audio_is_acknowledged_but_never_stored(data_dir: Path, audio_bytes: int, max_body: int) -> None:
    """post_call_audio, small or far over max_body and chunked: 200, nothing in the log."""
    f = factory()
    audio = f.audio(audio_bytes=audio_bytes)
    assert audio.chunked
    bad = f.audio(audio_bytes=audio_bytes, signing=Signing.TAMPERED)

    async def scenario() -> None:
        async with receiving(data_dir, max_body=max_body) as rx:
            assert await rx.post(audio) == 200
            assert await rx.post(bad) == 401
            assert rx.stats.audio_skipped == 1
            assert rx.writer.stats.lines == 0

    run(scenario)
    assert log_bytes(data_dir) == b""


def test_audio_over_the_audio_limit_is_refused(data_dir: Path) -> None:
    """Even audio stops at max_audio_body: 413."""
    audio = factory().audio(audio_bytes=60_000)

    async def scenario() -> None:
        async with receiving(data_dir, max_body=10_000, max_audio_body=50_000) as rx:
            assert await rx.post(audio) == 413

    run(scenario)
    assert log_bytes(data_dir) == b""


# -- durability -----------------------------------------------------------------------------------


def test_concurrent_waiters_share_one_fsync(data_dir: Path) -> None:
    """Lines appended before a burst of waits are made durable by one fsync (group commit)."""
    from ingest.log.envelope import Origin
    from ingest.log.frames import inspect_frame

    async def scenario() -> None:
        with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, command="test") as writer:
            commit = GroupCommit(writer)
            origin = Origin("webhook", "in", None, None, None)
            for i in range(20):
                writer.append(origin, inspect_frame(f'{{"n":{i}}}'))
            await asyncio.gather(*(commit.wait() for _ in range(20)))
            assert writer.stats.fsyncs == 1
            # Waiters arriving during an fsync share the next one.
            writer.append(origin, inspect_frame('{"n":20}'))
            first = asyncio.ensure_future(commit.wait())
            await asyncio.sleep(0)
            writer.append(origin, inspect_frame('{"n":21}'))
            await asyncio.gather(first, *(commit.wait() for _ in range(5)))
            assert writer.stats.fsyncs <= 3

    run(scenario)


def test_many_concurrent_deliveries_are_all_stored(data_dir: Path) -> None:
    """32 concurrent senders: every valid delivery stored once, every bad one refused."""
    deliveries = factory(7).mix(64, bad_every=5, audio_every=9, failure_every=7)

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            statuses = await send_many(rx.url, deliveries, concurrency=32)
            assert statuses == [d.expected_status for d in deliveries]

    run(scenario)
    stored = sorted(d.body for d in deliveries if d.signing is Signing.VALID and d.type != AUDIO)
    assert sorted(line.frame for line in lines(data_dir)) == stored
    assert [line.seq for line in lines(data_dir)] == list(range(1, len(stored) + 1))


def test_a_dead_log_answers_500_and_stops(data_dir: Path) -> None:
    """When the log cannot be written the delivery is not acknowledged and the receiver stops."""

    async def scenario() -> None:
        writer = LogWriter.open(data_dir, command="test")
        stop = asyncio.Event()
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        config = WebhookConfig(secret=SECRET, port=0)
        server = asyncio.create_task(run_webhook_server(writer, config, stop, on_ready=ready.set_result))
        port = await asyncio.wait_for(ready, TIMEOUT)
        writer.close()  # appends now fail with LogWriteError
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/webhooks/elevenlabs"
            assert await send(session, url, factory().transcription()) == 500
        await asyncio.wait_for(stop.wait(), TIMEOUT)
        with pytest.raises(LogWriteError):
            await asyncio.wait_for(server, TIMEOUT)

    run(scenario)


def test_config_refuses_an_empty_secret_and_hides_the_secret() -> None:
    """An empty secret is one anybody can sign with; the secret never shows in a repr."""
    with pytest.raises(ConfigError):
        WebhookConfig(secret="  ")
    with pytest.raises(ConfigError):
        WebhookConfig(secret=SECRET, path="no-slash")
    for bad in ({"idle_timeout": 0}, {"body_timeout": -1}, {"max_future": -1}, {"min_body_rate": -1}):
        with pytest.raises(ConfigError):
            WebhookConfig(secret=SECRET, **bad)  # type: ignore[arg-type]
    assert WebhookConfig(secret=SECRET, max_future=0, min_body_rate=0).min_body_rate == 0
    assert SECRET not in repr(WebhookConfig(secret=SECRET))
