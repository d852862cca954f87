"""A conversation as the platform's OpenTelemetry trace (OTLP JSON), for ``format=opentelemetry`` and the OTel webhook.

Pure. The shape follows the docs' "OpenTelemetry traces" page
(elevenlabs.io/docs/eleven-agents … /opentelemetry): one ``resourceSpans``
batch whose resource names the service and the conversation, one scope
``elevenlabs.convai``, a root span ``elevenlabs.conversation`` (attribute
``elevenlabs.source``; status ``ERROR`` when the call failed) and a child span
per transcript entry, ``elevenlabs.recv.user_transcript`` or
``elevenlabs.recv.agent_response``, carrying ``elevenlabs.user.text`` or
``elevenlabs.agent.text``. Times come from the start time and each entry's
``time_in_call_secs``; ids are derived from the conversation id, so the same
conversation always gives the same trace.

"""

from __future__ import annotations

import hashlib
from typing import Any

from ingest.simulator.conversation import SimConversation, Status


__all__ = ["otlp_traces"]

_NANOS = 1_000_000_000


def _text(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def _span_id(conversation_id: str, n: int) -> str:
    return hashlib.sha256(f"{conversation_id}:{n}".encode()).hexdigest()[:16]


def otlp_traces(c: SimConversation, status: Status, *, source: str) -> dict[str, Any]:
    """Return ``c`` with this status as an OTLP JSON ``{"resourceSpans": [...]}`` object.

    Args:
        source: The root span's ``elevenlabs.source`` (``post_call_webhook``,
            ``get_conversation``, …).

    """
    trace_id = hashlib.sha256(c.conversation_id.encode()).hexdigest()[:32]
    root_id = _span_id(c.conversation_id, 0)
    start = c.start_unix * _NANOS
    end = start + c.duration_secs * _NANOS
    spans: list[dict[str, Any]] = [
        {
            "traceId": trace_id,
            "spanId": root_id,
            "name": "elevenlabs.conversation",
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end),
            "attributes": [
                _text("elevenlabs.source", source),
                _text("elevenlabs.conversation_id", c.conversation_id),
                _text("elevenlabs.agent_id", c.agent_id),
            ],
            "status": {"code": 2 if status == "failed" else 1},
        }
    ]
    for n, entry in enumerate(c.served_transcript(status), start=1):
        at = start + int(entry["time_in_call_secs"]) * _NANOS
        user = entry["role"] == "user"
        span: dict[str, Any] = {
            "traceId": trace_id,
            "spanId": _span_id(c.conversation_id, n),
            "parentSpanId": root_id,
            "name": "elevenlabs.recv.user_transcript" if user else "elevenlabs.recv.agent_response",
            "startTimeUnixNano": str(at),
            "endTimeUnixNano": str(at + _NANOS),
            "attributes": [],
            "status": {"code": 1},
        }
        if entry.get("message") is not None:
            span["attributes"].append(
                _text("elevenlabs.user.text" if user else "elevenlabs.agent.text", entry["message"])
            )
        spans.append(span)
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        _text("service.name", "elevenlabs-convai"),
                        _text("elevenlabs.conversation_id", c.conversation_id),
                    ]
                },
                "scopeSpans": [{"scope": {"name": "elevenlabs.convai", "version": "1.0.0"}, "spans": spans}],
            }
        ]
    }
