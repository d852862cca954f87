"""The checks the simulator is held to can fail: they catch the shapes the platform would not send."""

from __future__ import annotations

import copy
from typing import Any

from elevenlabs.types import GetConversationResponseModel

from ingest.simulator.conversation import conversation_body, synthesize
from tests.ingest.simulator.reference import ASYNCAPI_EVENTS, asyncapi_errors, sdk_errors


def body() -> dict[str, Any]:
    conversation = synthesize(
        seed=0, key="ref", agent_id="agent_demo", start_unix=1_700_000_000, status="done"
    )
    return conversation_body(conversation, "done")


def test_a_valid_body_has_no_errors() -> None:
    assert sdk_errors(GetConversationResponseModel, body()) == []


def test_the_shapes_the_simulator_used_to_serve_are_caught() -> None:
    """What the issue found: no has_auxiliary_audio, a null agent_metadata.agent_id, "phone" as a source."""
    missing = body()
    del missing["has_auxiliary_audio"]
    null_agent = body()
    null_agent["transcript"][0]["agent_metadata"]["agent_id"] = None
    phone = body()
    phone["metadata"]["conversation_initiation_source"] = "phone"
    assert sdk_errors(GetConversationResponseModel, missing) == [
        "$.has_auxiliary_audio: required by GetConversationResponseModel, missing"
    ]
    assert sdk_errors(GetConversationResponseModel, null_agent) == [
        "$.transcript[0].agent_metadata.agent_id: expected str, got None"
    ]
    [error] = sdk_errors(GetConversationResponseModel, phone)
    assert error.startswith("$.metadata.conversation_initiation_source: 'phone' is not one of")


def test_unknown_fields_and_wrong_types_are_caught() -> None:
    extra = body()
    extra["metadata"]["whatsap"] = {}
    wrong = body()
    wrong["transcript"][1]["time_in_call_secs"] = "3"
    boolean = body()
    boolean["metadata"]["cost"] = True
    assert sdk_errors(GetConversationResponseModel, extra) == [
        "$.metadata.whatsap: not a field of ConversationHistoryMetadataCommonModel"
    ]
    assert sdk_errors(GetConversationResponseModel, wrong) == [
        "$.transcript[1].time_in_call_secs: expected int, got '3'"
    ]
    assert sdk_errors(GetConversationResponseModel, boolean) == ["$.metadata.cost: expected int, got True"]


def test_asyncapi_frames_are_checked_by_type_and_fields() -> None:
    good: dict[str, Any] = {
        "type": "user_transcript",
        "user_transcription_event": {"user_transcript": "hi", "event_id": 3},
    }
    assert asyncapi_errors(good) == []
    missing = copy.deepcopy(good)
    del missing["user_transcription_event"]["event_id"]
    extra = copy.deepcopy(good)
    extra["user_transcription_event"]["speaker"] = "x"
    reasoning = {
        "type": "agent_reasoning_response_part",
        "reasoning_response_part": {"text": "", "type": "start", "event_id": 1},
    }
    mcp = {
        "type": "mcp_tool_call",
        "mcp_tool_call": {
            "service_id": "s",
            "tool_call_id": "t",
            "tool_name": "n",
            "parameters": {},
            "timestamp": "2026-01-01T00:00:00Z",
            "state": "success",
        },
    }
    assert asyncapi_errors(missing) and asyncapi_errors(extra)
    assert asyncapi_errors(reasoning)  # its event_id is a string
    assert asyncapi_errors(mcp)  # a success carries its result
    assert asyncapi_errors({"type": "simulator_future_event"}) == [
        "'simulator_future_event' is not a server message of the AsyncAPI"
    ]
    assert len(ASYNCAPI_EVENTS) == 27  # 26 ClientEvent types, and error
