"""Tests of ingest.log.frames: routing one frame (JSON or not, audio or not) and what to answer."""

from __future__ import annotations

import orjson

from ingest.log.frames import ErrorEvent, conversation_id_of, error_of, inspect_frame, pong_for


def test_inspect_json_object() -> None:
    """A JSON object text frame is parsed, typed and spliceable."""
    data = '{"type":"agent_response","agent_response_event":{"agent_response":"Ol\\u00e1"}}'
    frame = inspect_frame(data)
    assert frame.data is data
    assert frame.message == {"type": "agent_response", "agent_response_event": {"agent_response": "Olá"}}
    assert frame.type == "agent_response"
    assert frame.spliceable
    assert not frame.is_audio


def test_inspect_json_object_without_string_type() -> None:
    """An object whose type is missing or not a string has type None but is still spliceable."""
    for data in ('{"user_audio_chunk":"AAAA"}', '{"type":5}', '{"type":null}'):
        frame = inspect_frame(data)
        assert frame.message is not None
        assert frame.type is None
        assert frame.spliceable


def test_inspect_array_is_not_a_message() -> None:
    """A JSON array is kept as a frame without message, not spliceable."""
    frame = inspect_frame('[{"type":"ping"}]')
    assert frame.message is None
    assert frame.type is None
    assert not frame.spliceable


def test_inspect_scalars_are_not_messages() -> None:
    """JSON scalars (string, number, null) are not messages."""
    for data in ('"ping"', "42", "null", "true"):
        frame = inspect_frame(data)
        assert frame.message is None
        assert frame.type is None
        assert not frame.spliceable


def test_inspect_malformed_never_raises() -> None:
    """Malformed JSON, empty text and truncated objects give a frame with no message."""
    for data in ('{"type":"ping"', "", "{", "not json", '{"type":"ping"} trailing', '{"a":1e400}'):
        frame = inspect_frame(data)
        assert frame.data == data
        assert frame.message is None
        assert frame.type is None
        assert not frame.spliceable


def test_inspect_binary() -> None:
    """A binary frame is never parsed, even when its bytes are JSON."""
    data = b'{"type":"ping","ping_event":{"event_id":1}}'
    frame = inspect_frame(data)
    assert frame.data is data
    assert frame.message is None
    assert frame.type is None
    assert not frame.spliceable
    assert not frame.is_audio


def test_inspect_audio_fast_path() -> None:
    """The usual audio serialisation is recognised by its prefix without parsing."""
    for prefix in ('{"type":"audio"', '{"type": "audio"'):
        # Deliberately truncated: the fast path must not need valid JSON.
        data = prefix + ',"audio_event":{"audio_base_64":"' + "A" * 50_000
        frame = inspect_frame(data)
        assert frame.is_audio
        assert frame.type == "audio"
        assert frame.message is None


def test_inspect_audio_with_spaces() -> None:
    """An audio frame in another serialisation is recognised by parsing."""
    data = '{ "type" : "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 4} }'
    frame = inspect_frame(data)
    assert frame.is_audio
    assert frame.message is not None
    assert frame.message["audio_event"]["event_id"] == 4


def test_inspect_audio_prefix_needs_exact_type() -> None:
    """A type that merely starts with "audio" is not audio."""
    frame = inspect_frame('{"type":"audio_alignment","x":1}')
    assert frame.type == "audio_alignment"
    assert not frame.is_audio
    assert frame.spliceable


def test_inspect_unknown_type() -> None:
    """An unknown type is kept as it is, spliceable like any object."""
    frame = inspect_frame('{"type":"brand_new_event","brand_new_event":{"x":[1,2]}}')
    assert frame.type == "brand_new_event"
    assert frame.spliceable
    assert not frame.is_audio


def test_inspect_literal_newline() -> None:
    """An object written over several lines parses but is not spliceable."""
    for data in ('{"type":"ping",\n"ping_event":{"event_id":1}}', '{"type":"ping"}\r', '{\r\n"type":"x"}'):
        frame = inspect_frame(data)
        assert frame.message is not None
        assert frame.type in ("ping", "x")
        assert not frame.spliceable


def test_pong_echoes_event_id() -> None:
    """The pong for a ping echoes its event_id."""
    frame = inspect_frame('{"type":"ping","ping_event":{"event_id":17,"ping_ms":48}}')
    pong = pong_for(frame)
    assert pong is not None
    assert orjson.loads(pong) == {"type": "pong", "event_id": 17}
    assert pong == '{"type":"pong","event_id":17}'


def test_pong_for_ping_without_event() -> None:
    """A ping without ping_event still gets a pong, with a null event_id."""
    for data in ('{"type":"ping"}', '{"type":"ping","ping_event":"x"}'):
        pong = pong_for(inspect_frame(data))
        assert pong is not None
        assert orjson.loads(pong) == {"type": "pong", "event_id": None}


def test_pong_for_non_ping_is_none() -> None:
    """Any frame other than a ping object gets no pong."""
    for data in ('{"type":"agent_response"}', '["ping"]', "ping", b'{"type":"ping"}', '{"type":"pong"}'):
        assert pong_for(inspect_frame(data)) is None


def test_conversation_id_of_metadata() -> None:
    """The conversation id comes from conversation_initiation_metadata_event."""
    data = (
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":'
        '{"conversation_id":"conv_01abc","agent_output_audio_format":"pcm_16000"}}'
    )
    assert conversation_id_of(inspect_frame(data)) == "conv_01abc"


def test_conversation_id_of_other_frames_is_none() -> None:
    """Other frames, a missing event or a non-string id give None."""
    for data in (
        '{"type":"ping","conversation_initiation_metadata_event":{"conversation_id":"c"}}',
        '{"type":"conversation_initiation_metadata"}',
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":[]}',
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":'
        '{"conversation_id":7}}',
        "not json",
    ):
        assert conversation_id_of(inspect_frame(data)) is None


def test_error_of_full_event() -> None:
    """An error frame's code, type and message are read."""
    data = (
        '{"type":"error","error_event":{"code":1008,"error_type":"override_error",'
        '"message":"Override not allowed","reason":null}}'
    )
    error = error_of(inspect_frame(data))
    assert error == ErrorEvent(1008, "override_error", "Override not allowed")
    assert str(error) == "override_error (code 1008): Override not allowed"


def test_error_of_without_event() -> None:
    """An error frame with no error_event gives an empty ErrorEvent."""
    error = error_of(inspect_frame('{"type":"error"}'))
    assert error == ErrorEvent(None, None, None)
    assert str(error) == "error"


def test_error_of_wrong_field_types() -> None:
    """Fields of the wrong type are dropped, not trusted."""
    data = '{"type":"error","error_event":{"code":"1008","error_type":3,"message":["x"]}}'
    assert error_of(inspect_frame(data)) == ErrorEvent(None, None, None)


def test_error_str_with_missing_parts() -> None:
    """The error's text reads well whichever parts are missing."""
    assert str(ErrorEvent(None, "policy", "bad")) == "policy: bad"
    assert str(ErrorEvent(None, None, "bad")) == "error: bad"
    assert str(ErrorEvent(1011, None, None)) == "error (code 1011)"
    assert str(ErrorEvent(1011, "internal", "")) == "internal (code 1011)"


def test_error_of_other_frames_is_none() -> None:
    """Frames other than error objects give None."""
    for data in ('{"type":"ping"}', '["error"]', b'{"type":"error"}', "error"):
        assert error_of(inspect_frame(data)) is None
