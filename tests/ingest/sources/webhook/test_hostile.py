"""No stranger can stall the receiver: unverified bytes are never parsed, bodies are bounded, slow and idle connections are closed.

Real aiohttp servers on 127.0.0.1, real sockets (bare ones where a hostile
client sends what aiohttp's client would not), a real log. A stall of the
event loop is seen by a :class:`Heartbeat` ticking on the same loop as the
receiver and its clients, with a generous bound: the property is "the loop
kept running", not a speed.

"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ingest.simulator.webhook_sender import DeliveryFactory, send
from ingest.sources.webhook.signature import SIGNATURE_HEADER, sign
from tests.conftest import TIMEOUT_FACTOR
from tests.ingest.sources.webhook.serving import (
    SECRET,
    TIMEOUT,
    Heartbeat,
    chunk,
    factory,
    lines,
    log_bytes,
    open_raw,
    receiving,
    request_head,
    run,
)


KiB = 1024
MiB = 1024 * KiB

# The loop may be late by this much, on a loaded machine, without anyone having blocked it.
STALL = 1.0 * TIMEOUT_FACTOR

# Objects nested 20,000 deep, then strings: a scanner that walks its stack for
# each string (the one before this fix) took seconds over it on the event loop.
DEEP = b'{"a":' * 20_000 + b"[" + b'"x",' * 10_000
PATH = "/webhooks/elevenlabs"


def deep_body(size: int = 1_300_000) -> bytes:
    return DEEP + b" " * (size - len(DEEP))


def bogus(body: bytes) -> dict[str, str]:
    """A signature header with a fresh timestamp, made with the wrong secret."""
    return {SIGNATURE_HEADER: sign("wsec_not_the_secret", int(time.time()), body)}


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(SECRET, int(time.time()), body)}


async def pieces(body: bytes, size: int = 64 * KiB) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- verify before you look ---------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("signing", ["bogus", "valid"])
def test_a_deeply_nested_body_never_blocks_the_loop(data_dir: Path, signing: str, chunked: bool) -> None:
    """1.3 MB of deep nesting: 401 with a bogus signature, stored verbatim with a good one; the loop kept ticking."""
    body = deep_body()
    headers = signed(body) if signing == "valid" else bogus(body)

    async def scenario() -> None:
        async with receiving(data_dir) as rx, Heartbeat() as beat:
            status = await rx.post_raw(pieces(body) if chunked else io.BytesIO(body), headers)
            assert status == (200 if signing == "valid" else 401)
            assert beat.worst_gap < STALL, f"the event loop stalled {beat.worst_gap:.2f} s"

    run(scenario)
    if signing == "valid":
        [line] = lines(data_dir)
        assert line.frame == body
    else:
        assert log_bytes(data_dir) == b""


async def push(port: int, headers: dict[str, str], total: int, *, declared: bool) -> tuple[int, bytes]:
    """Send a ``total``-byte body that never names a type, until the server answers or drops it.

    Returns:
        The body bytes sent by then (an upper bound of what the server read,
        plus the sockets' buffers), and the answer's status line (empty if
        the connection was reset first).

    """
    reader, writer = await open_raw(port)
    writer.write(request_head(PATH, headers, content_length=total if declared else None))
    answer = asyncio.ensure_future(reader.readline())
    sent = 0
    filler = b"a" * (64 * KiB)
    try:
        async with asyncio.timeout(6 * TIMEOUT):
            while sent < total and not answer.done():
                data = (b'{"note":"' + filler)[: total - sent] if sent == 0 else filler[: total - sent]
                writer.write(data if declared else chunk(data))
                try:
                    await writer.drain()
                except ConnectionError:
                    break
                sent += len(data)
            try:
                status = await answer
            except ConnectionError:
                status = b""
    finally:
        answer.cancel()
        writer.close()
    return sent, status


@pytest.mark.parametrize("declared", [False, True])
def test_an_unverified_body_is_read_no_further_than_max_body(data_dir: Path, declared: bool) -> None:
    """A 60 MiB body with a fresh timestamp and a bogus signature: 413 once past max_body, not read to its end."""
    total = 60 * MiB

    async def scenario() -> None:
        async with receiving(data_dir, max_body=256 * KiB, max_audio_body=64 * MiB) as rx:
            sent, status = await push(rx.port, bogus(b""), total, declared=declared)
            assert status.startswith(b"HTTP/1.1 413") or status == b""
            # What the server read is at most what was sent before its answer;
            # the rest is the sockets' buffers (a few MiB on loopback).
            assert sent < 24 * MiB, f"{sent} bytes sent before the answer"
            assert rx.stats.too_large == 1

    run(scenario)
    assert log_bytes(data_dir) == b""


def test_an_audio_sized_body_with_a_bogus_signature_is_refused_once_read(data_dir: Path) -> None:
    """Past max_body, only a body beginning like an audio delivery is read on (hashed, not kept); then 401."""
    f = factory()
    audio = f.audio(audio_bytes=3 * MiB)
    forged = {SIGNATURE_HEADER: sign("wsec_not_the_secret", int(time.time()), audio.body)}

    async def scenario() -> None:
        async with receiving(data_dir, max_body=64 * KiB) as rx, Heartbeat() as beat:
            assert await rx.post_raw(pieces(audio.body), forged) == 401
            assert await rx.post(audio) == 200
            assert rx.stats.audio_skipped == 1
            assert beat.worst_gap < STALL

    run(scenario)
    assert log_bytes(data_dir) == b""


# -- the timestamp window is the SDK's -------------------------------------------------------------


@pytest.mark.parametrize(
    ("skew", "wording"), [(600, r"(599|600|601) s ahead"), (-900, r"(899|900|901) s ago")]
)
def test_a_delivery_signed_far_from_our_clock_is_stored_with_one_warning(
    data_dir: Path, caplog: pytest.LogCaptureFixture, skew: int, wording: str
) -> None:
    """10 minutes ahead (our clock slow) or 15 behind: 200 and stored, as the SDK accepts it; one warning."""
    skewed = DeliveryFactory(SECRET, clock=lambda: time.time() + skew)
    deliveries = [skewed.transcription() for _ in range(3)]

    async def scenario() -> None:
        async with receiving(data_dir) as rx:
            for delivery in deliveries:
                assert await rx.post(delivery) == 200

    with caplog.at_level(logging.WARNING, logger="capture.webhook"):
        run(scenario)
    assert [line.frame for line in lines(data_dir)] == [d.body for d in deliveries]
    warnings = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
    assert len(warnings) == 1, warnings  # not one per delivery
    assert re.search(wording, warnings[0]), warnings[0]
    assert "NTP" in warnings[0]


def test_a_bound_ahead_is_an_option(data_dir: Path) -> None:
    """With max_future set, a delivery signed further ahead is refused (401 future_timestamp)."""
    ahead = DeliveryFactory(SECRET, clock=lambda: time.time() + 600).transcription()

    async def scenario() -> None:
        async with receiving(data_dir, max_future=300) as rx:
            assert await rx.post(ahead) == 401
            assert rx.stats.rejected == {"future_timestamp": 1}

    run(scenario)
    assert log_bytes(data_dir) == b""


# -- idle and slow connections are closed ------------------------------------------------------------


@pytest.mark.parametrize("after", ["opening", "an answer"])
def test_an_idle_connection_is_closed(data_dir: Path, after: str) -> None:
    """A connection that sends nothing — from the start, or after a delivery on keep-alive — is closed."""
    delivery = factory().transcription()

    async def scenario() -> None:
        async with receiving(data_dir, idle_timeout=0.3) as rx:
            reader, writer = await open_raw(rx.port)
            try:
                if after == "an answer":
                    writer.write(
                        request_head(PATH, dict(delivery.headers), content_length=len(delivery.body))
                    )
                    writer.write(delivery.body)
                    assert (await asyncio.wait_for(reader.readline(), TIMEOUT)).startswith(b"HTTP/1.1 200")
                    await asyncio.wait_for(reader.readuntil(b"ok\n"), TIMEOUT)
                assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed by the server
            finally:
                writer.close()

    run(scenario)


def test_headers_that_trickle_in_are_cut_off(data_dir: Path) -> None:
    """Slowloris: a header line every 50 ms never completes the request; the connection is closed."""

    async def scenario() -> None:
        async with receiving(data_dir, idle_timeout=0.5) as rx:
            reader, writer = await open_raw(rx.port)
            closed = asyncio.ensure_future(reader.read())
            writer.write(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
            try:
                async with asyncio.timeout(TIMEOUT):
                    while not closed.done():
                        writer.write(b"X-Slow: 1\r\n")  # a slow client's pace, not a wait
                        await asyncio.sleep(0.05)
                    assert await closed == b""
            except ConnectionError:
                pass  # the server closed while we wrote: closed all the same
            finally:
                closed.cancel()
                writer.close()
            assert rx.stats.stored == 0

    run(scenario)


@pytest.mark.parametrize("how", ["trickles", "pauses"])
def test_a_body_that_trickles_or_pauses_is_answered_408(data_dir: Path, how: str) -> None:
    """20 bytes every 50 ms (under the rate floor, never pausing long), or half a body then nothing: 408, closed."""
    delivery = factory().transcription()
    body = delivery.body

    async def scenario() -> None:
        async with receiving(data_dir, body_timeout=0.5 * TIMEOUT_FACTOR, min_body_rate=16_000) as rx:
            reader, writer = await open_raw(rx.port)
            writer.write(request_head(PATH, dict(delivery.headers), content_length=len(body)))
            answer = asyncio.ensure_future(reader.readline())
            try:
                async with asyncio.timeout(TIMEOUT):
                    if how == "pauses":
                        writer.write(body[: len(body) // 2])
                    else:
                        at = 0
                        while not answer.done() and at < len(body) - 20:
                            writer.write(body[at : at + 20])  # a slow client's pace, not a wait
                            at += 20
                            await asyncio.sleep(0.05)
                    try:
                        assert (await answer).startswith(b"HTTP/1.1 408")
                        await reader.read()  # then closed
                    except ConnectionError:
                        pass  # closed with the trickle unread: the answer may be lost to a reset
            finally:
                answer.cancel()
                writer.close()
            assert rx.stats.timed_out == 1
            assert rx.writer.stats.lines == 0

    run(scenario)


def test_a_large_audio_delivery_on_a_slow_steady_link_is_accepted(data_dir: Path) -> None:
    """About 200 KB at about 160 KB/s, in pieces every 50 ms: above the rate floor, never pausing: 200."""
    audio = factory().audio(audio_bytes=150_000)

    async def paced() -> AsyncIterator[bytes]:
        for start in range(0, len(audio.body), 8 * KiB):
            yield audio.body[start : start + 8 * KiB]
            await asyncio.sleep(0.05)  # a slow link's pace, not a wait

    async def scenario() -> None:
        async with receiving(
            data_dir, max_body=64 * KiB, body_timeout=1.0 * TIMEOUT_FACTOR, min_body_rate=16_000
        ) as rx:
            assert await rx.post_raw(paced(), dict(audio.headers)) == 200
            assert rx.stats.audio_skipped == 1
            assert rx.stats.timed_out == 0

    run(scenario)


# -- all at once ---------------------------------------------------------------------------------------


def test_strangers_at_once_do_not_delay_valid_deliveries(data_dir: Path) -> None:
    """24 hostile requests (deep nesting, oversized, forged audio, trickling, idle) while 10 valid deliveries arrive.

    Every valid delivery is stored; every hostile request is refused or cut
    off; nothing hostile reaches the log; the loop never stalls.
    """
    f = factory(3)
    valid = [f.transcription() for _ in range(10)]
    deep = deep_body()
    huge = b"[" * (8 * MiB)
    forged_audio = f.audio(audio_bytes=3 * MiB).body

    async def refused(session: aiohttp.ClientSession, url: str, body: bytes, chunked: bool) -> int:
        try:
            data = pieces(body) if chunked else io.BytesIO(body)
            async with session.post(url, data=data, headers=bogus(body)) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError:
            return 0  # dropped mid-upload after the refusal

    async def trickle(port: int) -> bytes:
        reader, writer = await open_raw(port)
        writer.write(request_head(PATH, bogus(b""), content_length=10_000))
        answer = asyncio.ensure_future(reader.readline())
        try:
            while not answer.done():
                writer.write(b"[")  # a slow client's pace, not a wait
                await asyncio.sleep(0.05)
            return await answer
        except ConnectionError:
            return b""
        finally:
            answer.cancel()
            writer.close()

    async def idle(port: int) -> bytes:
        reader, writer = await open_raw(port)
        try:
            return await reader.read()
        finally:
            writer.close()

    async def scenario() -> None:
        async with (
            receiving(
                data_dir,
                max_body=2 * MiB,
                max_unverified=64 * MiB,  # room for them all: see the next test for when there is not
                idle_timeout=1.0,
                body_timeout=1.0,
                min_body_rate=16_000,
            ) as rx,
            Heartbeat() as beat,
        ):
            async with aiohttp.ClientSession() as strangers:
                posts = asyncio.gather(
                    *(refused(strangers, rx.url, deep, chunked=i % 2 == 0) for i in range(6)),
                    *(refused(strangers, rx.url, huge, chunked=i % 2 == 0) for i in range(6)),
                    *(refused(strangers, rx.url, forged_audio, chunked=True) for _ in range(4)),
                )
                slow = asyncio.gather(
                    *(trickle(rx.port) for _ in range(4)), *(idle(rx.port) for _ in range(4))
                )
                for delivery in valid:
                    assert await send(rx.session, rx.url, delivery) == 200
                statuses, answers = await asyncio.wait_for(asyncio.gather(posts, slow), 6 * TIMEOUT)
            assert statuses[:6] == [401] * 6  # deep nesting, bogus signature
            assert set(statuses[6:12]) <= {413, 0}  # over max_body: refused (perhaps dropped mid-upload)
            assert statuses[12:] == [401] * 4  # forged audio, read to its end
            assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers[:4])  # trickling
            assert answers[4:] == [b""] * 4  # idle: closed
            assert beat.worst_gap < STALL, f"the event loop stalled {beat.worst_gap:.2f} s"

    run(scenario)
    assert [line.frame for line in lines(data_dir)] == [d.body for d in valid]


def test_many_large_unverified_bodies_give_way_not_a_delivery(data_dir: Path) -> None:
    """Eight 300 KiB bodies held open (1 MiB allowed together): those over an even share get 503; a 100 KB delivery passes."""
    medium = factory(5).transcription(
        data={"agent_id": "agent_demo", "conversation_id": "conv_m", "pad": "p" * 100_000}
    )

    async def hold(port: int) -> bytes:
        reader, writer = await open_raw(port)
        writer.write(request_head(PATH, bogus(b""), content_length=400 * KiB))
        writer.write(b"[" * (300 * KiB))
        try:
            return await reader.readline()  # answered only if crowded out
        except ConnectionError:
            return b""
        finally:
            writer.close()

    async def scenario() -> None:
        async with receiving(data_dir, max_body=512 * KiB, max_unverified=1 * MiB) as rx:
            holders = [asyncio.ensure_future(hold(rx.port)) for _ in range(8)]
            async with asyncio.timeout(TIMEOUT):
                while rx.stats.crowded < 4:  # 8 x 300 KiB cannot all stay under 1 MiB
                    await asyncio.sleep(0.01)
            assert await rx.post(medium) == 200
            answers = [await h for h in holders if h.done()]
            assert answers and all(a.startswith(b"HTTP/1.1 503") for a in answers)
            for h in holders:
                h.cancel()
            await asyncio.gather(*holders, return_exceptions=True)

    run(scenario)
    assert [line.frame for line in lines(data_dir)] == [medium.body]
