"""Synthetic conversations as values: channels, entry variants, and bodies the SDK's models accept."""

from __future__ import annotations

import json
from typing import Any

import pytest
from elevenlabs.types import ConversationSummaryResponseModel, GetConversationResponseModel

from ingest.simulator.conversation import (
    CHANNELS,
    WEB_SOURCES,
    Channel,
    SimConversation,
    Status,
    conversation_body,
    conversation_summary,
    encode_body,
    synthesize,
)
from tests.ingest.simulator.reference import sdk_errors


START = 1_700_000_000


def make(key: str = "k", status: Status = "done", **options: Any) -> SimConversation:
    return synthesize(seed=1, key=key, agent_id="agent_demo", start_unix=START, status=status, **options)


def test_same_arguments_same_conversation_and_options_keep_the_turns() -> None:
    plain = make()
    assert make() == plain
    assert make(key="other").transcript != plain.transcript
    channelled = make(channel="whatsapp", analysis_results=True, multi_party=True)
    # Options draw from their own stream: the turns and ids of a seed do not move.
    assert [e["message"] for e in channelled.transcript] == [e["message"] for e in plain.transcript]
    assert (channelled.conversation_id, channelled.user_id) == (plain.conversation_id, plain.user_id)


def test_default_entries_carry_medium_event_id_and_the_agent() -> None:
    conversation = make()
    users = conversation.user_entries()
    assert users and all(e["source_medium"] in ("audio", "text") for e in users)
    assert [e["source_event_id"] for e in users] == list(range(2, 2 + len(users)))
    agents = [e for e in conversation.transcript if e["role"] == "agent"]
    assert all(e["agent_metadata"]["agent_id"] == "agent_demo" for e in agents)
    assert conversation.source in WEB_SOURCES and conversation.channel is None
    assert conversation.channel_metadata == {}


@pytest.mark.parametrize(
    ("channel", "source", "key", "identity"),
    [
        ("whatsapp", "whatsapp", "whatsapp", "whatsapp_user_id"),
        ("twilio", "twilio", "phone_call", "external_number"),
        ("sip_trunking", "sip_trunk", "phone_call", "external_number"),
        ("sms", "twilio_sms", "sms", "sms_user_phone_number"),
    ],
)
def test_channels_add_their_metadata_and_identity(
    channel: Channel, source: str, key: str, identity: str
) -> None:
    conversation = make(channel=channel)
    body = conversation_body(conversation, "done")
    assert body["metadata"]["conversation_initiation_source"] == source
    assert body["conversation_initiation_client_data"]["source_info"]["source"] == source
    assert body["metadata"][key][identity] == conversation.channel_user
    assert conversation.channel_user and conversation.channel_user != conversation.user_id
    if key == "phone_call":
        assert body["metadata"]["phone_call"]["type"] == channel
        variables = body["conversation_initiation_client_data"]["dynamic_variables"]
        assert variables["system__caller_id"] == conversation.channel_user
    if channel == "whatsapp":
        assert conversation.channel_user.isdigit()  # WhatsApp ids have no "+"
    else:
        assert conversation.channel_user.startswith("+")
    assert sdk_errors(GetConversationResponseModel, body) == []


def test_widget_and_sdk_channels_name_their_source() -> None:
    assert make(channel="widget").source == "widget"
    assert make(channel="sdk").source == "python_sdk"
    assert make(channel="widget").channel_metadata == {}


def test_minimal_entries_have_only_the_docs_example_keys() -> None:
    conversation = make(minimal_entries=True)
    # The docs' post-call webhook example, entry by entry.
    keys = set(
        "conversation_turn_metrics feedback message role time_in_call_secs tool_calls tool_results".split()
    )
    assert all(set(entry) == keys for entry in conversation.transcript)
    assert not any("source_medium" in e or "source_event_id" in e for e in conversation.transcript)
    assert sdk_errors(GetConversationResponseModel, conversation_body(conversation, "done")) == []


