"""The pure pieces of the REST sources: 429 classification, retry delays, list shapes, the captured rule, moments."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import orjson
import pytest

from ingest.log.envelope import Origin, decode_line, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.writer import LogWriter, events_dir
from ingest.sources.rest.api import conversation_url, list_params, monitor_url, parse_page
from ingest.sources.rest.captured import captured_conversation_id, scan_captured
from ingest.sources.rest.policy import (
    Action,
    ConcurrencyLimit,
    Retries,
    RetryPolicy,
    Verdict,
    classify,
    parse_retry_after,
)


def body(status: str) -> bytes:
    return orjson.dumps({"detail": {"status": status, "message": "x"}})


@pytest.mark.parametrize(
    ("status", "payload", "action"),
    [
        (200, b"{}", Action.USE),
        (404, b"{}", Action.USE),
        (422, b"{}", Action.USE),
        (401, b"{}", Action.FATAL),
        (403, b"{}", Action.FATAL),
        (429, body("too_many_concurrent_requests"), Action.WAIT_FOR_SLOT),
        (429, body("system_busy"), Action.BACK_OFF),
        (429, b"not json", Action.BACK_OFF),
        (500, b"", Action.BACK_OFF),
        (503, b"", Action.BACK_OFF),
        (408, b"", Action.BACK_OFF),
        (None, b"", Action.BACK_OFF),
    ],
)
def test_classify(status: int | None, payload: bytes, action: Action) -> None:
    assert classify(status, payload, None, now_unix=0, failure="reset").action is action


def test_fatal_message_names_the_variable_not_the_key() -> None:
    verdict = classify(401, b"", None, now_unix=0, what="the conversation list")
    assert "ELEVENLABS_API_KEY" in verdict.reason and "the conversation list" in verdict.reason


def test_retry_after_forms() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("0.5", now) == 0.5
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    date = formatdate(now + 120, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(120, abs=1)
    assert classify(429, body("system_busy"), "7", now_unix=now).retry_after == 7.0


def test_slot_waits_do_not_grow_and_retry_after_is_honoured() -> None:
    retries = Retries(RetryPolicy(slot_wait=0.5, max_slot_waits=3), random.Random(1))
    slot = Verdict(Action.WAIT_FOR_SLOT, "429")
    assert [retries.delay(slot) for _ in range(3)] == [0.5, 0.5, 0.5]
    assert retries.delay(slot) is None  # gave up
    honoured = Retries(RetryPolicy())
    assert honoured.delay(Verdict(Action.WAIT_FOR_SLOT, "429", retry_after=4.0)) == 4.0
    assert honoured.delay(Verdict(Action.BACK_OFF, "429", retry_after=9.0)) == 9.0
    capped = Retries(RetryPolicy(max_retry_after=5.0))
    assert capped.delay(Verdict(Action.BACK_OFF, "429", retry_after=3600.0)) == 5.0


def test_backoff_grows_with_jitter_then_gives_up() -> None:
    policy = RetryPolicy(initial_delay=1, min_delay=1, factor=2, max_delay=8, jitter=0.2, max_attempts=6)
    retries = Retries(policy, random.Random(7))
    busy = Verdict(Action.BACK_OFF, "busy")
    delays = [retries.delay(busy) for _ in range(5)]
    assert all(d is not None for d in delays)
    assert 0 <= delays[0] < 1  # type: ignore[operator]
    for delay, nominal in zip(delays[1:], [1, 2, 4, 8], strict=True):
        assert nominal * 0.8 <= delay <= nominal  # type: ignore[operator]
    assert retries.delay(busy) is None
    with pytest.raises(ValueError):
        retries.delay(Verdict(Action.USE, "200"))


def test_a_busy_429_waits_at_least_the_floor() -> None:
    policy = RetryPolicy(initial_delay=0.01, busy_floor=0.5)
    busy = classify(429, body("system_busy"), None, now_unix=0)
    assert busy.throttled and Retries(policy).delay(busy) == 0.5  # the first backoff would be < 10 ms
    unknown = classify(429, b"", None, now_unix=0)
    assert Retries(policy).delay(unknown) == 0.5
    assert Retries(policy).delay(classify(429, body("system_busy"), "0.1", now_unix=0)) == 0.5
    assert Retries(policy).delay(classify(429, body("system_busy"), "3", now_unix=0)) == 3.0
    # A network error or a 5xx is not the platform asking to slow down.
    assert Retries(policy).delay(classify(503, b"", None, now_unix=0)) < 0.5  # type: ignore[operator]
    assert Retries(policy).delay(classify(None, b"", None, now_unix=0, failure="reset")) < 0.5  # type: ignore[operator]


def test_the_limit_comes_down_to_what_a_refusal_shows() -> None:
    limit = ConcurrencyLimit(8)
    # A burst of 8 against an account that allows 3: the 4th to the 8th are refused, in any order.
    assert [limit.refused(level) for level in (8, 5, 4, 7, 6)] == [True, True, True, False, False]
    assert limit.limit == 3
    # Refused as the only one in flight: another tool holds the slots. Never below one.
    assert limit.refused(1) and limit.limit == 1
    assert not limit.refused(1) and limit.limit == 1
    with pytest.raises(ValueError):
        ConcurrencyLimit(0)


def test_the_limit_rises_slowly_and_only_when_it_held_requests_back() -> None:
    limit = ConcurrencyLimit(4, patience=2)
    limit.refused(3)  # down to 2: a raise refused (the ceiling was one), so raises wait twice as long
    assert not any(limit.served(1) for _ in range(100))  # one in flight says nothing of the limit
    assert [limit.served(2) for _ in range(2 * 2 * 2)] == [False] * 7 + [True]
    assert limit.limit == 3
    limit.refused(3)  # the probe is refused: the next one waits twice as long again
    assert limit.limit == 2
    assert sum(limit.served(2) for _ in range(2 * 2 * 4 - 1)) == 0
    assert limit.served(2) and limit.limit == 3
    # This time the account has room: a whole limit's worth served at 3, and raises are quick again.
    assert not any(limit.served(3) for _ in range(3))
    assert [limit.served(3) for _ in range(2 * 3 - 3)] == [False, False, True]
    assert limit.limit == 4 == limit.ceiling
    assert not any(limit.served(4) for _ in range(100))  # never above the ceiling


def refusals(limit: ConcurrencyLimit, room: Callable[[int], int], requests: int) -> int:
    """Serve ``requests`` through a model account with ``room(served)`` slots; count the refusals.

    A burst as wide as the limit first, then the caller keeps its limit full
    (as :class:`~ingest.sources.rest.client.RestClient` does with a backlog):
    every request is sent as the limit-th in flight.

    """
    served = refused = 0
    levels = list(range(1, limit.limit + 1))  # popped from the top: refusals take no time, come back first
    while served < requests:
        level = levels.pop() if levels else limit.limit
        if level <= room(served):
            limit.served(level)
            served += 1
        else:
            limit.refused(level)
            refused += 1
        assert 1 <= limit.limit <= limit.ceiling
    return refused


@pytest.mark.parametrize(("ceiling", "room"), [(4, 2), (16, 3), (32, 1), (8, 8)])
def test_refusals_grow_with_the_log_of_the_requests_not_their_number(ceiling: int, room: int) -> None:
    few, many = (refusals(ConcurrencyLimit(ceiling), lambda _: room, n) for n in (100, 100_000))
    assert few <= ceiling - room + math.log2(100)
    assert many - few <= math.log2(100_000 / 100) + 1


def test_the_limit_follows_the_room_the_account_has() -> None:
    limit = ConcurrencyLimit(8)
    refusals(limit, lambda served: 3, 10_000)
    assert limit.limit in (3, 4)
    # The other tool stops: within a few thousand requests the limit is the ceiling again.
    refusals(limit, lambda served: 8, 5_000)
    assert limit.limit == 8
    # It starts again with more: the first refusal brings the limit down.
    assert refusals(limit, lambda served: 2, 2) > 0 and limit.limit == 2


def test_list_params_and_urls() -> None:
    assert list_params("agent_x", page_size=500) == {"page_size": "100", "agent_id": "agent_x"}
    params = list_params("a", cursor="c", page_size=10, after_unix=5, before_unix=9)
    assert params == {
        "page_size": "10",
        "agent_id": "a",
        "cursor": "c",
        "call_start_after_unix": "5",
        "call_start_before_unix": "9",
    }
    assert conversation_url("https://api.eu.residency.elevenlabs.io/", "conv 1") == (
        "https://api.eu.residency.elevenlabs.io/v1/convai/conversations/conv%201"
    )
    assert (
        monitor_url("https://api.elevenlabs.io", "c")
        == "wss://api.elevenlabs.io/v1/convai/conversations/c/monitor"
    )
    assert monitor_url("http://127.0.0.1:9", "c").startswith("ws://127.0.0.1:9/")


def test_parse_page() -> None:
    page = parse_page(
        b'{"conversations":[{"conversation_id":"a","status":"done","start_time_unix_secs":5},'
        b'{"conversation_id":7},{"conversation_id":"b"}],"next_cursor":"n","has_more":true}'
    )
    assert [(s.conversation_id, s.status, s.start_unix) for s in page.summaries] == [
        ("a", "done", 5),
        ("b", None, None),
    ]
    assert page.next_cursor == "n" and not page.last
    assert parse_page(b'{"conversations":[],"next_cursor":"n","has_more":false}').last
    with pytest.raises(ValueError):
        parse_page(b'{"items":[]}')


def line(source: str, frame: str, conversation_id: str | None = None):  # type: ignore[no-untyped-def]
    origin = Origin(source, "in", "agent_x", None, conversation_id)
    return decode_line(encode_line(1, "2026-01-01T00:00:00.000000Z", origin, inspect_frame(frame)))


def test_captured_rule() -> None:
    transcription = '{"type":"post_call_transcription","data":{"conversation_id":"conv_w","transcript":[]}}'
    assert captured_conversation_id(line("webhook", transcription)) == "conv_w"
    pretty = '{\n "type": "post_call_transcription",\n "data": {"conversation_id": "conv_p", "transcript": [\n]}\n}'
    assert captured_conversation_id(line("webhook", pretty)) == "conv_p"
    audio = '{"type":"post_call_audio","data":{"conversation_id":"conv_a"}}'
    assert captured_conversation_id(line("webhook", audio)) is None
    assert captured_conversation_id(line("rest", '{"status":"done","transcript":[]}', "conv_r")) == "conv_r"
    assert captured_conversation_id(line("rest", '{"conversation_id":"conv_b","transcript":[]}')) == "conv_b"
    assert captured_conversation_id(line("monitor", '{"type":"user_transcript"}', "conv_m")) is None
    assert captured_conversation_id(line("agent_ws", '{"type":"user_transcript"}', "conv_m")) is None


@pytest.mark.parametrize(
    ("source", "frame"),
    [
        # The agent's "exclude transcript" webhook option.
        ("webhook", '{"type":"post_call_transcription","data":{"conversation_id":"conv_x","status":"done"}}'),
        (
            "webhook",
            '{"type":"post_call_transcription","data":{"conversation_id":"conv_x","transcript":null}}',
        ),
        # The OpenTelemetry format: spans, no transcript list.
        (
            "webhook",
            '{"type":"post_call_transcription_otel","data":{"conversation_id":"conv_x","otlp_traces":{}}}',
        ),
        (
            "webhook",
            '{"type":"post_call_transcription_otel","data":{"conversation_id":"conv_x","transcript":[]}}',
        ),
        ("webhook", "not json"),
        ("rest", '{"conversation_id":"conv_x","status":"done"}'),
        ("rest", '{"conversation_id":"conv_x","status":"done","transcript":"none"}'),
        ("rest", "[]"),
    ],
)
def test_a_record_without_its_transcript_captures_nothing(source: str, frame: str) -> None:
    assert captured_conversation_id(line(source, frame, "conv_x")) is None


def test_scan_captured_reads_from_where_it_stopped(tmp_path: Path) -> None:
    chatter = inspect_frame('{"type":"user_transcript","user_transcription_event":{"event_id":1}}')
    with LogWriter.open(tmp_path) as writer:
        writer.append(Origin("agent_ws", "in", "a", "c", "conv_ws"), chatter)
        writer.append(Origin("rest", "in", "a", None, "conv_1"), inspect_frame('{"transcript":[]}'))
        first = scan_captured(events_dir(tmp_path))
        assert (first.conversation_ids, first.last_seq) == ({"conv_1"}, 2)
        writer.append(Origin("monitor", "in", "a", "m", "conv_live"), chatter)
        delivery = '{"type":"post_call_transcription","data":{"conversation_id":"conv_2","transcript":[]}}'
        writer.append(Origin("webhook", "in", "a", None, None), inspect_frame(delivery))
        first.conversation_ids.discard("conv_1")  # a rescan from seq 2 must not find it again
        again = scan_captured(events_dir(tmp_path), first)
    assert again is first and (again.conversation_ids, again.last_seq) == ({"conv_2"}, 4)
