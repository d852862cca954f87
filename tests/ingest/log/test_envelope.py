"""Tests of ingest.log.envelope: the log line format, verbatim splicing and the crc32 check."""

from __future__ import annotations

import base64
import json
import re
import zlib
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from ingest.log.envelope import LineError, Origin, decode_line, encode_line, format_timestamp, frame_bytes
from ingest.log.frames import inspect_frame


ORIGIN = Origin("agent_ws", "in", "agent_x", "conn-1", "conv_1")
STAMP = "2026-11-25T12:00:00.123456Z"
RFC3339_UTC_MICROS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
FIELDS = [
    "seq",
    "received_at",
    "source",
    "direction",
    "agent_id",
    "connection_id",
    "conversation_id",
    "crc32",
]


def _line(data: str | bytes, seq: int = 1, origin: Origin = ORIGIN) -> bytes:
    return encode_line(seq, STAMP, origin, inspect_frame(data))


def test_field_order_and_types() -> None:
    """An object frame's line has the envelope fields in order, then event last."""
    data = '{"type":"ping","ping_event":{"event_id":1}}'
    line = _line(data, seq=42)
    envelope = orjson.loads(line)
    assert list(envelope) == [*FIELDS, "event"]
    assert envelope["seq"] == 42
    assert envelope["received_at"] == STAMP
    assert envelope["source"] == "agent_ws"
    assert envelope["direction"] == "in"
    assert envelope["agent_id"] == "agent_x"
    assert envelope["connection_id"] == "conn-1"
    assert envelope["conversation_id"] == "conv_1"
    assert envelope["crc32"] == zlib.crc32(data.encode())
    assert envelope["event"] == {"type": "ping", "ping_event": {"event_id": 1}}
    assert line.startswith(b'{"seq":42,"received_at":"2026-11-25T12:00:00.123456Z",')


def test_null_fields_before_conversation() -> None:
    """Missing agent, connection and conversation ids are JSON nulls, and direction out is kept."""
    origin = Origin("agent_ws", "out", None, None, None)
    envelope = orjson.loads(_line('{"type":"user_message","text":"hi"}', origin=origin))
    assert envelope["direction"] == "out"
    assert envelope["agent_id"] is None
    assert envelope["connection_id"] is None
    assert envelope["conversation_id"] is None


def test_format_timestamp_rfc3339_utc_micros() -> None:
    """Timestamps are RFC 3339 UTC with six fractional digits ending in Z, converted from any zone."""
    assert format_timestamp(datetime(2026, 11, 25, 12, 0, 0, 1, tzinfo=UTC)) == "2026-11-25T12:00:00.000001Z"
    assert format_timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    plus2 = timezone(timedelta(hours=2))
    assert (
        format_timestamp(datetime(2026, 11, 25, 14, 0, 0, 5, tzinfo=plus2)) == "2026-11-25T12:00:00.000005Z"
    )
    stamp = format_timestamp(datetime.now(UTC))
    assert RFC3339_UTC_MICROS.match(stamp)
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).tzinfo is not None


def test_splice_keeps_unicode_escapes() -> None:
    """ "Ol\\u00e1" stays escaped exactly as received, and so do emoji surrogate pairs."""
    data = '{"type":"agent_response","agent_response_event":{"agent_response":"Ol\\u00e1 \\ud83d\\ude00"}}'
    line = _line(data)
    assert b'"Ol\\u00e1 \\ud83d\\ude00"' in line
    assert line.endswith(b',"event":' + data.encode() + b"}\n")
    decoded = decode_line(line)
    assert decoded.frame == data.encode()
    assert decoded.event is not None
    assert decoded.event["agent_response_event"]["agent_response"] == "Olá 😀"


def test_splice_keeps_literal_utf8_and_key_order_and_whitespace() -> None:
    """Literal UTF-8, key order, spacing and duplicate keys inside the frame are preserved byte for byte."""
    data = '  { "z" : 1,\t"a":[ 1 , 2 ],"type":"x","emoji":"😀","s":"a\\/b","z":2 }  '
    line = _line(data)
    assert data.encode() in line
    decoded = decode_line(line)
    assert decoded.frame == data.encode()
    assert decoded.type == "x"


@pytest.mark.parametrize(
    "data",
    [
        "[1,2,3]",
        '"just a string"',
        "42",
        "",
        '{"type":"ping"',
        "not json at all",
        '{"type":"ping",\n"ping_event":{"event_id":1}}',
        '{"type":"ping"}\r\n',
        "line one\nline two\n",
        "tab\there \x00 nul \x1f unit \u2028 sep",
    ],
)
def test_non_objects_go_to_raw_and_round_trip(data: str) -> None:
    """Text frames that are not one-line JSON objects are kept under raw and come back exactly."""
    line = _line(data)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    envelope = orjson.loads(line)
    assert list(envelope) == [*FIELDS, "raw"]
    assert envelope["raw"] == data
    decoded = decode_line(line)
    assert decoded.frame == data.encode()
    assert decoded.event is None
    assert decoded.type is None


