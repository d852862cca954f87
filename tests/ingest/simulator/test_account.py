"""The simulated account as values: deterministic, paged, moving conversations along, options opt-in."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from elevenlabs.types import GetConversationResponseModel, GetConversationsPageResponseModel

from ingest.simulator.account import Account, AccountSpec, BadQuery
from tests.ingest.simulator.reference import sdk_errors


def every_body(account: Account) -> list[dict[str, Any]]:
    return [orjson.loads(account.body(c.conversation_id)) for c in account.conversations]


def test_pages_are_stable_and_filtered() -> None:
    spec = AccountSpec(conversations=23, other_agent_conversations=5, processing=2, in_progress=1, seed=3)
    account = Account(spec)
    assert Account(spec).conversations[0].conversation_id == account.conversations[0].conversation_id
    ids: list[str] = []
    cursor = None
    first = True
    while True:
        page = orjson.loads(account.list_page(agent_id="agent_demo", cursor=cursor, page_size=5))
        assert sdk_errors(GetConversationsPageResponseModel, page) == []
        ids += [c["conversation_id"] for c in page["conversations"]]
        if first:
            # A conversation added mid-listing never shifts the pages that follow.
            account.add()
            first = False
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len(ids) == len(set(ids)) == 23
    starts = [account[i].start_unix for i in ids]
    assert starts == sorted(starts, reverse=True)
    statuses = [account[i].status for i in ids]
    assert statuses[:3] == ["in-progress", "processing", "processing"]
    assert {"done", "failed"} <= set(statuses)
    middle = account[ids[10]].start_unix
    window = orjson.loads(account.list_page(agent_id="agent_demo", after_unix=middle, page_size=100))
    assert len(window["conversations"]) == 11 + 1  # and the one added
    every = orjson.loads(account.list_page(page_size=100))
    assert Counter(c["agent_id"] for c in every["conversations"]) == {"agent_demo": 24, "agent_other": 5}
    with pytest.raises(BadQuery):
        account.list_page(page_size=101)
    with pytest.raises(BadQuery):
        account.list_page(cursor="@@@")


def test_processing_becomes_done_by_polls_or_by_time() -> None:
    clock = [0.0]
    account = Account(AccountSpec(conversations=4, processing=2, done_after_polls=2), clock=lambda: clock[0])
    first = account.of_agent("agent_demo", "processing")[0].conversation_id
    statuses = [orjson.loads(account.get(first) or b"")["status"] for _ in range(3)]
    assert statuses == ["processing", "processing", "done"]
    timed = Account(
        AccountSpec(conversations=4, processing=1, done_after_polls=None, done_after_seconds=5),
        clock=lambda: clock[0],
    )
    conversation_id = timed.of_agent("agent_demo", "processing")[0].conversation_id
    assert orjson.loads(timed.get(conversation_id) or b"")["status"] == "processing"
    clock[0] += 5
    assert orjson.loads(timed.get(conversation_id) or b"")["status"] == "done"
    assert account.get("conv_nope") is None


def test_live_conversations_show_what_was_played_then_process() -> None:
    account = Account(AccountSpec(conversations=3, in_progress=1, processing=0))
    (live,) = account.of_agent("agent_demo", "in-progress")
    assert account.is_live(live.conversation_id)
    entries = account.start_live(live.conversation_id)
    assert entries == live.transcript and account.start_live(live.conversation_id) == []
    account.played(live.conversation_id)
    body = orjson.loads(account.body(live.conversation_id))
    assert body["transcript"] == live.transcript[:1] and body["metadata"]["call_duration_secs"] == 0
    account.finish_live(live.conversation_id)
    assert not account.is_live(live.conversation_id) and live.status == "processing"


def test_bodies_keep_their_encoding() -> None:
    account = Account(AccountSpec(conversations=10, escaped_every=3, pretty_every=4, processing=0))
    raw = [account.body(c.conversation_id) for c in account.conversations]
    assert any(b.isascii() and b"\\u" in b for b in raw)
    assert any(b"\n" in b for b in raw)
    assert any(not b.isascii() and b"\n" not in b for b in raw)


def test_the_default_account_is_valid_and_web_only() -> None:
    account = Account(AccountSpec(conversations=30, other_agent_conversations=4, in_progress=2))
    for body in every_body(account):
        assert sdk_errors(GetConversationResponseModel, body) == []
        assert set(body["metadata"]) & {"whatsapp", "phone_call", "sms"} <= {"phone_call"}
        assert body["metadata"]["phone_call"] is None
        assert all({"source_medium", "source_event_id"} <= set(e) for e in body["transcript"])
        assert not any("user_identifier" in e for e in body["transcript"])
    failed = account.of_agent("agent_demo", "failed")
    assert failed and all(
        len(orjson.loads(account.body(c.conversation_id))["transcript"]) == 1 for c in failed
    )


def test_options_shape_the_agents_conversations() -> None:
    spec = AccountSpec(
        conversations=12,
        processing=0,
        other_agent_conversations=3,
        failed_every=4,
        channels=("whatsapp", "twilio", "sip_trunking", "sms", "widget", "sdk"),
        multi_party_every=3,
        media_every=4,
        minimal_every=5,
        failed_with_turns=True,
        analysis_results=True,
    )
    account = Account(spec)
    ours = list(reversed(account.of_agent("agent_demo")))  # oldest first: index order
    assert [c.channel for c in ours] == list(spec.channels) * 2
    assert all(c.channel is None for c in account.of_agent("agent_other"))
    media = [i for i, c in enumerate(ours) if any(e.get("source_medium") == "image" for e in c.transcript)]
    assert media == [3, 7, 11]
    minimal = [i for i, c in enumerate(ours) if "source_medium" not in c.transcript[0]]
    assert minimal == [4, 9]
    speakers = [i for i, c in enumerate(ours) if any("user_identifier" in e for e in c.transcript)]
    assert speakers == [2, 5, 8, 11]
    for c in account.of_agent("agent_demo", "failed"):
        assert any(e["role"] == "user" for e in orjson.loads(account.body(c.conversation_id))["transcript"])
    for body in every_body(account):
        assert sdk_errors(GetConversationResponseModel, body) == []
    for body in [orjson.loads(account.body(c.conversation_id, otel=True)) for c in ours]:
        assert body["otlp_traces"]["resourceSpans"][0]["scopeSpans"][0]["spans"]
        assert sdk_errors(GetConversationResponseModel, body) == []


@pytest.mark.parametrize(
    "options",
    [
        {"conversations": -1},
        {"conversations": 2},  # 3 processing by default
        {"user_turns": (0, 2)},
        {"channels": ("phone",)},
        {"media_every": -1},
    ],
)
def test_bad_specs_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AccountSpec(**options)
