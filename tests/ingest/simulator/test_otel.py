"""A conversation as an OTLP JSON trace: one root span, one child per served entry, ids from the conversation."""

from __future__ import annotations

from typing import Any

from ingest.simulator.conversation import synthesize
from ingest.simulator.otel import otlp_traces


def attributes(span: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"]["stringValue"] for a in span["attributes"]}


def test_trace_shape() -> None:
    conversation = synthesize(seed=0, key="t", agent_id="agent_demo", start_unix=1_700_000_000, status="done")
    traces = otlp_traces(conversation, "done", source="post_call_webhook")
    [batch] = traces["resourceSpans"]
    assert attributes(batch["resource"]) == {
        "service.name": "elevenlabs-convai",
        "elevenlabs.conversation_id": conversation.conversation_id,
    }
    [scope] = batch["scopeSpans"]
    assert scope["scope"] == {"name": "elevenlabs.convai", "version": "1.0.0"}
    root, *children = scope["spans"]
    assert root["name"] == "elevenlabs.conversation" and "parentSpanId" not in root
    assert attributes(root)["elevenlabs.source"] == "post_call_webhook"
    assert root["status"] == {"code": 1}
    assert len(children) == len(conversation.transcript)
    assert {span["traceId"] for span in scope["spans"]} == {root["traceId"]}
    assert len(root["traceId"]) == 32 and len(root["spanId"]) == 16
    assert len({span["spanId"] for span in scope["spans"]}) == len(scope["spans"])
    for span, entry in zip(children, conversation.transcript, strict=True):
        assert span["parentSpanId"] == root["spanId"]
        user = entry["role"] == "user"
        assert span["name"] == (
            "elevenlabs.recv.user_transcript" if user else "elevenlabs.recv.agent_response"
        )
        assert attributes(span) == {
            ("elevenlabs.user.text" if user else "elevenlabs.agent.text"): entry["message"]
        }
        start = 1_700_000_000 + entry["time_in_call_secs"]
        assert span["startTimeUnixNano"] == str(start * 10**9)
    assert otlp_traces(conversation, "done", source="post_call_webhook") == traces


def test_a_failed_call_is_an_error_and_an_image_entry_has_no_text() -> None:
    conversation = synthesize(
        seed=0,
        key="f",
        agent_id="agent_demo",
        start_unix=1_700_000_000,
        status="failed",
        media_entries=True,
        keeps_turns_when_failed=True,
    )
    root, *children = otlp_traces(conversation, "failed", source="get_conversation")["resourceSpans"][0][
        "scopeSpans"
    ][0]["spans"]
    assert root["status"] == {"code": 2}
    assert len(children) == len(conversation.served_transcript("failed"))
    image = conversation.transcript.index(
        next(e for e in conversation.transcript if e["source_medium"] == "image")
    )
    assert children[image]["attributes"] == []
