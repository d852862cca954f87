"""The agent socket's server-to-client events, as the platform shapes them (pure builders).

Each function returns frames as dicts (or, where speed matters, JSON text) shaped
per the platform's AsyncAPI definition of the agent socket (repository
``elevenlabs/packages``, ``packages/types/schemas/agent.asyncapi.yaml``; the
notes in ``docs/elevenlabs-protocol.md`` §2). Where the definition leaves a
payload open (``asr_initiation_metadata_event`` is "an object"), the simulator
sends the least it allows. Nothing here does I/O or reads a clock: callers pass
the ids and times.

"""

from __future__ import annotations

import base64
from typing import Any

import orjson


__all__ = [
    "AUDIO_FRAMES_PER_REPLY",
    "agent_reply",
    "error",
    "every_event",
    "extra_events",
    "flood_frame",
    "huge_frame",
    "metadata",
    "monitor_frames",
    "ping",
    "user_transcripts",
]

# 200 ms of 16 kHz 16-bit mono; the bytes are junk, only the shape matters.
_AUDIO_B64 = base64.b64encode(bytes(range(256)) * 25).decode("ascii")

#: ``audio`` frames per agent reply in audio mode.
AUDIO_FRAMES_PER_REPLY = 3


def metadata(conversation_id: str) -> dict[str, Any]:
    """``conversation_initiation_metadata``: always the first frame, the only one naming the conversation."""
    return {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": conversation_id,
            "agent_output_audio_format": "pcm_16000",
            "user_input_audio_format": "pcm_16000",
        },
    }


def ping(event_id: int, ping_ms: int | None) -> dict[str, Any]:
    """``ping``; ``ping_ms`` is the last round trip measured, ``None`` before the first pong."""
    return {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}}


def error(code: int, error_type: str, message: str) -> dict[str, Any]:
    """``error``: sent right before the server closes with ``code``."""
    return {
        "type": "error",
        "error_event": {
            "code": code,
            "error_type": error_type,
            "message": message,
            "reason": None,
            "debug_message": None,
            "details": None,
        },
    }


def user_transcripts(text: str, event_id: int) -> list[dict[str, Any]]:
    """A spoken user turn: a ``tentative_user_transcript`` (the first half) then the ``user_transcript``."""
    return [
        {
            "type": "tentative_user_transcript",
            "tentative_user_transcription_event": {
                "user_transcript": text[: len(text) // 2],
                "event_id": event_id,
            },
        },
        {
            "type": "user_transcript",
            "user_transcription_event": {"user_transcript": text, "event_id": event_id},
        },
    ]


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word + " " for word in words[:-1]] + words[-1:]


