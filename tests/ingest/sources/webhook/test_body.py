"""A delivery's type and ids, from a parsed body or a stream too big to keep. Plain values."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from ingest.sources.webhook.body import SNIFF_AFTER, BodyScanner, DeliveryBody, DeliveryInfo, delivery_info


def scan(body: bytes, cuts: list[int] | None = None) -> BodyScanner:
    scanner = BodyScanner()
    points = sorted({0, len(body), *(cuts or [])})
    for start, end in zip(points, points[1:], strict=False):
        scanner.feed(body[start:end])
    return scanner


def audio_body(audio: bytes, *, order: str = "type-first", ascii_only: bool = False) -> bytes:
    data = {
        "agent_id": "agent_á",
        "conversation_id": "conv_1",
        "full_audio": base64.b64encode(audio).decode(),
    }
    payload: dict[str, Any] = {"type": "post_call_audio", "event_timestamp": 1, "data": data}
    if order == "type-last":
        payload = {"data": data, "event_timestamp": 1, "type": "post_call_audio"}
    return json.dumps(payload, ensure_ascii=ascii_only).encode()


def test_delivery_info_reads_a_parsed_body() -> None:
    """type and data's ids come from the parsed object; anything else is None."""
    message = {"type": "post_call_transcription", "data": {"agent_id": "a", "conversation_id": "c"}}
    assert delivery_info(message) == DeliveryInfo("post_call_transcription", "a", "c")
    assert delivery_info({"type": 3, "data": []}) == DeliveryInfo(None, None, None)
    assert delivery_info(None) == DeliveryInfo(None, None, None)


@pytest.mark.parametrize("order", ["type-first", "type-last"])
def test_scanner_finds_the_fields_of_an_audio_body(order: str) -> None:
    """The fields are found whether they come before or after the audio."""
    scanner = scan(audio_body(b"\x00" * 5000, order=order), cuts=[1, 17, 100, 2000])
    assert scanner.info == DeliveryInfo("post_call_audio", "agent_á", "conv_1")
    assert scanner.info.is_audio
    assert scanner.complete


def test_nested_keys_are_not_taken_for_top_level_ones() -> None:
    """A "type" inside data, an array or a string never counts."""
    body = orjson.dumps(
        {
            "data": {"type": "post_call_audio", "agent_id": "a", "items": [{"conversation_id": "x"}]},
            "note": '"type":"post_call_audio"',
            "type": "post_call_transcription",
        }
    )
    assert scan(body).info == DeliveryInfo("post_call_transcription", "a", None)


def test_escapes_split_between_pieces_are_followed() -> None:
    """An escaped quote cut right after its backslash does not end the string."""
    body = b'{"note":"a\\"b","type":"post_call_\\u0061udio"}'
    for cut in range(len(body)):
        scanner = scan(body, [cut])
        assert scanner.info.type == "post_call_audio", cut
        assert scanner.complete


@pytest.mark.parametrize(
    ("body", "malformed"),
    [
        (b'{"type":"x"}', False),
        (b'  {"type":"x"} \n', False),
        (b'{"type":"x"}{"type":"y"}', True),
        (b'[{"type":"x"}]', True),
        (b'"post_call_audio"', True),
        (b'{"type":"x"]', True),
    ],
)
def test_malformed_bodies_are_flagged(body: bytes, malformed: bool) -> None:
    """Only one top-level JSON object is complete."""
    scanner = scan(body)
    assert scanner.malformed is malformed
    assert scanner.complete is not malformed


def test_an_unfinished_body_is_not_complete() -> None:
    """A body cut short is not complete."""
    assert not scan(b'{"type":"post_call_audio","data":{"full_audio":"AAAA').complete


def test_overlong_wanted_values_are_dropped() -> None:
    """A wanted value longer than the scanner keeps is treated as absent."""
    body = orjson.dumps({"type": "post_call_audio", "data": {"conversation_id": "c" * 5000}})
    assert scan(body).info == DeliveryInfo("post_call_audio", None, None)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
json_values = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
wanted_keys = st.sampled_from(["type", "agent_id", "conversation_id", "data", "full_audio"])


@settings(max_examples=100)
@given(
    payload=st.dictionaries(
        st.one_of(wanted_keys, st.text(max_size=8)),
        st.one_of(json_values, st.dictionaries(st.one_of(wanted_keys, st.text(max_size=8)), json_values)),
        max_size=6,
    ),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_scanner_agrees_with_a_parser(payload: dict[str, Any], ascii_only: bool, cuts: list[int]) -> None:
    """Whatever the object and however it is cut, the scanner finds what a parser finds."""
    body = json.dumps(payload, ensure_ascii=ascii_only).encode()
    scanner = scan(body, cuts)
    assert scanner.complete
    assert scanner.info == delivery_info(payload)


def feed_all(body: DeliveryBody, data: bytes, piece: int) -> bool:
    for start in range(0, len(data), piece):
        if not body.feed(data[start : start + piece]):
            return False
    return True


def test_a_small_body_is_kept_whole() -> None:
    """A body within max_body is returned byte for byte."""
    data = b'{"type":"post_call_transcription","data":{}}'
    body = DeliveryBody(max_body=1000, max_audio_body=10_000)
    assert feed_all(body, data, 5)
    assert body.finish() == data


def test_a_large_transcription_is_refused_as_soon_as_its_type_is_known() -> None:
    """Past max_body, a body whose type is not audio stops being read."""
    data = orjson.dumps({"type": "post_call_transcription", "data": {"x": "y" * 5000}})
    body = DeliveryBody(max_body=1000, max_audio_body=10**9)
    assert not feed_all(body, data, 100)
    assert body.size <= 1100


def test_a_declared_large_body_is_scanned_from_the_start() -> None:
    """A Content-Length over max_body: refused at the first piece that shows its type."""
    data = orjson.dumps({"type": "call_initiation_failure", "data": {"x": "y" * 5000}})
    body = DeliveryBody(max_body=1000, max_audio_body=10**9, declared_size=len(data))
    assert not body.feed(data[:100])


def test_a_large_audio_body_is_read_but_not_kept() -> None:
    """An audio body over max_body is read to the end and only its fields kept."""
    data = audio_body(b"\x01" * 50_000)
    body = DeliveryBody(max_body=1000, max_audio_body=10**6)
    assert feed_all(body, data, 999)
    assert body.finish() == DeliveryInfo("post_call_audio", "agent_á", "conv_1")
    assert body._kept is None


def test_an_audio_body_is_dropped_once_past_the_sniff_size() -> None:
    """Under max_body, an audio body stops being buffered after SNIFF_AFTER bytes."""
    data = audio_body(b"\x01" * (SNIFF_AFTER + 1000))
    body = DeliveryBody(max_body=64 * SNIFF_AFTER, max_audio_body=10**9)
    assert feed_all(body, data, 64 * 1024)
    assert isinstance(body.finish(), DeliveryInfo)


def test_audio_over_max_audio_body_is_refused() -> None:
    """Even audio stops at max_audio_body."""
    data = audio_body(b"\x01" * 50_000)
    body = DeliveryBody(max_body=1000, max_audio_body=20_000)
    assert not feed_all(body, data, 1000)


def test_an_oversized_body_of_unknown_type_ends_too_large() -> None:
    """A body over max_body that never shows a type is too large at the end."""
    data = orjson.dumps({"data": {"x": "y" * 5000}})
    body = DeliveryBody(max_body=1000, max_audio_body=10**6)
    assert feed_all(body, data, 1000)
    assert body.finish() is None