@pytest.mark.parametrize("data", [b"", b"\x00\xff\n\r{}", b'{"type":"ping"}', bytes(range(256))])
def test_binary_goes_to_raw_b64_and_round_trips(data: bytes) -> None:
    """Binary frames are kept as base64 under raw_b64 and come back exactly."""
    line = _line(data)
    assert line.count(b"\n") == 1
    envelope = orjson.loads(line)
    assert list(envelope) == [*FIELDS, "raw_b64"]
    assert base64.b64decode(envelope["raw_b64"]) == data
    assert envelope["crc32"] == zlib.crc32(data)
    assert decode_line(line).frame == data


def test_huge_frame_round_trips() -> None:
    """A 20 MiB object frame is spliced and decoded back exactly."""
    data = '{"type":"big","blob":"' + "x" * (20 * 1024 * 1024) + '"}'
    line = _line(data, seq=7)
    assert line.count(b"\n") == 1
    decoded = decode_line(line)
    assert decoded.seq == 7
    assert decoded.frame == data.encode()


def test_decode_with_or_without_newline() -> None:
    """decode_line accepts a line with or without its trailing newline."""
    line = _line('{"type":"ping"}', seq=3)
    assert decode_line(line).seq == decode_line(line[:-1]).seq == 3


def test_logline_properties() -> None:
    """LogLine exposes the envelope's time, source, direction, conversation and type."""
    decoded = decode_line(_line('{"type":"user_transcript"}', seq=5))
    assert decoded.received_at == STAMP
    assert decoded.source == "agent_ws"
    assert decoded.direction == "in"
    assert decoded.conversation_id == "conv_1"
    assert decoded.type == "user_transcript"


def test_crc_mismatch_in_spliced_event_detected() -> None:
    """A flipped byte in a spliced frame still parses but fails the crc32 check."""
    line = _line('{"type":"user_transcript","text":"hello"}')
    corrupt = line.replace(b"hello", b"jello")
    orjson.loads(corrupt)  # still valid JSON
    with pytest.raises(LineError, match="crc32"):
        decode_line(corrupt)


def test_crc_mismatch_in_raw_and_raw_b64_detected() -> None:
    """A changed raw string or base64 payload fails the crc32 check."""
    raw_line = _line("hello world")
    with pytest.raises(LineError, match="crc32"):
        decode_line(raw_line.replace(b"hello", b"jello"))
    b64_line = _line(b"\x00\x01\x02")
    envelope = orjson.loads(b64_line)
    envelope["raw_b64"] = base64.b64encode(b"\x00\x01\x03").decode()
    with pytest.raises(LineError, match="crc32"):
        decode_line(orjson.dumps(envelope))


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\x00\x00\x00\x00",
        b'{"seq":1,"received_at":"x"',
        b"[1,2]",
        b'{"received_at":"x","raw":"a"}',
        b'{"seq":"1","raw":"a"}',
        b'{"seq":true,"raw":"a"}',
        b'{"seq":1}',
        b'{"seq":1,"raw_b64":"not base64!"}',
        b'{"seq":1,"event":[1]}',
    ],
)
def test_invalid_lines_raise_line_error(line: bytes) -> None:
    """Torn, foreign or incomplete lines raise LineError."""
    with pytest.raises(LineError):
        decode_line(line)


def _json_values() -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


@st.composite
def _json_object_texts(draw: st.DrawFn) -> str:
    """JSON objects serialised in many ways: ASCII escapes or not, various spacing."""
    value = draw(st.dictionaries(st.text(max_size=8), _json_values(), max_size=5))
    ensure_ascii = draw(st.booleans())
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    pad = draw(st.sampled_from(["", " ", "\t"]))
    return pad + json.dumps(value, ensure_ascii=ensure_ascii, separators=separators) + pad


@settings(max_examples=150, deadline=None)
@given(
    data=st.text() | st.binary() | _json_object_texts(),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_encode_decode_property(data: str | bytes, seq: int) -> None:
    """Any text or binary frame makes exactly one line that decodes to the same seq and frame bytes."""
    line = _line(data, seq=seq)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    decoded = decode_line(line)
    assert decoded.seq == seq
    assert decoded.frame == frame_bytes(data)
    assert decoded.envelope["crc32"] == zlib.crc32(frame_bytes(data))