def agent_reply(text: str, event_id: int, *, text_only: bool) -> list[dict[str, Any]]:
    """An agent reply: chat parts then ``agent_response`` in text mode; ``agent_response`` then ``audio`` otherwise."""
    frames: list[dict[str, Any]] = []
    if text_only:
        parts = [("start", ""), *(("delta", word) for word in _words(text)), ("stop", "")]
        frames += [
            {
                "type": "agent_chat_response_part",
                "text_response_part": {"text": part, "type": kind, "event_id": event_id},
            }
            for kind, part in parts
        ]
    frames.append(
        {"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}
    )
    if not text_only:
        chunk = max(1, -(-len(text) // AUDIO_FRAMES_PER_REPLY))
        for start in range(0, AUDIO_FRAMES_PER_REPLY * chunk, chunk):
            chars = list(text[start : start + chunk])
            frames.append(
                {
                    "type": "audio",
                    "audio_event": {
                        "audio_base_64": _AUDIO_B64,
                        "event_id": event_id,
                        "alignment": {
                            "chars": chars,
                            "char_start_times_ms": [60 * (start + i) for i in range(len(chars))],
                            "char_durations_ms": [60] * len(chars),
                        },
                    },
                }
            )
    return frames


def extra_events(event_id: int, first_message: str | None) -> list[dict[str, Any]]:
    """The events a default conversation sends once after its first message, and one of an unknown type."""
    original = first_message or "Let me tell you about our plans."
    return [
        {"type": "vad_score", "vad_score_event": {"vad_score": 0.42}},
        {"type": "interruption", "interruption_event": {"event_id": event_id}},
        {
            "type": "agent_response_correction",
            "agent_response_correction_event": {
                "original_agent_response": original,
                "corrected_agent_response": original[: max(1, len(original) // 2)],
                "event_id": event_id,
            },
        },
        {
            "type": "context_usage",
            "context_usage_event": {
                "event_id": event_id,
                "model": "simulated",
                "context_tokens": 1234,
                "context_limit_tokens": 128000,
            },
        },
        {
            # Not "end_call": the JS client tears the session down on that one.
            "type": "agent_tool_response",
            "agent_tool_response": {
                "tool_name": "lookup_invoice",
                "tool_call_id": "tool_1",
                "tool_type": "webhook",
                "is_error": False,
                "is_called": True,
                "event_id": event_id,
            },
        },
        {
            "type": "mcp_connection_status",
            "mcp_connection_status": {
                "integrations": [
                    {
                        "integration_id": "i1",
                        "integration_type": "mcp_server",
                        "is_connected": True,
                        "tool_count": 3,
                    }
                ]
            },
        },
        {"type": "simulator_future_event", "simulator_future_event": {"note": "a type from the future"}},
    ]


def every_event(event_id: int, *, timestamp: str) -> list[dict[str, Any]]:
    """One of each server-to-client type the AsyncAPI lists besides the conversation's usual ones.

    In the order an agent would produce them around one tool-using turn:
    ``asr_initiation_metadata``, reasoning parts (whose ``event_id`` is a
    string, per the definition), a webhook tool's request and full response,
    a ``client_tool_call`` (the simulator does not wait for its result), an MCP
    tool call loading then succeeding, ``rich_content``, ``guardrail_triggered``,
    the internal turn probability and tentative response, the external agent
    connecting, typing, and disconnecting.

    Args:
        event_id: The turn the events belong to.
        timestamp: ISO 8601 time of the MCP tool call.

    """
    reasoning = [
        ("start", ""),
        ("delta", "The user wants their invoice; "),
        ("delta", "look it up."),
        ("stop", ""),
    ]
    mcp_call: dict[str, Any] = {
        "service_id": "mcp_billing",
        "tool_call_id": "mcp_1",
        "tool_name": "search_invoices",
        "tool_description": "Search the user's invoices",
        "parameters": {"query": "last"},
        "timestamp": timestamp,
    }
    tool = {
        "tool_name": "lookup_invoice",
        "tool_call_id": "tool_2",
        "tool_type": "webhook",
        "event_id": event_id,
    }
    return [
        {"type": "asr_initiation_metadata", "asr_initiation_metadata_event": {}},
        *(
            {
                "type": "agent_reasoning_response_part",
                "reasoning_response_part": {"text": text, "type": kind, "event_id": str(event_id)},
            }
            for kind, text in reasoning
        ),
        {"type": "agent_tool_request", "agent_tool_request": tool},
        {
            "type": "agent_tool_response_full_payload",
            "agent_tool_response_full_payload": {
                **tool,
                "is_error": False,
                "is_blocked": False,
                "is_called": True,
                "full_tool_result": '{"invoice":"INV-0042","total":"12.50 EUR"}',
                "truncated": False,
            },
        },
        {
            "type": "client_tool_call",
            "client_tool_call": {
                "tool_name": "open_page",
                "tool_call_id": "client_1",
                "parameters": {"url": "/billing"},
                "event_id": event_id,
            },
        },
        {"type": "mcp_tool_call", "mcp_tool_call": {**mcp_call, "state": "loading"}},
        {
            "type": "mcp_tool_call",
            "mcp_tool_call": {
                **mcp_call,
                "state": "success",
                "result": [{"type": "text", "text": "INV-0042"}],
            },
        },
        {
            "type": "rich_content",
            "rich_content": {
                "rich_content_id": "rc_1",
                "component": "item_card",
                "props": {"title": "Invoice INV-0042", "subtitle": "12.50 EUR"},
                "event_id": event_id,
            },
        },
        {"type": "guardrail_triggered"},
        {"type": "internal_turn_probability", "turn_probability_internal_event": {"turn_probability": 0.87}},
        {
            "type": "internal_tentative_agent_response",
            "tentative_agent_response_internal_event": {"tentative_agent_response": "Let me check that"},
        },
        {"type": "external_agent_connected", "external_agent_connected_event": {}},
        {"type": "agent_typing", "agent_typing_event": {"is_typing": True, "duration_ms": 1500}},
        {"type": "agent_typing", "agent_typing_event": {"is_typing": False, "duration_ms": None}},
        {"type": "external_agent_disconnected", "external_agent_disconnected_event": {}},
    ]


def flood_frame(i: int) -> str:
    """The ``flood`` fault's i-th frame, as text (built without a serialiser: floods are benchmarks)."""
    return f'{{"type":"user_transcript","user_transcription_event":{{"user_transcript":"flood {i}","event_id":{i}}}}}'


def huge_frame(event_id: int, size: int) -> str:
    """A ``user_transcript`` whose text is ``size`` characters (``"huge "`` then ``x``\\ s)."""
    text = "huge " + "x" * (size - 5)
    return (
        '{"type":"user_transcript","user_transcription_event":{"user_transcript":"'
        + text
        + f'","event_id":{event_id}}}}}'
    )


def monitor_frames(entry: dict[str, Any], position: int) -> list[str]:
    """The agent-socket events a monitor sees for one transcript entry, as text.

    A user entry is one ``user_transcript`` (an image entry, whose ``message``
    is null, none); an agent entry is its ``agent_response`` and two ``audio``
    frames. The event id is the entry's ``source_event_id``, or ``position``
    (the entry's place in the transcript) for an entry without one.

    """
    event_id = entry.get("source_event_id") or position
    text = entry.get("message")
    if text is None:
        return []
    if entry["role"] == "user":
        event = {
            "type": "user_transcript",
            "user_transcription_event": {"user_transcript": text, "event_id": event_id},
        }
        return [orjson.dumps(event).decode()]
    reply = {"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}
    audio = {"type": "audio", "audio_event": {"audio_base_64": _AUDIO_B64[:64], "event_id": event_id}}
    return [orjson.dumps(reply).decode(), *[orjson.dumps(audio).decode()] * 2]
