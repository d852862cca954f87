"""The agent socket's events as values, each checked against the platform's AsyncAPI definition."""

from __future__ import annotations

from typing import Any

import orjson

from ingest.simulator import events
from tests.ingest.simulator.reference import ASYNCAPI_EVENTS, asyncapi_errors


def all_frames() -> list[dict[str, Any]]:
    return [
        events.metadata("conv_1"),
        events.ping(1, None),
        events.ping(2, 48),
        events.error(1008, "override_error", "nope"),
        *events.user_transcripts("Olá, tudo bem?", 2),
        *events.agent_reply("Sure thing", 2, text_only=True),
        *events.agent_reply("Sure thing", 3, text_only=False),
        *events.extra_events(1, "Hello!")[:-1],  # the last one is a type from the future, on purpose
        *events.every_event(4, timestamp="2026-08-22T10:00:00.000Z"),
        orjson.loads(events.flood_frame(7)),
        orjson.loads(events.huge_frame(9, 64)),
    ]


def test_every_frame_is_shaped_per_the_asyncapi() -> None:
    for frame in all_frames():
        assert asyncapi_errors(frame) == [], frame


def test_every_server_type_of_the_asyncapi_is_built() -> None:
    assert {frame["type"] for frame in all_frames()} == set(ASYNCAPI_EVENTS)


def test_extra_events_end_with_a_type_no_client_knows() -> None:
    assert asyncapi_errors(events.extra_events(1, None)[-1])


def test_text_replies_stream_parts_then_the_response() -> None:
    frames = events.agent_reply("one two three", 5, text_only=True)
    parts = [f["text_response_part"] for f in frames[:-1]]
    assert [p["type"] for p in parts] == ["start", "delta", "delta", "delta", "stop"]
    assert "".join(p["text"] for p in parts) == "one two three"
    assert frames[-1] == {
        "type": "agent_response",
        "agent_response_event": {"agent_response": "one two three", "event_id": 5},
    }


def test_audio_replies_align_every_character() -> None:
    frames = events.agent_reply("Hello there", 5, text_only=False)
    assert frames[0]["type"] == "agent_response"
    audio = [f["audio_event"] for f in frames[1:]]
    assert len(audio) == events.AUDIO_FRAMES_PER_REPLY
    assert "".join(c for a in audio for c in a["alignment"]["chars"]) == "Hello there"


def test_spoken_turns_are_tentative_then_final_with_one_event_id() -> None:
    tentative, final = events.user_transcripts("I need help!", 3)
    assert tentative["tentative_user_transcription_event"] == {"user_transcript": "I need", "event_id": 3}
    assert final["user_transcription_event"] == {"user_transcript": "I need help!", "event_id": 3}


def test_every_event_order_and_ids() -> None:
    frames = events.every_event(4, timestamp="2026-08-22T10:00:00.000Z")
    assert frames[0]["type"] == "asr_initiation_metadata"
    reasoning = [f["reasoning_response_part"] for f in frames if f["type"] == "agent_reasoning_response_part"]
    assert [r["type"] for r in reasoning] == ["start", "delta", "delta", "stop"]
    assert {r["event_id"] for r in reasoning} == {"4"}  # a string, per the definition
    states = [f["mcp_tool_call"]["state"] for f in frames if f["type"] == "mcp_tool_call"]
    assert states == ["loading", "success"]
    typing = [f["agent_typing_event"]["is_typing"] for f in frames if f["type"] == "agent_typing"]
    assert typing == [True, False]
    kinds = [f["type"] for f in frames]
    assert (
        kinds.index("external_agent_connected")
        < kinds.index("agent_typing")
        < kinds.index("external_agent_disconnected")
    )


def test_flood_and_huge_frames_parse() -> None:
    assert orjson.loads(events.flood_frame(12)) == {
        "type": "user_transcript",
        "user_transcription_event": {"user_transcript": "flood 12", "event_id": 12},
    }
    huge = orjson.loads(events.huge_frame(3, 1000))["user_transcription_event"]
    assert len(huge["user_transcript"]) == 1000 and huge["user_transcript"].startswith("huge x")


def test_monitor_frames_of_entries() -> None:
    user = {"role": "user", "message": "Olá", "source_event_id": 4}
    agent = {"role": "agent", "message": "Hi", "source_event_id": 4}
    [said] = events.monitor_frames(user, 2)
    assert orjson.loads(said) == {
        "type": "user_transcript",
        "user_transcription_event": {"user_transcript": "Olá", "event_id": 4},
    }
    reply, *audio = [orjson.loads(f) for f in events.monitor_frames(agent, 3)]
    assert reply["agent_response_event"] == {"agent_response": "Hi", "event_id": 4}
    assert [a["type"] for a in audio] == ["audio", "audio"]
    minimal = {"role": "user", "message": "no ids"}
    assert orjson.loads(events.monitor_frames(minimal, 7)[0])["user_transcription_event"]["event_id"] == 7
    assert events.monitor_frames({"role": "user", "message": None, "source_event_id": 5}, 8) == []
    for frame in [*events.monitor_frames(user, 2), *events.monitor_frames(agent, 3)]:
        assert asyncapi_errors(orjson.loads(frame)) == []