def test_media_entries_dtmf_image_and_interruptions() -> None:
    conversation = make(media_entries=True)
    tail = conversation.transcript[-6:]
    assert [(e["role"], e["source_medium"]) for e in tail] == [
        ("user", "dtmf"),
        ("agent", "audio"),
        ("user", "image"),
        ("agent", "audio"),
        ("user", "audio"),
        ("agent", "audio"),
    ]
    dtmf, _, image, cut, said, _ = tail
    assert dtmf["message"] == "48213#"
    assert image["message"] is None and image["file_input"] == image["file_inputs"][0]
    assert image["file_input"]["mime_type"] == "image/jpeg"
    for entry in (cut, said):
        assert entry["interrupted"] is True
        assert (
            entry["original_message"].startswith(entry["message"])
            and entry["original_message"] != entry["message"]
        )
    ids = [e["source_event_id"] for e in conversation.transcript]
    assert ids == sorted(ids)  # the added entries continue the turn counter
    assert sdk_errors(GetConversationResponseModel, conversation_body(conversation, "done")) == []


def test_multi_party_entries_name_their_speaker() -> None:
    conversation = make(multi_party=True, channel="twilio")
    speakers = [e["user_identifier"] for e in conversation.user_entries()]
    assert speakers[0] == conversation.channel_user
    assert len(set(speakers)) == (2 if len(speakers) > 1 else 1)
    assert all("user_identifier" not in e for e in conversation.transcript if e["role"] == "agent")


def test_failed_calls_keep_their_turns_only_when_asked() -> None:
    short = make(status="failed")
    kept = make(status="failed", keeps_turns_when_failed=True)
    assert short.served_transcript("failed") == short.transcript[:1]
    served = kept.served_transcript("failed")
    assert served[-1]["role"] == "user" and [e for e in served if e["role"] == "user"] == kept.user_entries()
    body = conversation_body(kept, "failed")
    assert body["metadata"]["error"] == {"code": 1011, "reason": kept.failure_reason}
    assert body["analysis"]["call_successful"] == "failure"
    assert sdk_errors(GetConversationResponseModel, body) == []


def test_analysis_results_are_what_a_conversations_table_reads() -> None:
    conversation = make(analysis_results=True)
    analysis = conversation_body(conversation, "done")["analysis"]
    criterion = analysis["evaluation_criteria_results"]["issue_resolved"]
    assert criterion["criteria_id"] == "issue_resolved" and criterion["result"] in ("success", "failure")
    assert analysis["call_successful"] == criterion["result"]
    collected = analysis["data_collection_results"]["order_number"]
    assert collected["data_collection_id"] == "order_number" and "value" in collected
    plain = conversation_body(make(), "done")["analysis"]
    assert (plain["evaluation_criteria_results"], plain["data_collection_results"]) == ({}, {})


@pytest.mark.parametrize("status", ["initiated", "in-progress", "processing", "done", "failed"])
@pytest.mark.parametrize("channel", [None, *CHANNELS])
def test_every_status_and_channel_gives_valid_bodies(status: Status, channel: Channel | None) -> None:
    conversation = make(
        status=status, channel=channel, media_entries=True, multi_party=True, analysis_results=True
    )
    conversation.played = 3
    body = conversation_body(conversation, status)
    assert sdk_errors(GetConversationResponseModel, body) == []
    summary = conversation_summary(conversation, status, agent_name="Support")
    assert sdk_errors(ConversationSummaryResponseModel, summary) == []
    live = status in ("initiated", "in-progress")
    assert len(body["transcript"]) == (3 if live else len(conversation.served_transcript(status)))
    assert (body["analysis"] is None) == (status not in ("done", "failed"))


def test_encodings() -> None:
    payload = {"text": "Olá 😀", "n": 1}
    assert encode_body(payload) == '{"text":"Olá 😀","n":1}'.encode()
    escaped = encode_body(payload, "escaped")
    assert escaped.isascii() and b"\\ud83d\\ude00" in escaped
    pretty = encode_body(payload, "pretty")
    assert b"\n" in pretty and json.loads(pretty) == json.loads(escaped) == payload
