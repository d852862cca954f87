"""A delivery's body: hashed and bounded before it is verified, its type and ids after. Plain values."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from ingest.sources.webhook.body import (
    AUDIO_HEAD,
    SNIFF_AFTER,
    AudioBody,
    BodyScanner,
    DeliveryBody,
    DeliveryInfo,
    delivery_info,
    names_audio,
)
from ingest.sources.webhook.signature import SignatureError, SignatureHeader, sign, signer


SECRET = "wsec_body_test"
NOW = 1_800_000_000


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


def test_deep_nesting_is_followed_past_the_wanted_depth() -> None:
    """Keys deep inside are never wanted ones, however deep; the top-level ones after them still count."""
    depth = 5000
    body = b'{"data":' + b'{"type":' * depth + b'"x"' + b"}" * depth + b',"type":"post_call_audio"}'
    scanner = scan(body, cuts=list(range(0, len(body), 999)))
    assert scanner.complete
    assert scanner.info == DeliveryInfo("post_call_audio", None, None)


@pytest.mark.parametrize(
    ("head", "audio"),
    [
        (b'{"type":"post_call_audio","data":{}}', True),
        (b'  {\n  "type" : "post_call_audio",\n', True),
        (b'{"type":"post_call_audio"', True),
        (b'{"type":"post_call_transcription","data":{}}', False),
        (b'{"data":{},"type":"post_call_audio"}', False),  # type not first: not recognised
        (b'{"type":"post_call_audio_x"', False),
        (b'["type","post_call_audio"]', False),
        (b" " * 400 + b'{"type":"post_call_audio"', False),  # beyond the window
        (b"", False),
    ],
)
def test_names_audio_looks_only_at_the_first_bytes(head: bytes, audio: bool) -> None:
    """Only the usual start of an audio body counts, within a bounded window."""
    assert names_audio(head) is audio
    assert names_audio(bytearray(head)) is audio


def delivery(data: bytes, **limits: int) -> tuple[DeliveryBody, SignatureHeader]:
    header = SignatureHeader(NOW, (sign(SECRET, NOW, data).split("v0=")[1],))
    return DeliveryBody(signer(SECRET, NOW), **limits), header


def feed_all(body: DeliveryBody, data: bytes, piece: int) -> bool:
    for start in range(0, len(data), piece):
        if not body.feed(data[start : start + piece]):
            return False
    return True


def test_a_small_body_is_kept_whole_and_given_once_verified() -> None:
    """A body within max_body is returned byte for byte by verify()."""
    data = b'{"type":"post_call_transcription","data":{}}'
    body, header = delivery(data, max_body=1000, max_audio_body=10_000)
    assert feed_all(body, data, 5)
    assert body.verify(header) == data


def test_nothing_is_given_without_a_valid_signature() -> None:
    """A wrong signature, or a body changed by one byte, is a mismatch: the content never comes out."""
    data = b'{"type":"post_call_transcription","data":{}}'
    body, _ = delivery(data, max_body=1000, max_audio_body=10_000)
    assert feed_all(body, data, 7)
    with pytest.raises(SignatureError) as info:
        body.verify(SignatureHeader(NOW, ("00" * 32,)))
    assert info.value.reason == "mismatch"
    body, header = delivery(data, max_body=1000, max_audio_body=10_000)
    assert feed_all(body, data.replace(b"{}", b"[]"), 7)
    with pytest.raises(SignatureError):
        body.verify(header)


@pytest.mark.parametrize("declared", [False, True])
def test_an_oversized_body_that_is_not_audio_is_refused_at_max_body(declared: bool) -> None:
    """Unverified, a body over max_body is not read on (at once when its declared size is over)."""
    data = b"[" * 5000  # would be deep nesting to a parser; nothing parses it
    body = DeliveryBody(
        signer(SECRET, NOW),
        max_body=1000,
        max_audio_body=10**9,
        declared_size=len(data) if declared else None,
    )
    assert not feed_all(body, data, 100)
    assert body.size == (300 if declared else 1100)
    assert body.held <= 1100


def test_a_large_audio_body_is_read_but_not_kept() -> None:
    """An audio body over max_body is hashed to its end, only its head kept; once verified it names its ids."""
    data = audio_body(b"\x01" * 50_000)
    body, header = delivery(data, max_body=1000, max_audio_body=10**6)
    assert feed_all(body, data, 999)
    assert body.held <= AUDIO_HEAD
    result = body.verify(header)
    assert isinstance(result, AudioBody)
    assert result.size == len(data)
    assert result.info == DeliveryInfo("post_call_audio", "agent_á", "conv_1")


def test_an_audio_body_is_dropped_once_past_the_sniff_size() -> None:
    """Under max_body, an audio body stops being held after SNIFF_AFTER bytes."""
    data = audio_body(b"\x01" * (SNIFF_AFTER + 1000))
    body, header = delivery(data, max_body=64 * SNIFF_AFTER, max_audio_body=10**9)
    assert feed_all(body, data, 64 * 1024)
    assert body.held <= AUDIO_HEAD
    assert isinstance(body.verify(header), AudioBody)


def test_a_small_audio_body_whose_type_comes_last_is_kept() -> None:
    """Under SNIFF_AFTER any audio body is kept whole; its parse, once verified, says it is audio."""
    data = audio_body(b"\x01" * 3000, order="type-last")
    body, header = delivery(data, max_body=10**6, max_audio_body=10**9)
    assert feed_all(body, data, 1000)
    assert body.verify(header) == data


def test_a_large_audio_body_whose_type_comes_last_is_too_large() -> None:
    """Past max_body only the usual start counts: a type named later is not looked for."""
    data = audio_body(b"\x01" * 50_000, order="type-last")
    body, _ = delivery(data, max_body=1000, max_audio_body=10**6)
    assert not feed_all(body, data, 1000)


def test_audio_over_max_audio_body_is_refused() -> None:
    """Even audio stops at max_audio_body."""
    data = audio_body(b"\x01" * 50_000)
    body, _ = delivery(data, max_body=1000, max_audio_body=20_000)
    assert not feed_all(body, data, 1000)
    assert body.size <= 21_000


@settings(max_examples=50)
@given(
    data=st.binary(max_size=3000),
    audio=st.booleans(),
    piece=st.integers(min_value=1, max_value=700),
    max_body=st.integers(min_value=1, max_value=2500),
)
def test_memory_never_exceeds_max_body_and_the_hash_covers_every_byte(
    data: bytes, audio: bool, piece: int, max_body: int
) -> None:
    """Whatever arrives: held bytes stay within max_body (plus one piece), and a kept body is exact."""
    if audio:
        data = b'{"type":"post_call_audio",' + data
    body, header = delivery(data, max_body=max_body, max_audio_body=10**6)
    whole = True
    for start in range(0, len(data), piece):
        whole = body.feed(data[start : start + piece])
        assert body.held <= max(max_body, AUDIO_HEAD) + piece
        if not whole:
            break
    if whole:
        result = body.verify(header)
        assert result == data or isinstance(result, AudioBody)
